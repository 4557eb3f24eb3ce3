"""Helpers shared by the test modules (imported as ``from helpers import ...``: pytest puts this
folder on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def states_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Two state dicts (or safetensors dicts) hold the same names and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def brow_height(landmarks: np.ndarray) -> float:
    """How far the brows' upper edge sits above the eye corners (mean of both eyes, image rows),
    over the outer eye corners' distance."""
    from facexpr.face.eyes import EYES
    from facexpr.face.mouth import inter_ocular

    lm = np.asarray(landmarks, np.float64)
    rise = [lm[list(e.corners), 1].mean() - lm[list(e.brow_upper), 1].mean() for e in EYES]
    return float(np.mean(rise)) / inter_ocular(lm)
