"""Tensor-level wrappers around a generator: the same call for torch and for onnxruntime.

A runner takes aligned crops (uint8, N x S x S x 3) and the family's condition values (N x L:
OpenFace-scale AUs for AU-conditioned families, one-hot label rows for label-conditioned ones;
:class:`~facexpr.models.base.Condition` turns them into the network input) and returns
the generator's maps as float32 numpy arrays keyed by :class:`GeneratorOutput` field name
(``result``, ``attention``, ``colour``, and for flow families ``flow``, ``warped``, ``texture``),
images in ``[-1, 1]`` channels-last, attention in ``[0, 1]``. The pipeline above never touches
torch tensors, which is what lets it switch to onnxruntime on CPU.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from facexpr.errors import ConfigError, OutputError
from facexpr.models import AU_CONDITION, Condition, GeneratorOutput, condition_of

#: GeneratorOutput tensor fields in a fixed order (ONNX outputs are named after them).
OUTPUT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(GeneratorOutput) if f.name != "extras")


class Runner(Protocol):
    image_size: int
    backend: str
    condition: Condition

    def __call__(self, crops: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]: ...


def to_input(crops: np.ndarray) -> np.ndarray:
    """uint8 (N,S,S,3) -> float32 (N,3,S,S) in [-1, 1]."""
    x = np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x / 127.5 - 1.0)


def _to_numpy_maps(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(N,C,H,W) -> channels-last (N,H,W,C); single-channel maps become (N,H,W)."""
    maps: dict[str, np.ndarray] = {}
    for name, arr in outputs.items():
        a = np.asarray(arr, dtype=np.float32).transpose(0, 2, 3, 1)
        maps[name] = a[..., 0] if a.shape[-1] == 1 else a
    return maps


class TorchRunner:
    backend = "torch"

    def __init__(self, generator: nn.Module, device: torch.device | str = "cpu") -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.image_size = int(generator.config.image_size)  # type: ignore[attr-defined]
        try:
            self.condition = condition_of(generator)
        except ConfigError:  # a bare module (tests, notebooks) without a registered family
            self.condition = AU_CONDITION

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(to_input(crops)).to(self.device)
        cond = self.condition.encode(torch.from_numpy(np.asarray(values, dtype=np.float32))).to(self.device)
        out: GeneratorOutput = self.generator(x, cond)
        tensors = {name: getattr(out, name) for name in OUTPUT_FIELDS if getattr(out, name) is not None}
        return _to_numpy_maps({k: v.float().cpu().numpy() for k, v in tensors.items()})


class _ExportWrapper(nn.Module):
    """Flatten GeneratorOutput into a tuple so the ONNX graph has named outputs."""

    def __init__(self, generator: nn.Module, names: tuple[str, ...], condition: Condition) -> None:
        super().__init__()
        self.generator = generator
        self.names = names
        self.condition = condition

    def forward(self, image: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.generator(image, self.condition.encode(values))
        return tuple(getattr(out, n) for n in self.names)


#: ONNX opsets the export supports (torch's TorchScript exporter stops at 20; below 9 it lacks
#: the generators' ops).
MIN_OPSET, MAX_OPSET = 9, 20


def export_onnx(generator: nn.Module, path: str | os.PathLike[str], opset: int = 17) -> Path:
    """Export ``generator`` to ONNX with inputs ``image`` (N,3,S,S in [-1,1]) and ``aus`` (N,17,
    OpenFace scale) or ``labels`` (N,L one-hot) and one output per GeneratorOutput field the
    family produces.

    The batch dimension is dynamic. The file is written to a temporary name and renamed, so an
    interrupted export never leaves a truncated model behind.
    """
    path = Path(path)
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset {opset}: the ONNX export supports opsets {MIN_OPSET} to {MAX_OPSET}; "
                          "use the default 17 unless your runtime needs another")
    generator = generator.eval().float().cpu()
    size = int(generator.config.image_size)  # type: ignore[attr-defined]
    condition = condition_of(generator)
    width = int(getattr(generator.config, "num_aus", 17)) if condition.kind == "aus" else len(condition.labels)
    input_name = "aus" if condition.kind == "aus" else "labels"
    image = torch.zeros(1, 3, size, size)
    aus = torch.full((1, width), 1.0)
    with torch.inference_mode():
        probe = generator(image, condition.encode(aus))
    names = tuple(n for n in OUTPUT_FIELDS if getattr(probe, n) is not None)
    wrapper = _ExportWrapper(generator, names, condition).eval()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # The TorchScript exporter narrates its own internals (instance norm exported in
            # training mode, which is what every family's norm layers compute; slices it cannot
            # constant-fold; tracer notes). None of it is for a user: whether the graph computes
            # what the generator computes is checked against torch where it matters (tests,
            # `facexpr export-onnx`).
            for category in (UserWarning, DeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category, module=r"torch\.onnx")
            # Its own deprecation notice is attributed to the caller (this module), not to torch.
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                (image, aus),
                str(tmp),
                input_names=["image", input_name],
                output_names=list(names),
                dynamic_axes={"image": {0: "batch"}, input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}},
                opset_version=opset,
                dynamo=False,
            )
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc}") from exc
    except Exception as exc:  # the exporter refused the graph: one line, not its IR dump
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise OutputError(f"{path}: the ONNX export failed at opset {opset} ({first}); try the default --opset 17") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


class OnnxRunner:
    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], image_size: int, threads: int | None = None,
                 condition: Condition = AU_CONDITION) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(f"{path}: cannot be loaded by onnxruntime ({exc}); re-export it with "
                              f"`facexpr export-onnx`") from exc
        self.names = [o.name for o in self.session.get_outputs()]
        self.value_input = [i.name for i in self.session.get_inputs() if i.name != "image"][0]
        self.image_size = int(image_size)
        self.condition = condition

    def __call__(self, crops: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"image": to_input(crops), self.value_input: np.asarray(values, dtype=np.float32)}
        outs = self.session.run(self.names, feeds)
        return _to_numpy_maps(dict(zip(self.names, outs)))
