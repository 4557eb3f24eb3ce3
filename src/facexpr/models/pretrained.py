"""Model folders: ``save_pretrained`` / ``from_pretrained`` round-trip of a generator.

A model folder is self-contained and safe to open from anyone (nothing is unpickled)::

    FOLDER/<component>.safetensors weights of each component, float32 or float16
                                   (``generator.safetensors`` for a one-network model)
    FOLDER/config.json             family, its components (name -> file), config fields,
                                   condition (AUs or labels), image size, conventions
    FOLDER/MODEL_CARD.md           what it was trained on, how, and under which terms

``config.json``'s ``components`` index is the diffusers-style list of what the folder ships; the
family named by ``family`` knows how to assemble them (``ModelFamily.component_modules``).

The folder is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written model where a user (or the pipeline) would load it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facexpr import __version__
from facexpr.atomic import atomic_folder
from facexpr.errors import ConfigError, OutputError
from facexpr.expression import AU_NAMES
from facexpr.models.base import Condition, config_from_dict
from facexpr.weights_io import read_tensors

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS = "generator.safetensors"
CONFIG = "config.json"
CARD = "MODEL_CARD.md"
FORMAT = "facexpr-model"
FORMAT_VERSION = 1


def component_file(name: str) -> str:
    return f"{name}.safetensors"


def model_config_json(
    components: dict[str, nn.Module],
    config: Any,
    family_name: str,
    condition: Condition,
    output_convention: str,
    dtype: torch.dtype,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` content: everything needed to rebuild and correctly drive G."""
    num_aus = int(getattr(config, "num_aus", len(AU_NAMES)))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": family_name,
        "components": {name: component_file(name) for name in components},
        "config": dataclasses.asdict(config),
        **({"au_names": list(AU_NAMES) if num_aus == len(AU_NAMES) else [f"label{i}" for i in range(num_aus)]}
           if condition.kind == "aus" else {}),
        "image_size": int(config.image_size),
        "condition": condition.to_json(),
        "input_range": [-1.0, 1.0],
        "output_convention": output_convention,
        "dtype": str(dtype).removeprefix("torch."),
        "facexpr_version": __version__,
        "training": training or {},
    }


#: Files a model folder may hold besides its ``*.safetensors`` components; ``overwrite``
#: replaces only a folder made of these.
MODEL_FILES = frozenset({WEIGHTS, CONFIG, CARD, "generator.onnx", "generator.onnx.data",
                         # the geometry family's components (models.geometry)
                         "rig.safetensors", "shading.safetensors", "mouth.safetensors", "mouth.json"})


def check_replaceable_folder(folder: Path, overwrite: bool, *, fmt: str, kind: str,
                             own_file: Callable[[str], bool], flag: str = "--overwrite",
                             config: str = CONFIG) -> None:
    """Refuse to write a ``kind`` folder over anything but an empty folder or (with ``overwrite``)
    an earlier folder of the same kind: one holding only files ``own_file`` accepts and a
    ``config`` file (``config.json`` by default) of format ``fmt``. A run, a dataset, an input or
    a file is never deleted. ``flag`` is how the caller's user asks to overwrite (named in the
    error).

    Raises:
        OutputError: naming what would be removed.
    """
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder; choose a new output folder")
    entries = sorted(folder.iterdir())
    if not entries:
        return
    if not overwrite:
        raise OutputError(f"{folder}: already exists and is not empty; choose a new folder or pass {flag}")
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries if e.is_dir() or not own_file(e.name)]
    found = None
    if (folder / config).is_file():
        try:
            found = json.loads((folder / config).read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            found = "unreadable"
    if foreign or found != fmt:
        what = ", ".join(foreign[:6]) + (" ..." if len(foreign) > 6 else "") if foreign else \
            f"a {config} that is not a {kind}'s ({found or 'no format'})"
        raise OutputError(
            f"{folder}: {flag} would remove this folder, but it is not a {kind} folder (it holds "
            f"{what}); it may be a run, a dataset or your own files. Nothing was removed; choose a new "
            "output folder"
        )


def check_replaceable_model_folder(folder: Path, overwrite: bool) -> None:
    """:func:`check_replaceable_folder` for model folders (``--overwrite``)."""
    check_replaceable_folder(folder, overwrite, fmt=FORMAT, kind="facexpr model",
                             own_file=lambda name: name in MODEL_FILES or name.endswith(".safetensors"))


def save_pretrained(
    components: dict[str, nn.Module],
    config: Any,
    folder: str | os.PathLike[str],
    *,
    family_name: str,
    condition: Condition,
    output_convention: str,
    fp16: bool = False,
    model_card: str | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model's ``components`` (name -> module) as a model folder; returns its path.

    ``fp16`` halves the files (the pipeline casts back to float32 on load, so CPU inference is
    unaffected apart from rounding of the weights).
    """
    import torch  # only writing and loading generators need torch; reading a folder's config does not
    from safetensors.torch import save_file

    folder = Path(folder)
    check_replaceable_model_folder(folder, overwrite)
    dtype = torch.float16 if fp16 else torch.float32
    meta = model_config_json(components, config, family_name, condition, output_convention, dtype, training)
    with atomic_folder(folder, "model folder") as tmp:
        for name, module in components.items():
            state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                     for k, v in module.state_dict().items()}
            save_file(state, str(tmp / component_file(name)),
                      metadata={"format": FORMAT, "family": family_name, "component": name})
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(model_card or f"# {family_name}\n\nNo model card was provided.\n", encoding="utf-8")
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


def load_weights(module: nn.Module, state: dict[str, Any], path: Path, config_name: str) -> None:
    """Load ``state`` into ``module`` strictly, each tensor cast to the module's dtype (weights may
    be stored as float16); a mismatch names the file and the config it disagrees with."""
    reference = module.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: weights do not match {config_name} ({exc})") from exc


def load_generator(
    folder: str | os.PathLike[str],
    family: Any,
    meta: dict[str, Any],
    *,
    device: torch.device | str,
    dtype: torch.dtype,
) -> nn.Module:
    """Build the family's generator from ``meta`` and load each component's weights into it."""
    folder = Path(folder)
    config = config_from_dict(family.config_cls, meta.get("config", {}))
    generator = family.build_generator(config)
    files = meta.get("components") or {"generator": WEIGHTS}  # folders written before the index
    modules = family.component_modules(generator)
    if not isinstance(files, dict) or set(files) != set(modules):
        raise ConfigError(f"{folder / CONFIG}: components {sorted(files) if isinstance(files, dict) else files} do not "
                          f"match the {family.name} family's {sorted(modules)}; re-export the model")
    for name, module in modules.items():
        path = folder / str(files[name])
        if path.parent != folder or not path.is_file():
            raise ConfigError(f"{folder}: missing {files[name]} (component {name}); re-export the model")
        load_weights(module, read_tensors(path, "re-export the model"), path, CONFIG)
    generator.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return generator
