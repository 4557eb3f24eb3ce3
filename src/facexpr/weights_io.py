"""The one reader of safetensors weight files.

Every weights file facexpr reads (model components, checkpoints, the shipped helper networks,
user-supplied VGG19/Inception weights) goes through :func:`read_tensors` or :func:`read_arrays`,
so a missing, pickled, truncated or otherwise damaged file is refused with one wording that
names the file and says what to do. Nothing is ever unpickled: a file must be named
``*.safetensors`` and is parsed by safetensors alone. The whole file is read into memory first
(no memory map is left open on it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facexpr.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from numpy.typing import NDArray


def _read(path: str | os.PathLike[str], fix: str, keys: Iterable[str] | None,
          load: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
    from safetensors import SafetensorError

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ConfigError(f"{p}: only .safetensors files are read (pickled files can run code); {fix}")
    if not p.is_file():
        raise ConfigError(f"{p}: not found; {fix}")
    try:
        tensors = load(p.read_bytes())
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{p}: not a readable safetensors file (damaged or truncated: {exc}); {fix}") from exc
    if keys is not None:
        wanted = list(keys)
        missing = [k for k in wanted if k not in tensors]
        if missing:
            raise ConfigError(f"{p}: has no {', '.join(map(repr, missing))} tensor; {fix}")
        tensors = {k: tensors[k] for k in wanted}
    return tensors


def read_tensors(path: str | os.PathLike[str], fix: str, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The named torch tensors (on the CPU) of a safetensors file: all of them, or ``keys``.

    ``fix`` says what to do about a bad file ("re-export the model"); it ends every message.

    Raises:
        ConfigError: the file is not named ``*.safetensors``, is missing, cannot be parsed
            (pickled, truncated, empty) or lacks one of ``keys``.
    """
    from safetensors.torch import load

    return _read(path, fix, keys, load)


def read_arrays(path: str | os.PathLike[str], fix: str, keys: Iterable[str] | None = None) -> dict[str, NDArray[np.generic]]:
    """As :func:`read_tensors`, as numpy arrays."""
    from safetensors.numpy import load

    return _read(path, fix, keys, load)


__all__ = ["read_arrays", "read_tensors"]
