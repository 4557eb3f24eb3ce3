"""Pure metric functions: numbers in, numbers out, no models and no files.

Everything the evaluation reports is computed here from arrays, so each formula can be tested
against a reference on known inputs and reused by training-time validation. Models (the judge,
the face analyser, the identity encoder) live elsewhere and only produce the arrays.

Conventions: images are uint8 (H, W, 3) or (H, W) RGB/grey, or float arrays on the same 0..255
scale; AU vectors are (N, 17) on OpenFace's 0..5 scale; every aggregate comes with its count so a
report can say how many faces a number rests on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from facexpr.errors import ConfigError

#: dlib's face-recognition convention: two faces closer than this are the same person.
VERIFICATION_THRESHOLD = 0.6


@dataclass(frozen=True)
class Stat:
    """An aggregate with the number of items it was computed from (``value`` NaN when count 0)."""

    value: float
    count: int
    std: float = float("nan")

    def as_dict(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def mean_stat(values: Sequence[float] | np.ndarray) -> Stat:
    """Mean, count and standard deviation of the finite values (NaNs are skipped: failed faces)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return Stat(float("nan"), 0)
    return Stat(float(arr.mean()), int(arr.size), float(arr.std()))


# --------------------------------------------------------------------------------------------
# Pixel fidelity
# --------------------------------------------------------------------------------------------


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ConfigError(f"images to compare must have the same shape; got {x.shape} and {y.shape}")
    return x, y


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(L^2 / MSE)``; +inf for identical images."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps (the 2-D SSIM window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim_map(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float = 255.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """SSIM of two single-channel images at every fully-inside window position ('valid').

    Wang, Bovik, Sheikh, Simoncelli (2004): Gaussian window 11x11, sigma 1.5, C1 = (0.01 L)^2,
    C2 = (0.03 L)^2, population (biased) local variances, as in their reference MATLAB code.
    """
    x, y = _pair(a, b)
    if x.ndim != 2:
        raise ConfigError(f"ssim_map needs 2-D images; got shape {x.shape}")
    if min(x.shape) < win_size:
        raise ConfigError(f"SSIM needs images of at least {win_size}x{win_size} pixels; got {x.shape}")
    g = gaussian_window(win_size, sigma)

    def blur(img: np.ndarray) -> np.ndarray:
        out = ndimage.correlate1d(img, g, axis=0, mode="reflect")
        return ndimage.correlate1d(out, g, axis=1, mode="reflect")

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    r = (win_size - 1) // 2
    # 'reflect' padding only changes border positions; dropping them leaves the 'valid' map.
    return (num / den)[r : x.shape[0] - r, r : x.shape[1] - r]


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, win_size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM; colour images (H, W, C) average the per-channel SSIMs (as scikit-image does)."""
    x, y = _pair(a, b)
    if x.ndim == 2:
        return float(ssim_map(x, y, data_range, win_size, sigma).mean())
    if x.ndim == 3:
        return float(np.mean([ssim_map(x[..., c], y[..., c], data_range, win_size, sigma).mean() for c in range(x.shape[-1])]))
    raise ConfigError(f"SSIM needs (H, W) or (H, W, C) images; got shape {x.shape}")


# --------------------------------------------------------------------------------------------
# Expression
# --------------------------------------------------------------------------------------------


def _labels(pred_or_proba: np.ndarray) -> np.ndarray:
    arr = np.asarray(pred_or_proba)
    return arr.argmax(axis=1) if arr.ndim == 2 else arr.astype(np.int64)


def generation_rate(pred_or_proba: np.ndarray, targets: Sequence[int] | np.ndarray) -> Stat:
    """Share of generated faces the judge assigns to their target class.

    Args:
        pred_or_proba: judge class indices (N,) or probabilities (N, classes).
        targets: target class index per face (N,); entries < 0 (a target the judge has no class
            for) are left out of the count.
    """
    pred = _labels(pred_or_proba)
    t = np.asarray(targets, dtype=np.int64)
    if pred.shape != t.shape:
        raise ConfigError(f"predictions {pred.shape} and targets {t.shape} differ in length")
    keep = t >= 0
    if not keep.any():
        return Stat(float("nan"), 0)
    return Stat(float((pred[keep] == t[keep]).mean()), int(keep.sum()))


