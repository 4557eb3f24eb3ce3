"""Training data for the depth network (:mod:`facexpr.models.depthnet`): face crops paired with
depth and normal maps rendered from their cached MediaPipe landmarks.

Targets come from :func:`facexpr.face.depth.render_depth_normals` applied to the crop's own
478 landmarks (:func:`facexpr.data.landmarks.dataset_landmarks`, measured on the prepared crop),
scaled from the crop's size to the requested ``size`` (x, y and z alike, so the normals keep
their true slant). Rows whose landmarks are missing (MediaPipe found no face on the crop) are
left out; :attr:`DepthTargets.dropped` counts them.

Determinism: like :class:`facexpr.training.data.ExpressionPairs`, an item is keyed by
``(epoch, position)`` and its horizontal flip is drawn from
``numpy.random.default_rng((seed, epoch, position))``, so any number of workers, a resumed run
and an uninterrupted one see the same items. A flip mirrors the image, the depth and the
normal map, and negates the normals' x component (a surface facing right faces left in the
mirror); depth values are unchanged.

Rendering costs ~10 ms per item at 128 px; ``cache=True`` keeps every rendered (unflipped)
target in memory (depth and normals as float16, the resized crop as uint8, ~130 kB per item at
128 px), so only the first epoch pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from facexpr.data.dataset import PreparedDataset
from facexpr.errors import DatasetError
from facexpr.face.depth import render_depth_normals
from facexpr.training.data import resize_rgb, to_tensor_image

__all__ = ["DepthTargets", "flip_targets", "usable_rows"]


def usable_rows(landmarks: NDArray[np.floating], rows: Sequence[int] | NDArray[np.integer[Any]]) -> NDArray[np.int64]:
    """The rows of ``rows`` whose (478, 3) landmarks are all finite, in the same order."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        return rows
    ok = np.isfinite(np.asarray(landmarks)[rows, :468]).all(axis=(1, 2))
    return rows[ok]


def flip_targets(image: Tensor, depth: Tensor, normals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mirror ``(image (3,S,S), depth (1,S,S), normals (3,S,S))`` left-right (also batched, any
    leading dims): the maps are flipped along the last axis and the normals' x is negated."""
    normals = normals.flip(-1).clone()
    normals[..., 0, :, :] *= -1.0
    return image.flip(-1), depth.flip(-1), normals


class DepthTargets(Dataset):
    """Items ``{image, depth, normals, mask, index}`` of prepared face crops at ``size`` px.

    - ``image``: float32 (3, S, S) in [-1, 1];
    - ``depth``: float32 (1, S, S) in [0, 1], 0 = background (:mod:`facexpr.face.depth`);
    - ``normals``: float32 (3, S, S), unit on the face (x right, y up, z toward the viewer),
      zero on the background;
    - ``mask``: float32 (1, S, S), 1 where the rendered face is (``depth > 0``);
    - ``index``: the row of ``prepared`` the item came from.

    Args:
        prepared: the dataset (merged ones included).
        indices: its rows to use (e.g. the training part of ``prepared.split``); rows without
            landmarks are dropped.
        landmarks: (len(prepared), 478, 3) crop-pixel landmarks of every row of ``prepared``
            (:func:`facexpr.data.landmarks.dataset_landmarks`).
        size: side of the returned maps (the crop is resized to it).
        seed: keys the flips together with ``(epoch, position)``.
        flip: draw a horizontal flip with probability 1/2 per item.
        cache: keep rendered targets in memory (module docstring).
    """

    def __init__(
        self,
        prepared: PreparedDataset,
        indices: Sequence[int] | NDArray[np.integer[Any]],
        landmarks: NDArray[np.floating],
        size: int,
        seed: int = 0,
        flip: bool = True,
        cache: bool = False,
    ) -> None:
        lm = np.asarray(landmarks)
        if lm.ndim != 3 or lm.shape[0] != len(prepared) or lm.shape[1] < 468 or lm.shape[2] != 3:
            raise DatasetError(
                f"landmarks of shape {lm.shape} do not match the dataset's {len(prepared)} rows of (478, 3); "
                "compute them with facexpr.data.landmarks.dataset_landmarks(dataset)"
            )
        if int(size) != size or size < 2:
            raise ValueError(f"size must be an integer >= 2, got {size!r}")
        requested = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.prepared = prepared
        self.landmarks = lm
        self.indices = usable_rows(lm, requested)
        self.dropped = int(len(requested) - len(self.indices))
        self.size = int(size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.cache = bool(cache)
        self._cache: dict[int, tuple[NDArray[np.uint8], NDArray[np.float16], NDArray[np.float16]]] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def render(self, row: int) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.float32]]:
        """Unflipped ``(rgb uint8 (S,S,3), depth (S,S), normals (S,S,3))`` of dataset row ``row``."""
        hit = self._cache.get(row)
        if hit is not None:
            return hit[0], hit[1].astype(np.float32), hit[2].astype(np.float32)
        rgb = resize_rgb(self.prepared.image(row), self.size)
        scale = self.size / float(self.prepared.size)
        depth, normals = render_depth_normals(self.landmarks[row].astype(np.float64) * scale, self.size)
        if self.cache:
            self._cache[row] = (rgb, depth.astype(np.float16), normals.astype(np.float16))
        return rgb, depth, normals

    def item(self, pos: int, flipped: bool) -> dict[str, Tensor]:
        """Item at ``pos`` with an explicit flip (the keyed ``__getitem__`` draws it)."""
        i = int(self.indices[pos])
        rgb, depth, normals = self.render(i)
        image = to_tensor_image(rgb)
        d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]
        n = torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32)).permute(2, 0, 1).contiguous()
        if flipped:
            image, d, n = flip_targets(image, d, n)
            image, d = image.contiguous(), d.contiguous()
        return {"image": image, "depth": d, "normals": n, "mask": (d > 0).float(), "index": torch.tensor(i)}

    def flipped(self, key: tuple[int, int] | int) -> bool:
        """Whether the item of ``key`` = ``(epoch, position)`` (or a position: epoch 0) is flipped."""
        epoch, pos = (0, int(key)) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        return self.flip and bool(np.random.default_rng((self.seed, epoch, pos)).random() < 0.5)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Tensor]:
        epoch, pos = (0, int(key)) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        if not 0 <= pos < len(self):
            raise IndexError(f"position {pos} out of range for {len(self)} items")
        return self.item(pos, self.flipped((epoch, pos)))
