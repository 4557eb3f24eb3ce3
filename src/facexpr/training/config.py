"""The training options: one dataclass, defaults from the GANimation paper, strict overrides.

Options are plain data: building a :class:`TrainConfig` touches no device, folder or dataset
(the anti-pattern this replaces is an options class whose parsing sets the GPU and scans
folders). Every field can be overridden with ``--set name=value``; so can every field of the
model family's config (``--set width=32``). An unknown name is an error that lists the valid
ones, raised before any work starts.
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
from facexpr.models.base import coerce_value, config_fields

RESOLVED = "config.json"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``RUN/config.json``).

    Defaults are the GANimation paper's (Pumarola et al. 2018 and its reference code): Adam
    1e-4 with betas (0.5, 0.999), batch 25, one generator step per 5 critic steps, gradient
    penalty 10, AU-regression weight 4000 (divided by the batch size, as the reference code
    does, on condition vectors ``aus / 5``), cycle 10, attention mean 0.1 and TV 1e-5, 30 epochs
    with a linear learning-rate decay to zero over the last 10 (``decay_fraction = 1/3``).
    """

    model: str = "ganimation"
    preset: str = "paper"
    model_config: dict[str, Any] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)
    size: int = 0  # 0 = the prepared dataset's crop size
    batch: int = 25  # global batch (split evenly across ranks)
    epochs: float = 30.0  # used when steps == 0
    steps: int = 0  # total generator steps; 0 = derive from epochs
    critic_steps: int = 5  # critic steps per generator step
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_fraction: float = 1.0 / 3.0  # linear LR decay to 0 over this last fraction of training
    lambda_gp: float = 10.0
    lambda_cond: float = 4000.0  # AU regression, generator side
    lambda_cond_critic: float = 4000.0  # AU regression on real images, critic side
    lambda_cycle: float = 10.0
    lambda_attention_mean: float = 0.1
    lambda_attention_tv: float = 1e-5
    ema_beta: float = 0.999  # with a (1+s)/(10+s) warm-up so short runs have a useful EMA
    grad_clip: float = 0.0  # max global grad norm per network; 0 = off
    amp: bool = True  # bf16 autocast on CUDA; CPU always trains in fp32
    target_noise: float = 0.1  # uniform +- noise on sampled target AUs (0..5 scale)
    flip: bool = True
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    log_every: int = 10  # generator steps between metric rows
    sample_every: int = 500  # generator steps between sample grids
    checkpoint_every: int = 1000  # generator steps between checkpoints
    keep_checkpoints: int = 2
    sample_faces: int = 6
    progress: bool = True

    def family(self):  # noqa: ANN201 - ModelFamily
        return get_family(self.model)

    def resolved_model_config(self) -> Any:
        """The family's config dataclass from preset + overrides + ``size``."""
        overrides = dict(self.model_config)
        if self.size:
            overrides["image_size"] = self.size
        return self.family().make_config(self.preset, **overrides)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"run config has unknown option(s) {unknown}; was it written by a newer facexpr?")
        return cls(**doc)


def train_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


# Options that are set with their own CLI flags and must not be smuggled in through --set.
_NOT_SETTABLE = {"model", "model_config", "data", "image_size"}


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
    mfields = config_fields(family.config_cls)
    defaults = TrainConfig()
    mdefaults = family.config_cls()
    updates: dict[str, Any] = {}
    model_updates = dict(config.model_config)
    for key, value in items:
        if key in _NOT_SETTABLE:
            raise ConfigError(f"--set {key}: use the dedicated option instead (--model, --data, --size)")
        if key in tfields:
            updates[key] = coerce_value(key, value, getattr(defaults, key))
        elif key in mfields:
            model_updates[key] = coerce_value(key, value, getattr(mdefaults, key))
        else:
            valid = sorted((set(tfields) | set(mfields)) - _NOT_SETTABLE)
            raise ConfigError(f"unknown option {key!r} for model {config.model!r}; valid names: {', '.join(valid)}")
    return dataclasses.replace(config, **updates, model_config=model_updates)


def validate(config: TrainConfig) -> None:
    """Range checks that need no data or device; raise :class:`ConfigError` with the fix."""
    family = config.family()
    try:
        model_config = config.resolved_model_config()
        with torch.device("meta"):  # runs the builders' checks without allocating any weights
            family.build_generator(model_config)
            family.build_critic(model_config)
    except ValueError as exc:
        raise ConfigError(f"invalid model configuration: {exc}") from exc
    checks = [
        (config.batch >= 1, "batch must be >= 1"),
        (config.steps >= 0, "steps must be >= 0"),
        (config.steps > 0 or config.epochs > 0, "give --steps N or --epochs N (> 0)"),
        (config.critic_steps >= 1, "critic_steps must be >= 1"),
        (config.lr_g > 0 and config.lr_d > 0, "learning rates must be > 0"),
        (0 <= config.beta1 < 1 and 0 <= config.beta2 < 1, "betas must be in [0, 1)"),
        (0 <= config.decay_fraction <= 1, "decay_fraction must be in [0, 1]"),
        (0 <= config.ema_beta < 1, "ema_beta must be in [0, 1)"),
        (config.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
        (0 <= config.val_fraction < 1, "val_fraction must be in [0, 1)"),
        (config.workers >= 0, "workers must be >= 0"),
        (config.size == 0 or config.size >= 8, "size must be >= 8"),
        (min(config.log_every, config.sample_every, config.checkpoint_every) >= 1, "*_every must be >= 1"),
        (config.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        (config.target_noise >= 0, "target_noise must be >= 0"),
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
    return config