def per_class_rate(
    pred_or_proba: np.ndarray, targets: Sequence[int] | np.ndarray, class_names: Sequence[str]
) -> dict[str, Stat]:
    """:func:`generation_rate` (or accuracy, for real photos) separately for every class."""
    pred = _labels(pred_or_proba)
    t = np.asarray(targets, dtype=np.int64)
    out: dict[str, Stat] = {}
    for i, name in enumerate(class_names):
        sel = t == i
        out[name] = Stat(float((pred[sel] == i).mean()), int(sel.sum())) if sel.any() else Stat(float("nan"), 0)
    return out


def confusion_matrix(pred_or_proba: np.ndarray, targets: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): rows = target / true class, columns = judged class."""
    pred = _labels(pred_or_proba)
    t = np.asarray(targets, dtype=np.int64)
    keep = t >= 0
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (t[keep], pred[keep]), 1)
    return m


def rate_ratio(generated: Stat, real: Stat) -> Stat:
    """Generation rate relative to the judge's accuracy on real photos of the same class.

    A judge that recognises only 40 % of real sad faces cannot be expected to call 90 % of
    generated ones sad; the ratio (1.0 = as recognisable as real photos) corrects for that.
    """
    if generated.count == 0 or real.count == 0 or not real.value > 0:
        return Stat(float("nan"), 0)
    return Stat(generated.value / real.value, generated.count)


# --------------------------------------------------------------------------------------------
# Action Units
# --------------------------------------------------------------------------------------------


def au_error(target: np.ndarray, estimated: np.ndarray, au_names: Sequence[str] | None = None) -> dict[str, Stat]:
    """Per-AU mean absolute error between target AUs and AUs re-estimated on the output.

    Rows with any NaN in ``estimated`` (no face found on the output) are skipped. The key
    ``"mean"`` holds the MAE over all AUs and rows.
    """
    t = np.asarray(target, dtype=np.float64)
    e = np.asarray(estimated, dtype=np.float64)
    if t.shape != e.shape or t.ndim != 2:
        raise ConfigError(f"AU arrays must both be (N, AUs); got {t.shape} and {e.shape}")
    if au_names is None:
        from facexpr.expression import AU_NAMES

        au_names = AU_NAMES
    if len(au_names) != t.shape[1]:
        raise ConfigError(f"{len(au_names)} AU names for {t.shape[1]} AU columns")
    ok = np.isfinite(e).all(axis=1) & np.isfinite(t).all(axis=1)
    err = np.abs(t[ok] - e[ok])
    out = {name: mean_stat(err[:, i]) for i, name in enumerate(au_names)}
    out["mean"] = Stat(float(err.mean()), int(ok.sum()), float(err.mean(axis=1).std())) if ok.any() else Stat(float("nan"), 0)
    return out


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------


def embedding_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distance of two (N, D) embedding arrays (NaN rows stay NaN)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ConfigError(f"embedding arrays differ in shape: {x.shape} and {y.shape}")
    return np.sqrt(((x - y) ** 2).sum(axis=-1))


def verification_rate(distances: Sequence[float] | np.ndarray, threshold: float = VERIFICATION_THRESHOLD) -> Stat:
    """Share of pairs judged the same person (distance < threshold); NaN distances are skipped."""
    d = np.asarray(distances, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return Stat(float("nan"), 0)
    return Stat(float((d < threshold).mean()), int(d.size))


def sharpness(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Median absolute Laplacian of the grey image inside ``mask`` (bool, HxW): the fine detail of
    skin. The median, not the variance, so a few new strong edges (an opened mouth) cannot hide
    a face that was blurred everywhere else."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
    sel = np.abs(lap[mask])
    return float(np.median(sel)) if sel.size else math.nan


def sharpness_ratio(source: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> float:
    """Detail kept inside the face: :func:`sharpness` of the edit over that of the source.

    1 means as sharp as the photo; a generator that repaints at low resolution and is upsampled
    scores well below 1. (A warp can raise it slightly where it compresses texture.)
    """
    base = sharpness(source, mask)
    return sharpness(edited, mask) / base if base > 0 else math.nan


def changed_outside(source: np.ndarray, edited: np.ndarray, outside: np.ndarray, levels: int = 2) -> float:
    """Share of the ``outside`` pixels (bool, HxW) where any channel moved by more than ``levels``."""
    if not outside.any():
        return math.nan
    diff = np.abs(source[..., :3].astype(np.int16) - edited[..., :3].astype(np.int16)).max(axis=2)
    return float((diff[outside] > levels).mean())
