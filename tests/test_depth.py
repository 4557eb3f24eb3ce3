"""Depth / normal maps from the face mesh: synthetic checks and one real face."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facexpr.errors import ConfigError
from facexpr.face.depth import DEPTH_FLOOR, mesh_triangles, render_depth_normals

NOSE_TIP, LEFT_CHEEK, RIGHT_CHEEK = 1, 50, 280


def test_triangles_are_deterministic_and_valid() -> None:
    tri = mesh_triangles()
    assert tri.ndim == 2 and tri.shape[1] == 3 and len(tri) > 852
    assert tri.min() >= 0 and tri.max() < 468 + 3  # 468 mesh points + 3 hole centres
    assert np.array_equal(tri, mesh_triangles())


def test_errors() -> None:
    with pytest.raises(ConfigError, match="478, 3"):
        render_depth_normals(np.zeros((68, 2)), 64)
    with pytest.raises(ConfigError, match="size"):
        render_depth_normals(np.zeros((478, 3)), 1)


@pytest.fixture(scope="module")
def real_crop_landmarks(misc: Path) -> np.ndarray:
    from facexpr.face.align import alignment_matrix, transform_points
    from facexpr.face.detect import FaceAnalyzer
    from facexpr.imageio import load_image

    with FaceAnalyzer(max_faces=1) as fa:
        face = fa.analyze(load_image(misc / "0-f15-hao-ph.jpg").rgb)[0]
    return transform_points(face.landmarks, alignment_matrix(face.landmarks, 128))


@pytest.mark.parametrize("size", [64, 128])
def test_real_face_maps(real_crop_landmarks: np.ndarray, size: int) -> None:
    lm = real_crop_landmarks * (size / 128)
    depth, normals = render_depth_normals(lm, size)
    assert depth.shape == (size, size) and depth.dtype == np.float32
    assert normals.shape == (size, size, 3) and normals.dtype == np.float32
    face = depth > 0
    assert 0.2 < face.mean() < 0.9
    assert depth.max() == pytest.approx(1.0) and depth[face].min() >= DEPTH_FLOOR - 1e-6
    assert depth[0, 0] == 0 and not normals[~face].any()
    assert np.allclose(np.linalg.norm(normals[face], axis=-1), 1.0, atol=1e-4)

    def at(i: int) -> float:
        x, y = np.clip(np.round(lm[i, :2] - 0.5).astype(int), 0, size - 1)
        return float(depth[y, x])

    assert at(NOSE_TIP) > at(LEFT_CHEEK) and at(NOSE_TIP) > at(RIGHT_CHEEK)
    # Frontal face: normals face the viewer on average; the nose tip is (nearly) the nearest.
    assert normals[face][:, 2].mean() > 0.6
    assert at(NOSE_TIP) > 0.9
    # The eyes are closed by the hole-filling fans: no background inside the face.
    x, y = np.round(lm[468, :2]).astype(int)
    assert depth[y, x] > 0


def test_scales_with_size(real_crop_landmarks: np.ndarray) -> None:
    small, _ = render_depth_normals(real_crop_landmarks * 0.5, 64)
    big, _ = render_depth_normals(real_crop_landmarks, 128)
    down = big.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.abs(down - small)[(small > 0) & (down > 0.2)].mean() < 0.05
