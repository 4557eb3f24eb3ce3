"""Estimate the 17 OpenFace Action Units from MediaPipe blendshapes (and landmarks).

Why not OpenFace itself: it is a C++ tool with its own models and no wheel; every facexpr user
already has MediaPipe. The estimator therefore maps MediaPipe's 52 ARKit-style blendshapes to
the GANimation/OpenFace AU set on OpenFace's 0..5 scale, one explainable signal per AU:

    AU = clip(GAIN * (signal - OFFSET), 0, 5)

How the constants were obtained (``benchmarks/calibrate_aus.py`` reproduces every number; the
method and the tables are in ``docs/au_calibration.md``):

* The OpenFace CSV in the shared test media does not belong to either video beside it (different
  frame count, face position/scale and blink timing), so no per-frame fit against OpenFace was
  possible. Calibration instead uses labelled photos: OFFSET is the signal's median on neutral
  faces (LFW neutral + Taiwanese neutral, fit identities only), so a resting face reads ~0 as it
  does in OpenFace; GAIN maps the median signal on posed faces whose emotion's EMFACS prototype
  contains the AU (Taiwanese database, fit identities) to that prototype's intensity in
  :data:`facexpr.expression.EMOTIONS`, so an estimated posed expression and the emotion target
  the editor asks for live on the same scale. GAIN is kept within [5, 25]: never flatter than
  the 0..1 -> 0..5 prior, never so steep that noise saturates.
* AU09 and AU14 have no posed emotion in the calibration set that isolates them, and AU45 is not
  an emotion AU: they keep the prior 0..1 -> 0..5 scaling.
* MediaPipe's ``cheekSquint*`` and ``noseSneer*`` outputs stay below 0.005 on all ~6,900
  calibration photos (dead outputs of the v2 blendshape model), so AU06 uses eye narrowing while smiling
  (``min(eyeSquint, mouthSmile)``: the cheek raiser narrows the eye from below, and without a
  smile narrowing is AU07), and AU09 is effectively not observable (reported near 0).
* AU25 (lips part) is measured geometrically when landmarks are given: the inner-lip gap
  (landmarks 13-14) in units of the inter-ocular distance. Without landmarks a linear mix of
  jawOpen / mouthLowerDown / mouthUpperUp fitted to that gap (r ~ 0.9) stands in.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from facexpr.errors import ConfigError

__all__ = [
    "MEDIAPIPE_BLENDSHAPES",
    "aus_from_blendshapes",
    "au_signals",
    "lip_gap",
    "raw_aus_from_blendshapes",
    "LIPGAP_FROM_BLENDSHAPES",
    "OFFSET",
    "GAIN",
]

#: MediaPipe FaceLandmarker's 52 blendshape names in output order (ARKit names, '_neutral' first).
MEDIAPIPE_BLENDSHAPES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
_B = {n: i for i, n in enumerate(MEDIAPIPE_BLENDSHAPES)}

# Landmarks used for the geometric lip gap: eye corners (inter-ocular distance, roll) and the
# inner-lip midpoints.
_EYE_R = (33, 133)
_EYE_L = (362, 263)
_LIP_UPPER_INNER, _LIP_LOWER_INNER = 13, 14

# --- calibrated constants (benchmarks/calibrate_aus.py; see module docstring) --------------
#: Lip gap (inter-ocular units) ~= mix . (jawOpen, mouthLowerDown, mouthUpperUp, 1), least
#: squares on the fit identities of the Taiwanese + LFW calibration photos.
LIPGAP_FROM_BLENDSHAPES: tuple[float, float, float, float] = (0.580, 0.309, 0.146, 0.034)
#: Per-AU signal value of a resting face (order AU_NAMES).
OFFSET: tuple[float, ...] = (
    0.005, 0.025, 0.119, 0.007, 0.002, 0.360, 0.000, 0.000, 0.002,
    0.000, 0.001, 0.013, 0.004, 0.058, 0.044, 0.017, 0.000,
)
#: Per-AU gain from signal units to the 0..5 scale (order AU_NAMES).
GAIN: tuple[float, ...] = (
    5.54, 9.65, 6.45, 10.00, 5.00, 10.00, 5.00, 5.95, 5.00,
    5.00, 6.34, 5.00, 7.52, 10.00, 9.40, 10.00, 5.00,
)


def _check_blendshapes(blendshapes: ArrayLike) -> NDArray[np.float32]:
    bs = np.asarray(blendshapes, dtype=np.float32)
    if bs.ndim == 0 or bs.shape[-1] != len(MEDIAPIPE_BLENDSHAPES):
        raise ConfigError(
            f"expected MediaPipe blendshapes with {len(MEDIAPIPE_BLENDSHAPES)} values in the "
            f"last axis (order facexpr.face.aus.MEDIAPIPE_BLENDSHAPES); got shape {tuple(bs.shape)}"
        )
    return bs


def _mean(bs: NDArray[np.float32], *names: str) -> NDArray[np.float32]:
    return np.mean(np.stack([bs[..., _B[n]] for n in names], axis=-1), axis=-1)


def lip_gap(landmarks: ArrayLike) -> NDArray[np.float32]:
    """Inner-lip gap in inter-ocular units (scale- and roll-invariant), shape (...,)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim < 2 or lm.shape[-2] < 468 or lm.shape[-1] not in (2, 3):
        raise ConfigError(f"expected MediaPipe landmarks (..., 478, 3); got shape {lm.shape}")
    xy = lm[..., :2]
    er = xy[..., list(_EYE_R), :].mean(axis=-2)
    el = xy[..., list(_EYE_L), :].mean(axis=-2)
    axis = el - er
    iod = np.maximum(np.linalg.norm(axis, axis=-1), 1e-9)
    # Component of the upper->lower lip vector perpendicular to the eye line (y down).
    d = xy[..., _LIP_LOWER_INNER, :] - xy[..., _LIP_UPPER_INNER, :]
    gap = (d[..., 1] * axis[..., 0] - d[..., 0] * axis[..., 1]) / iod
    return (gap / iod).astype(np.float32)


