"""Crash-safe, pickle-free training checkpoints.

A checkpoint is a folder ``RUN/checkpoints/it-00001234/`` holding

    weights.safetensors      every module's state dict, keys ``<module>/<param>``
    optimizers.safetensors   every optimiser's tensor state, keys ``<opt>/<param id>/<name>``
    rng.safetensors          torch CPU/CUDA generator states and numpy's MT19937 key
    state.json               counters, config, optimiser param groups, python/numpy RNG scalars

and ``RUN/checkpoints/latest.json`` names the newest complete one. Writing goes: files into a
temporary folder, fsync each, rename the folder to its final name, fsync the parent, then
atomically replace ``latest.json``; only then are older checkpoints beyond ``keep`` deleted.
A kill at any instant therefore leaves ``latest.json`` pointing at a complete checkpoint (or,
before the very first one, no checkpoint at all). Loading never unpickles anything: safetensors
for tensors and JSON for the rest.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.optim import Optimizer

from facexpr.atomic import atomic_open, fsync_path, make_shareable
from facexpr.errors import ConfigError
from facexpr.weights_io import read_tensors

FORMAT = "facexpr-checkpoint"
FORMAT_VERSION = 1
DIRNAME = "checkpoints"
LATEST = "latest.json"
_NAME = re.compile(r"^it-(\d{8,})$")


# -- small atomic-file helpers --------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder + fsync + os.replace."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    fsync_path(path.parent)


# -- RNG ------------------------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Python, numpy, torch and CUDA global RNG states as (tensors, JSON scalars)."""
    tensors: dict[str, torch.Tensor] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    scalars = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    return tensors, scalars


def restore_rng(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only for devices that exist here)."""
    torch.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        for key, s in tensors.items():
            if key.startswith("cuda_") and int(key[5:]) < n:
                torch.cuda.set_rng_state(s.to(torch.uint8), int(key[5:]))
    py = scalars["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = scalars["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))


# -- optimisers -----------------------------------------------------------------------------------


def _flatten_optimizer(name: str, opt: Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{pid}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, sub = key[len(prefix) :].split("/", 1)
            state.setdefault(int(pid), {})[sub] = value
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


# -- save / load ----------------------------------------------------------------------------------


def checkpoint_name(iteration: int) -> str:
    return f"it-{iteration:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary folders start with '.')."""
    root = Path(run_dir) / DIRNAME
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest.json`` names; falls back to the newest complete folder."""
    root = Path(run_dir) / DIRNAME
    try:
        name = json.loads((root / LATEST).read_text(encoding="utf-8"))["name"]
        path = root / name
        if (path / "state.json").is_file():
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    iteration: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, Optimizer],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``iteration`` atomically and prune all but the newest ``keep``.

    ``state`` holds JSON-serialisable counters/config; RNG states are added here.
    """
    root = Path(run_dir) / DIRNAME
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(iteration)
    if not final.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        try:
            weights = {
                f"{mname}/{k}": v.detach().to("cpu").contiguous().clone()
                for mname, module in modules.items()
                for k, v in module.state_dict().items()
            }
            opt_tensors: dict[str, torch.Tensor] = {}
            opt_meta: dict[str, Any] = {}
            for oname, opt in optimizers.items():
                t, m = _flatten_optimizer(oname, opt)
                opt_tensors.update(t)
                opt_meta[oname] = m
            rng_tensors, rng_scalars = capture_rng()
            doc = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "iteration": int(iteration),
                "modules": sorted(modules),
                "optimizers": opt_meta,
                "rng": rng_scalars,
                "torch_version": torch.__version__,
                **state,
            }
            save_file(weights, str(tmp / "weights.safetensors"))
            save_file(opt_tensors, str(tmp / "optimizers.safetensors"))
            save_file(rng_tensors, str(tmp / "rng.safetensors"))
            # state.json last: its presence marks a folder as complete for list_checkpoints()
            (tmp / "state.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
            for f in tmp.iterdir():
                fsync_path(f)
            make_shareable(tmp)
            fsync_path(tmp)
            os.replace(tmp, final)
            fsync_path(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    write_text_atomic(root / LATEST, json.dumps({"name": final.name, "iteration": int(iteration)}) + "\n")
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".it-*"):  # temp folders of a write that was killed
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: checkpoint state.json unreadable ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{path}: state.json is not a facexpr checkpoint's; delete this folder to fall back "
                          "to the previous one")
    return doc


def load_checkpoint(
    path: Path,
    modules: dict[str, nn.Module],
    optimizers: dict[str, Optimizer],
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Load weights, optimiser state and (optionally) RNG state; returns the JSON state."""
    path = Path(path)
    doc = read_checkpoint_state(path)
    fix = f"delete {path} to fall back to the previous checkpoint"
    weights, opt_tensors, rng_tensors = (read_tensors(path / f"{name}.safetensors", fix)
                                         for name in ("weights", "optimizers", "rng"))
    for mname, module in modules.items():
        prefix = f"{mname}/"
        sd = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"{path}: weights of {mname!r} do not match the model config ({exc})") from exc
    for oname, opt in optimizers.items():
        opt.load_state_dict(_unflatten_optimizer(oname, opt_tensors, doc["optimizers"][oname]))
    if restore_rng_state:
        restore_rng(rng_tensors, doc["rng"])
    return doc
