"""dlib identity embeddings: API checks and verification on real LFW identities."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from facexpr.errors import ConfigError
from facexpr.face.identity import (
    SAME_PERSON_THRESHOLD,
    IdentityEncoder,
    identity_distance,
    model_dir,
)


def test_distance() -> None:
    a, b = np.zeros(128), np.full(128, 0.1)
    assert identity_distance(a, a) == 0.0
    assert identity_distance(a, b) == pytest.approx(np.sqrt(128) * 0.1)
    assert identity_distance(np.zeros((3, 128)), b).shape == (3,)
    with pytest.raises(ConfigError, match="128"):
        identity_distance(np.zeros(64), np.zeros(64))
    assert SAME_PERSON_THRESHOLD == 0.6


def test_models_are_found_without_importing_the_package() -> None:
    folder = model_dir()
    assert (folder / "dlib_face_recognition_resnet_model_v1.dat").is_file()


def test_bad_inputs() -> None:
    enc = IdentityEncoder()
    with pytest.raises(ConfigError, match="uint8 HxWx3"):
        enc.embed(np.zeros((10, 10), np.uint8), (0, 0, 5, 5))
    with pytest.raises(ConfigError, match="x0 < x1"):
        enc.embed(np.zeros((10, 10, 3), np.uint8), (5, 5, 2, 2))
    with pytest.raises(ConfigError, match="outside"):
        enc.embed(np.zeros((10, 10, 3), np.uint8), (20, 20, 30, 30))
    with pytest.raises(ConfigError, match="num_jitters"):
        IdentityEncoder(num_jitters=0)


def test_lfw_verification(shared_data: Path) -> None:
    from facexpr.face.detect import FaceAnalyzer
    from facexpr.imageio import load_image

    lfw = shared_data / "lfw"
    files: dict[str, list[str]] = {}
    with open(lfw / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            files.setdefault(row["identity"], []).append(row["file"])
    multi = sorted(i for i, f in files.items() if len(f) >= 2)
    rng = np.random.default_rng(0)
    people = rng.choice(multi, size=10, replace=False)

    emb: dict[str, list[np.ndarray]] = {}
    with FaceAnalyzer(max_faces=1) as fa, IdentityEncoder() as enc:
        for person in people:
            for f in sorted(files[person])[:2]:
                rgb = load_image(lfw / f).rgb
                faces = fa.analyze(rgb)
                assert faces, f"no face in {f}"
                emb.setdefault(person, []).append(enc.embed(rgb, faces[0].box))
        # Landmarks work as well as a box and give nearly the same descriptor.
        d_lm = identity_distance(enc.embed(rgb, faces[0].landmarks), emb[people[-1]][-1])
        assert d_lm < 0.3
    vecs = np.stack([v for p in people for v in emb[p]])
    assert vecs.shape == (20, 128) and vecs.dtype == np.float32

    same = np.array([identity_distance(*emb[p]) for p in people])
    diff = np.array([identity_distance(emb[p][0], emb[q][1])
                     for i, p in enumerate(people) for q in people[i + 1:]])
    assert same.mean() < diff.mean() - 0.2
    correct = np.concatenate([same < SAME_PERSON_THRESHOLD, diff >= SAME_PERSON_THRESHOLD])
    assert correct.mean() >= 0.85, f"verification accuracy {correct.mean():.0%}"