def au_signals(blendshapes: ArrayLike, landmarks: ArrayLike | None = None) -> NDArray[np.float32]:
    """The uncalibrated per-AU signals (..., 17), mostly blendshape values in 0..1.

    Left/right blendshapes are averaged: OpenFace's AUs are bilateral.
    """
    bs = _check_blendshapes(blendshapes)
    smile = _mean(bs, "mouthSmileLeft", "mouthSmileRight")
    if landmarks is not None:
        gap = lip_gap(landmarks)
        if gap.shape != bs.shape[:-1]:
            raise ConfigError(
                f"landmarks {np.shape(landmarks)} do not match blendshapes {bs.shape}"
            )
    else:
        w = LIPGAP_FROM_BLENDSHAPES
        gap = (
            w[0] * _mean(bs, "jawOpen")
            + w[1] * _mean(bs, "mouthLowerDownLeft", "mouthLowerDownRight")
            + w[2] * _mean(bs, "mouthUpperUpLeft", "mouthUpperUpRight")
            + w[3]
        )
    cols = [
        _mean(bs, "browInnerUp"),  # AU01
        _mean(bs, "browOuterUpLeft", "browOuterUpRight"),  # AU02
        _mean(bs, "browDownLeft", "browDownRight"),  # AU04
        _mean(bs, "eyeWideLeft", "eyeWideRight"),  # AU05
        np.maximum(  # AU06: cheekSquint is dead in MediaPipe's model; eye narrowing when smiling
            _mean(bs, "cheekSquintLeft", "cheekSquintRight"),
            np.minimum(_mean(bs, "eyeSquintLeft", "eyeSquintRight"), smile),
        ),
        _mean(bs, "eyeSquintLeft", "eyeSquintRight"),  # AU07
        _mean(bs, "noseSneerLeft", "noseSneerRight"),  # AU09
        _mean(bs, "mouthUpperUpLeft", "mouthUpperUpRight"),  # AU10
        smile,  # AU12
        _mean(bs, "mouthDimpleLeft", "mouthDimpleRight"),  # AU14
        _mean(bs, "mouthFrownLeft", "mouthFrownRight"),  # AU15
        _mean(bs, "mouthShrugLower"),  # AU17
        _mean(bs, "mouthStretchLeft", "mouthStretchRight"),  # AU20
        _mean(bs, "mouthPressLeft", "mouthPressRight"),  # AU23 (funnel is AU22, not 23)
        np.asarray(gap, np.float32),  # AU25
        _mean(bs, "jawOpen"),  # AU26
        _mean(bs, "eyeBlinkLeft", "eyeBlinkRight"),  # AU45
    ]
    return np.stack(cols, axis=-1).astype(np.float32)


def raw_aus_from_blendshapes(blendshapes: ArrayLike) -> NDArray[np.float32]:
    """The uncalibrated starting mapping of the design notes: one blendshape per AU, x5.

    Kept as the baseline the calibration is compared against.
    """
    bs = _check_blendshapes(blendshapes)
    cols = [
        _mean(bs, "browInnerUp"),
        _mean(bs, "browOuterUpLeft", "browOuterUpRight"),
        _mean(bs, "browDownLeft", "browDownRight"),
        _mean(bs, "eyeWideLeft", "eyeWideRight"),
        _mean(bs, "cheekSquintLeft", "cheekSquintRight"),
        _mean(bs, "eyeSquintLeft", "eyeSquintRight"),
        _mean(bs, "noseSneerLeft", "noseSneerRight"),
        _mean(bs, "mouthUpperUpLeft", "mouthUpperUpRight"),
        _mean(bs, "mouthSmileLeft", "mouthSmileRight"),
        _mean(bs, "mouthDimpleLeft", "mouthDimpleRight"),
        _mean(bs, "mouthFrownLeft", "mouthFrownRight"),
        _mean(bs, "mouthShrugLower"),
        _mean(bs, "mouthStretchLeft", "mouthStretchRight"),
        np.maximum(_mean(bs, "mouthPressLeft", "mouthPressRight"), _mean(bs, "mouthFunnel")),
        _mean(bs, "jawOpen"),  # '1 - mouthClose' would read ~1 always: mouthClose is ~0
        _mean(bs, "jawOpen"),
        _mean(bs, "eyeBlinkLeft", "eyeBlinkRight"),
    ]
    return (np.clip(np.stack(cols, axis=-1), 0.0, 1.0) * 5.0).astype(np.float32)


def aus_from_blendshapes(
    blendshapes: ArrayLike, landmarks: ArrayLike | None = None
) -> NDArray[np.float32]:
    """17 AU intensities, order ``facexpr.expression.AU_NAMES``, OpenFace scale 0..5.

    Args:
        blendshapes: (..., 52) MediaPipe scores in MediaPipe's order.
        landmarks: optional (..., 478, 3) landmarks of the same faces (any pixel scale); when
            given, AU25 (lips part) is measured from the lips instead of inferred from
            blendshapes.

    Returns:
        float32 (..., 17) clipped to 0..5.
    """
    sig = au_signals(blendshapes, landmarks)
    out = (sig - np.asarray(OFFSET, np.float32)) * np.asarray(GAIN, np.float32)
    return np.clip(out, 0.0, 5.0).astype(np.float32)
