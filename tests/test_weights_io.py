"""facexpr.weights_io: the one safetensors reader and its one wording for bad files."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from facexpr.errors import ConfigError
from facexpr.weights_io import read_arrays, read_tensors

FIX = "re-export the model"


class _Touch:
    """Unpickling this creates a file: proof that a reader ran pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


def test_reads_every_tensor_or_the_named_ones(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    a, b = torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.ones(4, dtype=torch.float16)
    path.write_bytes(save({"a": a, "b": b}))
    tensors = read_tensors(path, FIX)
    assert set(tensors) == {"a", "b"} and torch.equal(tensors["a"], a) and torch.equal(tensors["b"], b)
    assert tensors["a"].device.type == "cpu"
    arrays = read_arrays(path, FIX, ["a"])
    assert list(arrays) == ["a"] and np.array_equal(arrays["a"], a.numpy())
    with pytest.raises(ConfigError, match=r"w\.safetensors: has no 'c' tensor; re-export the model"):
        read_tensors(path, FIX, ["a", "c"])


@pytest.mark.parametrize("reader", [read_tensors, read_arrays])
@pytest.mark.parametrize("damage", ["truncated", "empty", "pickle", "text"])
def test_damaged_files_are_refused_by_name_with_what_to_do(reader, damage: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "w.safetensors"
    good = save({"a": torch.zeros(64, 64)})
    ran = tmp_path / "pickle-ran"
    path.write_bytes({"truncated": good[: len(good) // 2], "empty": b"",
                      "pickle": pickle.dumps(_Touch(ran)), "text": b"not weights"}[damage])
    with pytest.raises(ConfigError) as err:
        reader(path, FIX)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable safetensors file (damaged or truncated: ")
    assert message.endswith(f"; {FIX}")
    assert not ran.exists()


def test_missing_files_and_other_formats_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(missing))}: not found; {FIX}$"):
        read_tensors(missing, FIX)
    pth = tmp_path / "w.pth"
    ran = tmp_path / "pickle-ran"
    pth.write_bytes(pickle.dumps(_Touch(ran)))
    with pytest.raises(ConfigError, match=r"w\.pth: only \.safetensors files are read .*; re-export the model$"):
        read_tensors(pth, FIX)
    assert not ran.exists()
