"""The training contract: what a family's recipe declares, and the only things the loop knows.

A recipe (one module per family, ``recipe_<family>.py``) is a class with

* ``families``: the model families it trains (``facexpr.models`` names the recipe in each
  family's registry entry, and :mod:`.recipes` checks the pair at import);
* ``Config``: a dataclass of its own options with the paper's defaults (loss weights,
  learning rates, critic steps, EMA); every field is settable with ``--set name=value``;
* ``networks()``: its named trainable networks, built in a fixed order (initialisation is
  seeded once, before the call, so the order is part of the run's definition);
* ``ema``: EMA copies as ``{copy name: network name}``, updated after the phases that say so;
* ``optimizers(networks)``: one optimiser per name (stargan-v2's ``optims``);
* ``phases()``: the :class:`Phase` records the loop iterates (stylegan3's phases as data):
  which optimiser steps, how often, which EMA copies follow;
* ``loss(phase, batch, ctx)``: the loss of one phase and its detached metrics (loss objects own
  their weights: the weights come from ``Config``, never from the generic run options);
* ``dataset(...)`` / ``training_rows(...)``: the batch type and what the data must carry;
* ``sample_set(...)`` / ``report(...)``: the fixed validation faces, the sample grid and the
  validation metrics;
* ``exports``: model component name -> network whose weights an exported model ships.

The loop (:mod:`.loop`) owns only the machinery: data order, autocast, zeroing, backward,
gradient averaging across ranks, clipping, optimiser steps, the learning-rate schedule, EMA
updates, checkpoints, logs and samples. Adding a family is one model module, one recipe module
and one registry line in ``facexpr.models``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from facexpr.data.dataset import PreparedDataset

Metrics = dict[str, Tensor]


class Batch(dict):
    """One batch on the training device: the dataset's item keys, tensors stacked.

    Attribute access (``batch.image``) reads the keys, so a recipe's code reads like a record
    while the loop stays ignorant of what a family's batches hold.
    """

    def __getattr__(self, name: str) -> Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def from_items(cls, items: dict[str, Tensor], device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return cls({k: v.to(device, non_blocking=nb) for k, v in items.items() if k != "index"})


@dataclass(frozen=True)
class Phase:
    """One update the loop runs: step ``optimizer`` on ``loss(name, ...)``.

    The phase runs on iterations ``i`` with ``(i + 1) % every == 0``; a recipe's step (what
    ``--steps`` counts) is ``iterations_per_step`` iterations. During the phase only the
    parameters of ``optimizer`` take gradients; after it, each EMA copy in ``ema`` follows its
    network.
    """

    name: str
    optimizer: str
    every: int = 1
    ema: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepContext:
    """Where the run is, for losses that draw randomness as a pure function of the step."""

    iteration: int
    step: int
    seed: int
    batch: int  # global batch
    rank: int = 0
    world_size: int = 1


@dataclass
class RecipeConfig:
    """Base of every recipe's options. Generic range checks by field name: ``lr*`` > 0,
    ``beta1``/``beta2``/``ema_beta`` in [0, 1), ``lambda_*`` >= 0, ``*_steps`` >= 1."""

    def problems(self) -> list[str]:
        out = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if f.name.startswith("lr") and not v > 0:
                out.append(f"{f.name} must be > 0")
            elif f.name in ("beta1", "beta2", "ema_beta") and not 0 <= v < 1:
                out.append(f"{f.name} must be in [0, 1)")
            elif f.name.startswith("lambda_") and not v >= 0:
                out.append(f"{f.name} must be >= 0")
            elif f.name.endswith("_steps") and not v >= 1:
                out.append(f"{f.name} must be >= 1")
        return out


def adam(params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=betas)


class Recipe:
    """Base class of the recipes; see the module docstring for the contract."""

    families: ClassVar[tuple[str, ...]]
    Config: ClassVar[type[RecipeConfig]]
    #: copy name -> network name; the loop deep-copies the network after ``networks()``.
    ema: ClassVar[dict[str, str]] = {}
    #: exported model component -> network (or EMA copy) holding its weights.
    exports: ClassVar[dict[str, str]] = {"generator": "G"}
    #: run options (``TrainConfig`` fields) of the family's paper that differ from the generic
    #: defaults, e.g. CycleGAN's batch of 1; a value the user gives wins.
    run_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, family: str, model_config: Any, config: RecipeConfig, ctx: StepContext) -> None:
        self.family = family
        self.model_config = model_config
        self.cfg = config
        self.run = ctx
        self.nets: dict[str, nn.Module] = {}

    # -- networks -----------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """Default: the family's generator ``G`` and critic ``D``, built in that order."""
        from facexpr.models import get_family

        family = get_family(self.family)
        if family.build_critic is None:
            raise NotImplementedError(f"{type(self).__name__} must declare its networks ({family.name} has no critic builder)")
        return {"G": family.build_generator(self.model_config), "D": family.build_critic(self.model_config)}

    def optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """Default: Adam for ``G`` and ``D`` with the options ``lr_g``, ``lr_d``, ``beta1``, ``beta2``."""
        c = self.cfg
        betas = (c.beta1, c.beta2)  # type: ignore[attr-defined]
        return {"G": adam(nets["G"].parameters(), c.lr_g, betas),  # type: ignore[attr-defined]
                "D": adam(nets["D"].parameters(), c.lr_d, betas)}  # type: ignore[attr-defined]

    def phases(self) -> tuple[Phase, ...]:
        raise NotImplementedError

    @property
    def iterations_per_step(self) -> int:
        """Iterations (batches) per step; ``--steps`` counts steps (generator updates)."""
        return max(p.every for p in self.phases())

    def bind(self, nets: dict[str, nn.Module]) -> None:
        """Give the recipe the run's networks (trainable ones and EMA copies) by name."""
        self.nets = nets

    def ema_beta(self, step: int) -> float:
        """EMA decay after ``step`` steps; only recipes with ``ema`` copies are asked."""
        beta = float(getattr(self.cfg, "ema_beta", 0.999))
        return min(beta, (1 + step) / (10 + step))

    # -- one phase ----------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        raise NotImplementedError

    # -- data ---------------------------------------------------------------------------------
    def training_rows(self, prepared: PreparedDataset, rows: np.ndarray) -> np.ndarray:
        """The rows of the training split this recipe can use (e.g. only labelled ones)."""
        return rows

    def dataset(self, prepared: PreparedDataset, rows: np.ndarray, size: int, seed: int, flip: bool) -> Dataset:
        raise NotImplementedError

    # -- validation ---------------------------------------------------------------------------
    def sample_set(self, prepared: PreparedDataset, rows: np.ndarray, size: int, n: int, device: torch.device) -> Any:
        raise NotImplementedError

    def report(self, samples: Any, autocast: Callable[[], Any]) -> tuple[np.ndarray, dict[str, float]]:
        """The sample grid (uint8 HxWx3) and validation numbers on the fixed sample faces."""
        raise NotImplementedError
