"""The training options: generic run options, plus the family's architecture and its recipe's
options, with strict overrides.

Options are plain data: building a :class:`TrainConfig` touches no device, folder or dataset
(the anti-pattern this replaces is an options class whose parsing sets the GPU and scans
folders). Three groups, one ``--set name=value`` for all of them:

* :class:`TrainConfig` fields: what any run has (data, schedule, batch, seed, logging);
* the model family's config fields (``--set width=32``), kept in ``model_config``;
* the recipe's own options (loss weights, learning rates, critic steps, EMA: ``--set
  lambda_cycle=5``), kept in ``recipe_config`` with the recipe's paper defaults.

The recipe registry guarantees the three name sets are disjoint. An unknown name is an error
that lists the valid ones, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from facexpr.errors import ConfigError
from facexpr.models import get_family
from facexpr.models.base import coerce_value, config_fields, config_from_dict

RESOLVED = "config.json"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``RUN/config.json``)."""

    model: str = "ganimation"
    preset: str = "paper"
    model_config: dict[str, Any] = field(default_factory=dict)
    recipe_config: dict[str, Any] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)
    size: int = 0  # 0 = the prepared dataset's crop size
    batch: int = 25  # global batch (split evenly across ranks); GANimation's
    epochs: float = 30.0  # used when steps == 0
    steps: int = 0  # total steps (generator updates); 0 = derive from epochs
    decay_fraction: float = 1.0 / 3.0  # linear LR decay to 0 over this last fraction of training
    grad_clip: float = 0.0  # max global grad norm per optimiser; 0 = off
    amp: bool = True  # bf16 autocast on CUDA; CPU always trains in fp32
    flip: bool = True
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    log_every: int = 10  # steps between metric rows
    sample_every: int = 500  # steps between sample grids
    checkpoint_every: int = 1000  # steps between checkpoints
    keep_checkpoints: int = 2
    sample_faces: int = 6
    progress: bool = True

    def family(self):  # noqa: ANN201 - ModelFamily
        return get_family(self.model)

    def recipe(self):  # noqa: ANN201 - type[Recipe]
        from facexpr.training.recipes import recipe_for

        return recipe_for(self.model)

    def resolved_model_config(self) -> Any:
        """The family's config dataclass from preset + overrides + ``size`` (which sets the
        family's ``size_field``: ``image_size``, or the mouth network's crop ``size``)."""
        family = self.family()
        overrides = dict(self.model_config)
        if self.size:
            overrides[family.size_field] = self.size
        return family.make_config(self.preset, **overrides)

    def resolved_recipe_config(self) -> Any:
        """The recipe's options dataclass: its paper defaults + ``recipe_config``."""
        return config_from_dict(self.recipe().Config, dict(self.recipe_config))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        doc = dict(doc)
        # Runs written before recipes had options of their own kept them at the top level.
        moved = {k: doc.pop(k) for k in list(doc) if k not in known and k in _recipe_fields(doc.get("model"))}
        if moved:
            doc["recipe_config"] = {**moved, **dict(doc.get("recipe_config") or {})}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"run config has unknown option(s) {unknown}; was it written by a newer facexpr?")
        return cls(**doc)


def _recipe_fields(model: Any) -> set[str]:
    try:
        return set(config_fields(TrainConfig(model=str(model)).recipe().Config))
    except ConfigError:
        return set()


def run_defaults(model: Any) -> dict[str, Any]:
    """The run options a family's recipe sets to its paper's values (``Recipe.run_defaults``)."""
    try:
        return dict(TrainConfig(model=str(model)).recipe().run_defaults)
    except ConfigError:
        return {}


def make_config(**options: Any) -> TrainConfig:
    """A :class:`TrainConfig` from options of any of the three groups, routed by name
    (``make_config(model="stargan", data=[...], steps=100, lambda_rec=5, width=32)``). Run options
    not given take the family's paper values where its recipe has them (CycleGAN: batch 1)."""
    generic = {k: options.pop(k) for k in list(options) if k in train_fields() and k not in ("model_config", "recipe_config")}
    config = TrainConfig(**{**run_defaults(generic.get("model", TrainConfig.model)), **generic})
    return apply_overrides(config, options) if options else config


def train_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


