"""AU estimation from blendshapes: shapes and ranges (synthetic) and behaviour on real faces."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from facexpr.errors import ConfigError
from facexpr.expression import AU_NAMES
from facexpr.face.aus import MEDIAPIPE_BLENDSHAPES, aus_from_blendshapes, lip_gap

AU = {n: i for i, n in enumerate(AU_NAMES)}


def test_shapes_dtype_range_vectorised() -> None:
    rng = np.random.default_rng(0)
    bs = rng.random((3, 5, 52), dtype=np.float32)
    out = aus_from_blendshapes(bs)
    assert out.shape == (3, 5, 17) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 5.0
    assert np.allclose(out[1, 2], aus_from_blendshapes(bs[1, 2]))
    assert aus_from_blendshapes(np.zeros(52)).max() == 0.0  # a blank face has no AU


def test_monotone_in_its_blendshape() -> None:
    idx = {n: i for i, n in enumerate(MEDIAPIPE_BLENDSHAPES)}
    bs = np.zeros((11, 52), np.float32)
    bs[:, idx["mouthSmileLeft"]] = bs[:, idx["mouthSmileRight"]] = np.linspace(0, 1, 11)
    au12 = aus_from_blendshapes(bs)[:, AU["AU12"]]
    assert np.all(np.diff(au12) >= 0) and au12[-1] > 4.0


def test_landmarks_measure_lip_gap() -> None:
    lm = np.zeros((2, 478, 3), np.float32)
    lm[:, [33, 133], 0], lm[:, [362, 263], 0] = (-30, -10), (10, 30)  # eyes 40 px apart
    lm[:, 13, 1], lm[:, 14, 1] = 40.0, (40.0, 52.0)  # closed, then a 12 px gap
    assert np.allclose(lip_gap(lm), [0.0, 0.3], atol=1e-6)
    out = aus_from_blendshapes(np.zeros((2, 52)), lm)
    assert out[0, AU["AU25"]] == 0.0 and out[1, AU["AU25"]] > 2.0
    with pytest.raises(ConfigError, match="do not match"):
        aus_from_blendshapes(np.zeros((3, 52)), lm)


def test_bad_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="52 values"):
        aus_from_blendshapes(np.zeros(17))


def test_blendshape_order_matches_detector() -> None:
    detect = pytest.importorskip("facexpr.face.detect")
    assert tuple(detect.BLENDSHAPE_NAMES) == MEDIAPIPE_BLENDSHAPES


# ------------------------------------------------------------------------------ real faces
@pytest.fixture(scope="module")
def analyzer() -> Iterator[object]:
    from facexpr.face.detect import FaceAnalyzer

    with FaceAnalyzer(max_faces=1) as fa:
        yield fa


def _aus(analyzer: object, path: Path) -> np.ndarray:
    from facexpr.imageio import load_image

    faces = analyzer.analyze(load_image(path).rgb)  # type: ignore[attr-defined]
    assert faces, f"no face found in {path}"
    return aus_from_blendshapes(faces[0].blendshapes, faces[0].landmarks)


def test_lfw_happy_has_more_au12_than_neutral(shared_data: Path, analyzer: object) -> None:
    lfw = shared_data / "lfw"
    by_id: dict[str, dict[str, list[str]]] = {}
    with open(lfw / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["expression"] in ("happy", "neutral"):
                by_id.setdefault(row["identity"], {}).setdefault(row["expression"], []).append(
                    row["file"])
    both = sorted(i for i, d in by_id.items() if len(d) == 2)
    rng = np.random.default_rng(0)
    sample = rng.choice(both, size=min(60, len(both)), replace=False)
    wins = []
    for ident in sample:
        happy = _aus(analyzer, lfw / sorted(by_id[ident]["happy"])[0])
        neutral = _aus(analyzer, lfw / sorted(by_id[ident]["neutral"])[0])
        wins.append(happy[AU["AU12"]] > neutral[AU["AU12"]])
    assert len(wins) >= 30
    assert np.mean(wins) >= 0.9, f"AU12 happy > neutral for only {np.mean(wins):.0%}"


def test_posed_expressions(misc: Path, analyzer: object) -> None:
    est = {tag: _aus(analyzer, next(misc.glob(f"*-{tag}-*.jpg"))) for tag in ("hao", "su", "anc", "di")}
    others = lambda tag: [v for k, v in est.items() if k != tag]  # noqa: E731
    # happy: a clear smile, stronger than on any other posed photo
    assert est["hao"][AU["AU12"]] >= 2.5
    assert all(est["hao"][AU["AU12"]] > o[AU["AU12"]] + 1 for o in others("hao"))
    # surprise: brows up, lips apart, jaw dropped
    for au, floor in (("AU01", 1.5), ("AU02", 1.5), ("AU25", 1.5), ("AU26", 2.0)):
        assert est["su"][AU[au]] >= floor, au
    assert all(est["su"][AU["AU26"]] > o[AU["AU26"]] for o in others("su"))
    # anger: brows lowered, more than on the happy and surprised photos
    assert est["anc"][AU["AU04"]] >= 1.0
    assert est["anc"][AU["AU04"]] > max(est["hao"][AU["AU04"]], est["su"][AU["AU04"]])
