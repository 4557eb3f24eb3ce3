"""Helpers shared by the test modules (imported as ``from helpers import ...``: pytest puts this
folder on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def states_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Two state dicts (or safetensors dicts) hold the same names and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
