"""Shipped model folders inside the package, looked up by name.

``facexpr/weights/<name>/`` holds a model folder (``config.json`` + ``generator.safetensors`` +
``MODEL_CARD.md``, optionally ``generator.onnx``); ``facexpr/weights/DEFAULT`` names the default.
Other folders there (e.g. the expression judge) have a different ``format`` and are not listed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from facexpr.errors import ConfigError
from facexpr.models.base import AU_CONDITION, Condition
from facexpr.models.pretrained import CARD, CONFIG, FORMAT


def weights_dir() -> Path:
    return Path(str(resources.files("facexpr") / "weights"))


@dataclass(frozen=True)
class ModelInfo:
    """What the editor and the evaluation need to know of a model before running it."""

    name: str
    path: Path
    family: str
    image_size: int
    card: str
    condition: Condition = AU_CONDITION


def _read(folder: Path) -> ModelInfo | None:
    try:
        meta = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    card_path = folder / CARD
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else "(no model card)"
    return ModelInfo(folder.name, folder, str(meta.get("family")), int(meta.get("image_size", 0)), card,
                     Condition.from_json(meta.get("condition")))


def shipped_models() -> dict[str, ModelInfo]:
    root = weights_dir()
    if not root.is_dir():
        return {}
    found = (_read(p) for p in sorted(root.iterdir()) if p.is_dir())
    return {m.name: m for m in found if m is not None}


def default_model_name() -> str:
    marker = weights_dir() / "DEFAULT"
    try:
        return marker.read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigError("this installation ships no default model; pass --model PATH to a model "
                          "folder exported with `facexpr export`") from None


def resolve_model(name_or_path: str | os.PathLike[str] | None) -> ModelInfo:
    """A shipped model by name (``None`` or ``"default"`` = the default) or a model folder by path."""
    name = default_model_name() if name_or_path in (None, "", "default") else str(name_or_path)
    shipped = shipped_models()
    if name in shipped:
        return shipped[name]
    path = Path(name).expanduser()
    if path.is_dir():
        info = _read(path)
        if info is None:
            raise ConfigError(f"{path}: not a facexpr model folder (no valid {CONFIG}); export one "
                              f"with `facexpr export RUN OUT`")
        return info
    names = ", ".join(shipped) or "none"
    raise ConfigError(f"unknown model {name!r}: not a shipped model (shipped: {names}) nor a model folder")