# Options that are set with their own CLI flags and must not be smuggled in through --set.
_NOT_SETTABLE = {"model", "model_config", "recipe_config", "data", "image_size"}


def apply_overrides(config: TrainConfig, pairs: list[str] | dict[str, Any]) -> TrainConfig:
    """Apply ``key=value`` overrides to the training config or to the model config.

    Raises :class:`ConfigError` for a malformed pair or an unknown key, listing the valid keys.
    """
    items: list[tuple[str, Any]] = []
    if isinstance(pairs, dict):
        items = list(pairs.items())
    else:
        for pair in pairs:
            if "=" not in pair:
                raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set lambda_cycle=5")
            key, value = pair.split("=", 1)
            items.append((key.strip(), value.strip()))
    tfields = train_fields()
    family = config.family()
    recipe_cls = config.recipe()
    mfields = config_fields(family.config_cls)
    rfields = config_fields(recipe_cls.Config)
    defaults = TrainConfig()
    mdefaults = family.config_cls()
    rdefaults = recipe_cls.Config()
    updates: dict[str, Any] = {}
    model_updates = dict(config.model_config)
    recipe_updates = dict(config.recipe_config)
    for key, value in items:
        if key in _NOT_SETTABLE:
            raise ConfigError(f"--set {key}: use the dedicated option instead (--model, --data, --size)")
        if key in tfields:
            updates[key] = coerce_value(key, value, getattr(defaults, key))
        elif key in mfields:
            model_updates[key] = coerce_value(key, value, getattr(mdefaults, key))
        elif key in rfields:
            recipe_updates[key] = coerce_value(key, value, getattr(rdefaults, key))
        else:
            valid = sorted((set(tfields) | set(mfields) | set(rfields)) - _NOT_SETTABLE)
            raise ConfigError(f"unknown option {key!r} for model {config.model!r}; valid names: {', '.join(valid)}")
    return dataclasses.replace(config, **updates, model_config=model_updates, recipe_config=recipe_updates)


def validate(config: TrainConfig) -> None:
    """Range checks that need no data or device; raise :class:`ConfigError` with the fix."""
    from facexpr.training.recipe import StepContext

    recipe_config = config.resolved_recipe_config()
    for problem in recipe_config.problems():
        raise ConfigError(problem)
    try:
        model_config = config.resolved_model_config()
        with torch.device("meta"):  # runs the builders' checks without allocating any weights
            recipe = config.recipe()(config.model, model_config, recipe_config,
                                     StepContext(0, 0, config.seed, max(1, config.batch)))
            recipe.networks()
    except ValueError as exc:
        raise ConfigError(f"invalid model configuration: {exc}") from exc
    checks = [
        (config.batch >= 1, "batch must be >= 1"),
        (config.steps >= 0, "steps must be >= 0"),
        (config.steps > 0 or config.epochs > 0, "give --steps N or --epochs N (> 0)"),
        (0 <= config.decay_fraction <= 1, "decay_fraction must be in [0, 1]"),
        (config.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
        (0 <= config.val_fraction < 1, "val_fraction must be in [0, 1)"),
        (config.workers >= 0, "workers must be >= 0"),
        (config.size == 0 or config.size >= 8, "size must be >= 8"),
        (min(config.log_every, config.sample_every, config.checkpoint_every) >= 1, "*_every must be >= 1"),
        (config.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (config.device == "auto" or config.device.split(":")[0] in ("cpu", "cuda"), "device must be auto, cpu or cuda[:N]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if not config.data:
        raise ConfigError("no training data: give --data PREPARED_FOLDER (made by `facexpr prepare`)")


def read_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / RESOLVED
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a training run folder (no {RESOLVED}); start one with `facexpr train --out {run_dir}`")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from exc
    config = TrainConfig.from_json(doc["train"] if "train" in doc else doc)
    if isinstance(doc.get("model_config"), dict):
        # Pin the architecture to what was trained: a preset whose values change in a later
        # version must not change the network a checkpoint is loaded into.
        config = dataclasses.replace(config, model_config=dict(doc["model_config"]))
    if isinstance(doc.get("recipe_config"), dict):
        # Likewise the recipe's options: a changed default must not change a resumed run.
        config = dataclasses.replace(config, recipe_config=dict(doc["recipe_config"]))
    return config
