"""Estimate the 17 OpenFace Action Units from MediaPipe blendshapes.

PRELIMINARY: the mapping below is the uncalibrated starting point (one blendshape per AU, 0..1
scaled to 0..5). Calibrated constants replace it once fitted against OpenFace output.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from facexpr.errors import ConfigError

__all__ = ["aus_from_blendshapes", "MEDIAPIPE_BLENDSHAPES"]

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


def _mean(bs: NDArray[np.float32], *names: str) -> NDArray[np.float32]:
    return np.mean(np.stack([bs[..., _B[n]] for n in names], axis=-1), axis=-1)


def raw_aus_from_blendshapes(blendshapes: ArrayLike) -> NDArray[np.float32]:
    """The uncalibrated one-blendshape-per-AU mapping (0..1 -> 0..5), shape (..., 17)."""
    bs = np.asarray(blendshapes, dtype=np.float32)
    if bs.ndim == 0 or bs.shape[-1] != len(MEDIAPIPE_BLENDSHAPES):
        raise ConfigError(
            f"expected MediaPipe blendshapes with {len(MEDIAPIPE_BLENDSHAPES)} values in the "
            f"last axis; got shape {tuple(bs.shape)}"
        )
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
        _mean(bs, "jawOpen"),
        _mean(bs, "jawOpen"),
        _mean(bs, "eyeBlinkLeft", "eyeBlinkRight"),
    ]
    return (np.clip(np.stack(cols, axis=-1), 0.0, 1.0) * 5.0).astype(np.float32)


def aus_from_blendshapes(blendshapes: ArrayLike, landmarks: ArrayLike | None = None) -> NDArray[np.float32]:
    """17 AU intensities (order ``facexpr.expression.AU_NAMES``, 0..5) from blendshapes (..., 52)."""
    del landmarks
    return raw_aus_from_blendshapes(blendshapes)
