"""Metric formulas against slow, literal reference implementations on known images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facexpr.errors import ConfigError
from facexpr.evaluation import metrics as M


def _images(seed: int = 0, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size, size + 3, 3)).astype(np.uint8)
    noise = rng.normal(0, 20, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    return a, b


def _ssim_reference(x: np.ndarray, y: np.ndarray, L: float = 255.0) -> float:
    """Literal Wang et al. (2004): loop over every 11x11 window fully inside the image."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_matches_formula() -> None:
    a, b = _images()
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)
    assert M.psnr(a, a) == math.inf
    # a constant offset of 16 grey levels: MSE 256 -> 10 log10(255^2/256)
    c = np.full((8, 8), 100, np.uint8)
    assert M.psnr(c, c + 16) == pytest.approx(10 * math.log10(255**2 / 256), rel=1e-12)


def test_ssim_matches_literal_reference() -> None:
    a, b = _images()
    ref = np.mean([_ssim_reference(a[..., c], b[..., c]) for c in range(3)])
    assert M.ssim(a, b) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert M.ssim(a[..., 0], b[..., 0]) == pytest.approx(_ssim_reference(a[..., 0], b[..., 0]), rel=1e-9)


def test_ssim_properties() -> None:
    a, b = _images(1)
    assert M.ssim(a, a) == pytest.approx(1.0)
    assert M.ssim(a, b) == pytest.approx(M.ssim(b, a))
    assert 0 < M.ssim(a, b) < 1
    _, worse = _images(1)
    worse = np.clip(a + np.random.default_rng(2).normal(0, 60, a.shape), 0, 255).astype(np.uint8)
    assert M.ssim(a, worse) < M.ssim(a, b)
    with pytest.raises(ConfigError):
        M.ssim(a[:8, :8], b[:8, :8])
    with pytest.raises(ConfigError):
        M.ssim(a, b[:-1])


def test_gaussian_window() -> None:
    g = M.gaussian_window(11, 1.5)
    assert g.sum() == pytest.approx(1.0)
    assert g.argmax() == 5 and g[0] == pytest.approx(g[-1])


def test_generation_rate_and_per_class() -> None:
    proba = np.eye(3)[[0, 1, 2, 2, 1]]
    targets = np.array([0, 1, 1, 2, -1])  # last target has no judge class: not counted
    r = M.generation_rate(proba, targets)
    assert (r.value, r.count) == (pytest.approx(0.75), 4)
    per = M.per_class_rate(proba, targets, ["a", "b", "c"])
    assert per["a"].value == 1.0 and per["a"].count == 1
    assert per["b"].value == 0.5 and per["b"].count == 2
    cm = M.confusion_matrix(proba, targets, 3)
    assert cm.sum() == 4 and cm[1, 2] == 1
    assert M.generation_rate(np.array([1]), np.array([-1])).count == 0


def test_rate_ratio() -> None:
    r = M.rate_ratio(M.Stat(0.4, 10), M.Stat(0.8, 50))
    assert r.value == pytest.approx(0.5) and r.count == 10
    assert math.isnan(M.rate_ratio(M.Stat(0.4, 10), M.Stat(0.0, 50)).value)


def test_au_error_skips_failed_faces() -> None:
    t = np.zeros((3, 17))
    e = np.zeros((3, 17))
    e[0, 8] = 2.0  # AU12 off by 2 on the first face
    e[2] = np.nan  # no face found on the third output
    err = M.au_error(t, e)
    assert err["AU12"].value == pytest.approx(1.0) and err["AU12"].count == 2
    assert err["mean"].value == pytest.approx(2.0 / 34) and err["mean"].count == 2
    assert err["AU01"].value == 0.0


def test_identity_distance_and_verification() -> None:
    a = np.zeros((4, 128))
    b = np.zeros((4, 128))
    b[:, 0] = [0.1, 0.5, 0.7, np.nan]
    d = M.embedding_distances(a, b)
    assert d[:3] == pytest.approx([0.1, 0.5, 0.7])
    v = M.verification_rate(d)
    assert v.value == pytest.approx(2 / 3) and v.count == 3


def test_mean_stat_and_as_dict() -> None:
    s = M.mean_stat([1.0, 3.0, float("nan")])
    assert (s.value, s.count) == (2.0, 2)
    assert M.mean_stat([]).as_dict()["value"] is None
