"""Model folders: ``save_pretrained`` / ``from_pretrained`` round-trip of a generator.

A model folder is self-contained and safe to open from anyone (nothing is unpickled)::

    FOLDER/generator.safetensors   weights, float32 or float16
    FOLDER/config.json             family, config fields, AU names, image size, conventions
    FOLDER/MODEL_CARD.md           what it was trained on, how, and under which terms

The folder is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written model where a user (or the pipeline) would load it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from facexpr import __version__
from facexpr.atomic import fsync_path
from facexpr.errors import ConfigError, OutputError
from facexpr.expression import AU_NAMES
from facexpr.models.base import CONDITION_CONVENTION, config_from_dict

WEIGHTS = "generator.safetensors"
CONFIG = "config.json"
CARD = "MODEL_CARD.md"
FORMAT = "facexpr-model"
FORMAT_VERSION = 1


def model_config_json(
    generator: nn.Module,
    family_name: str,
    output_convention: str,
    dtype: torch.dtype,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content: everything needed to rebuild and correctly drive G."""
    config = generator.config  # type: ignore[attr-defined]
    num_aus = int(getattr(config, "num_aus", len(AU_NAMES)))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": family_name,
        "config": dataclasses.asdict(config),
        "au_names": list(AU_NAMES) if num_aus == len(AU_NAMES) else [f"label{i}" for i in range(num_aus)],
        "image_size": int(config.image_size),
        "condition": CONDITION_CONVENTION,
        "input_range": [-1.0, 1.0],
        "output_convention": output_convention,
        "dtype": str(dtype).removeprefix("torch."),
        "facexpr_version": __version__,
        "training": training or {},
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_shareable(folder: Path) -> None:
    """Give a folder written via mkdtemp (0700) and its files the usual permissions (respecting
    the umask), so a model folder can be shipped or shared like any other files."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


def save_pretrained(
    generator: nn.Module,
    folder: str | os.PathLike[str],
    *,
    family_name: str,
    output_convention: str,
    fp16: bool = False,
    model_card: str | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``generator`` as a model folder; returns its path.

    ``fp16`` halves the file (the pipeline casts back to float32 on load, so CPU inference is
    unaffected apart from rounding of the weights).
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise OutputError(f"{folder}: already exists and is not empty; choose a new folder or remove it")
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in generator.state_dict().items()}
    meta = model_config_json(generator, family_name, output_convention, dtype, training)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "family": family_name})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(model_card or f"# {family_name}\n\nNo model card was provided.\n", encoding="utf-8")
        for name in (WEIGHTS, CONFIG, CARD):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        make_shareable(tmp)
        fsync_path(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        fsync_path(folder.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{folder}: cannot write the model folder ({exc})") from exc
    return folder


def read_format_json(path: Path, fmt: str, version: int, kind: str, missing_hint: str) -> dict[str, Any]:
    """A facexpr JSON file (model config, mouth config) checked for its ``format`` and version,
    with errors that say what to do."""
    if not path.is_file():
        raise ConfigError(f"{path}: not found; {missing_hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); re-export the model") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ConfigError(f"{path}: not a facexpr {kind} (format is not {fmt!r})")
    if int(meta.get("format_version", 0)) > version:
        raise ConfigError(f"{path}: written by a newer facexpr (format {meta['format_version']}); upgrade facexpr")
    return meta


def read_model_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a model folder, validated enough to give actionable errors."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise ConfigError(f"{folder}: not a facexpr model folder (no {CONFIG}); export one with `facexpr export RUN OUT`")
    return read_format_json(folder / CONFIG, FORMAT, FORMAT_VERSION, "model config",
                            "export one with `facexpr export RUN OUT`")


def load_generator(
    folder: str | os.PathLike[str],
    family: Any,
    meta: dict[str, Any],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build the family's generator from ``meta`` and load the folder's weights into it."""
    folder = Path(folder)
    config = config_from_dict(family.config_cls, meta.get("config", {}))
    generator = family.build_generator(config)
    path = folder / WEIGHTS
    if not path.is_file():
        raise ConfigError(f"{folder}: missing {WEIGHTS}; re-export the model")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path}: cannot be read as safetensors ({exc}); re-export the model") from exc
    reference = generator.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: weights do not match config.json ({exc})") from exc
    generator.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return generator
