"""Training recipe of ``mouth``: the geometry model's mouth-interior inpainter.

The network (:class:`~facexpr.models.mouth.MouthInpainter`) learns to paint the inside of the
lips of real open mouths from their surroundings; the data, holes, losses and validation figures
are in :mod:`facexpr.training.mouth` (see its docstring for why each is what it is). The recipe
only declares them to the generic loop:

* networks ``G`` (the inpainter) and ``D`` (a PatchGAN critic on (image, hole)), built in that
  order after the run's seed; ``G_ema`` follows ``G`` and is what is exported;
* phases: ``D`` then ``G`` on every batch (one critic update per inpainter update);
* ``D``: least squares, real crops toward 1 and filled crops toward 0, patch scores counted
  only where a patch touches the hole; ``G``: ``hole_weight``-weighted L1 of the raw output
  against the real crop + ``adv_weight`` x least squares toward 1;
* data: the training rows whose lips are open at least ``min_opening``
  (:func:`~facexpr.training.mouth.open_mouth_rows`, on the landmarks cached in each prepared
  folder), cut into mouth crops at the model's ``size`` (``facexpr train --size`` sets it: the
  mouth crop is the network's input, not the face crop);
* report: a grid of (hole | output | real) triplets, and the validation hole L1 of ``G_ema`` on
  up to ``max_val`` validation mouths next to the mean-colour fills it must beat.

Defaults are those the shipped ``mouth-v1`` was trained with: Adam 2e-4, betas (0.5, 0.999),
batch 32, no learning-rate decay, EMA 0.999 with the loop's (1+s)/(10+s) warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from facexpr.data.dataset import PreparedDataset
from facexpr.errors import DatasetError
from facexpr.models.mouth import MouthConfig, MouthCritic, MouthInpainter
from facexpr.training import mouth as M
from facexpr.training.recipe import Batch, Metrics, Phase, Recipe, RecipeConfig, StepContext, adam


@dataclass
class MouthTrainConfig(RecipeConfig):
    """Options (``--set name=value``); see the module docstring."""

    lr: float = 2e-4  # Adam, network and critic
    beta1: float = 0.5
    beta2: float = 0.999
    min_opening: float = 0.03  # lip opening (inner-lip area / eye distance^2) a training mouth needs
    hole_weight: float = 6.0  # L1 weight inside the hole relative to outside it
    adv_weight: float = 0.01  # adversarial term against the L1 term
    ema_beta: float = 0.999
    max_val: int = 1000  # validation mouths scored at every report

    def problems(self) -> list[str]:
        out = super().problems()
        checks = [(self.min_opening >= 0, "min_opening must be >= 0"),
                  (self.hole_weight >= 1, "hole_weight must be >= 1"),
                  (self.adv_weight >= 0, "adv_weight must be >= 0"),
                  (self.max_val >= 1, "max_val must be >= 1")]
        return out + [message for ok, message in checks if not ok]


@dataclass
class MouthSamples:
    """The fixed display mouths (on the device) and the validation mouths with the baseline colour."""

    images: Tensor
    holes: Tensor
    val: M.MouthSet
    fill_colour: np.ndarray | None


class MouthRecipe(Recipe):
    families = ("mouth",)
    Config = MouthTrainConfig
    ema = {"G_ema": "G"}
    exports = {"generator": "G_ema"}
    run_defaults = {"batch": 32, "decay_fraction": 0.0, "log_every": 25, "sample_every": 250,
                    "checkpoint_every": 500}
    cfg: MouthTrainConfig
    model_config: MouthConfig

    def __init__(self, family: str, model_config: MouthConfig, config: MouthTrainConfig, ctx: StepContext) -> None:
        super().__init__(family, model_config, config, ctx)
        self._train_rows: np.ndarray | None = None

    # -- declarations ------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"G": MouthInpainter(self.model_config), "D": MouthCritic(self.model_config)}

    def optimizers(self, nets: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        betas = (self.cfg.beta1, self.cfg.beta2)
        return {"G": adam(nets["G"].parameters(), self.cfg.lr, betas),
                "D": adam(nets["D"].parameters(), self.cfg.lr, betas)}

    def phases(self) -> tuple[Phase, ...]:
        return (Phase("D", "D"), Phase("G", "G", ema=("G_ema",)))

    # -- data --------------------------------------------------------------------------------
    @staticmethod
    def landmarks(prepared: PreparedDataset) -> np.ndarray:
        """The crops' landmarks, measured once per prepared folder and cached there."""
        from facexpr.data.landmarks import dataset_landmarks

        return dataset_landmarks(prepared, progress=True)

    def training_rows(self, prepared: PreparedDataset, rows: np.ndarray) -> np.ndarray:
        """Training rows whose mouth is open at least ``min_opening``."""
        kept = M.open_mouth_rows(self.landmarks(prepared), rows, self.cfg.min_opening)
        if len(kept) == 0:
            raise DatasetError(
                f"no open mouth (lip opening >= {self.cfg.min_opening}) among the {len(rows)} training crops; add "
                "data with smiles showing teeth or open jaws, or lower --set min_opening"
            )
        return kept

    def dataset(self, prepared: PreparedDataset, rows: np.ndarray, size: int, seed: int, flip: bool) -> Dataset:
        self._train_rows = np.asarray(rows, dtype=np.int64)
        return M.MouthCrops(prepared, rows, self.landmarks(prepared), self.model_config, seed, flip)

    # -- losses ------------------------------------------------------------------------------
    def loss(self, phase: str, batch: Batch, ctx: StepContext) -> tuple[Tensor, Metrics]:
        G, D = self.nets["G"], self.nets["D"]
        x, m = batch.image, batch.mask
        if phase == "D":
            with torch.no_grad():
                fake = G(x, m)
            d_real, d_fake = D(x, m).float(), D(fake, m).float()
            w = M.patch_weights(m, d_real)
            total = 0.5 * (((d_real - 1) ** 2 * w).sum() + (d_fake ** 2 * w).sum())
            return total, {"d/total": total.detach()}
        raw = G.generate(x, m).float()
        fake = m * raw + (1 - m) * x
        scores = D(fake, m).float()
        l1 = M.weighted_l1(raw, x, m, self.cfg.hole_weight)
        adv = ((scores - 1) ** 2 * M.patch_weights(m, scores)).sum()
        total = l1 + self.cfg.adv_weight * adv
        return total, {"g/total": total.detach(), "g/l1": l1.detach(), "g/adv": adv.detach()}

    # -- validation --------------------------------------------------------------------------
    def sample_set(self, prepared: PreparedDataset, rows: np.ndarray, size: int, n: int,
                   device: torch.device) -> MouthSamples:
        """Validation mouths (up to ``max_val``), the training mouths' mean hole colour (from up
        to 2000 of them, when the run's training rows are known) and a display set across the
        range of openings, with barely open mouths given a wide-open hole (the editor's case)."""
        landmarks = self.landmarks(prepared)
        val = M.build_mouth_set(prepared, rows, landmarks, self.model_config, self.cfg.min_opening,
                                limit=self.cfg.max_val)
        train_rows = self._train_rows if self._train_rows is not None else np.zeros(0, np.int64)
        train = M.build_mouth_set(prepared, train_rows, landmarks, self.model_config, self.cfg.min_opening,
                                  limit=2000)
        if len(train) + len(val) == 0:
            raise DatasetError("no open mouth to show or validate on; add data with open mouths")
        images, holes = M.display_set(train, val)
        fill = M.mean_hole_colour(train) if len(train) else None
        return MouthSamples(images.to(device), holes.to(device), val, fill)

    @torch.no_grad()
    def report(self, samples: MouthSamples, autocast: Callable[[], Any]) -> tuple[np.ndarray, dict[str, float]]:
        """Grid of (hole | output | real) triplets by ``G_ema``, and its validation hole L1
        (0..1 units) next to the mean-colour fills (float32: the network is small)."""
        G = self.nets["G_ema"]
        grid = M.sample_grid(G, samples.images, samples.holes)
        return grid, M.evaluate_mouths(G, samples.val, samples.fill_colour) if len(samples.val) else {}
