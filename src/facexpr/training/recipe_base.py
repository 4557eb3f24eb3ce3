"""What every WGAN-GP + AU-regression recipe shares: the batch record and the critic phase.

GANimation and DFT-Net train their critics identically (Wasserstein loss, gradient penalty, AU
regression on real images); only their generator phases differ. Kept in its own module so the
family recipes can import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from facexpr import losses
from facexpr.models import au_condition
from facexpr.training.config import TrainConfig

Metrics = dict[str, Tensor]


@dataclass
class Batch:
    """One batch on the training device; images in [-1, 1], AUs on the 0..5 scale."""

    image: Tensor
    aus: Tensor
    target_aus: Tensor

    @classmethod
    def from_items(cls, items: dict[str, Tensor], device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return cls(
            image=items["image"].to(device, non_blocking=nb),
            aus=items["aus"].to(device, non_blocking=nb),
            target_aus=items["target_aus"].to(device, non_blocking=nb),
        )



class WGANAURecipe:
    """Critic phase of the AU-conditioned WGAN-GP families.

    The AU-regression terms are ``lambda / batch * MSE(aus/5)`` on both sides, reproducing the
    reference GANimation implementation (which divides the mean squared error by the batch size,
    so its weight 4000 is effectively 160 at batch 25). ``batch`` is the configured global batch,
    a constant of the run, so the weighting does not change with the number of ranks.
    """

    def __init__(self, generator: nn.Module, critic: nn.Module, config: TrainConfig) -> None:
        self.G = generator
        self.D = critic
        self.cfg = config
        self.au_weight_g = config.lambda_cond / config.batch
        self.au_weight_d = config.lambda_cond_critic / config.batch

    def _patch_scores(self, image: Tensor) -> Tensor:
        return self.D(image)[0]

    def critic_step(self, batch: Batch, alpha: Tensor) -> tuple[Tensor, Metrics]:
        """Critic loss on real images vs. G's current translations (G is not updated)."""
        cond_real = au_condition(batch.aus)
        cond_target = au_condition(batch.target_aus)
        with torch.no_grad():
            fake = self.G(batch.image, cond_target).result
        real_scores, real_aus = self.D(batch.image)
        fake_scores, _ = self.D(fake)
        w = losses.wgan_critic_loss(real_scores, fake_scores)
        au = losses.au_regression_loss(real_aus, cond_real)
        gp = losses.gradient_penalty(self._patch_scores, batch.image, fake, alpha)
        total = w + self.au_weight_d * au + self.cfg.lambda_gp * gp
        return total, {
            "d/total": total.detach(),
            "d/wasserstein": (-w).detach(),  # estimate of the W distance: larger = easier to tell apart
            "d/au_mse": au.detach(),
            "d/gp": gp.detach(),
        }

    def translate_and_cycle(self, batch: Batch) -> tuple[Any, Any, Tensor, Tensor, Tensor]:
        """The generator-phase terms every family shares.

        Returns ``(out, back, adv, au, cycle)``: the translation to the target AUs, its
        translation back to the source AUs, the Wasserstein generator loss, the AU-regression
        loss on the translation and the L1 cycle loss against the input.
        """
        out = self.G(batch.image, au_condition(batch.target_aus))
        fake_scores, fake_aus = self.D(out.result)
        adv = losses.wgan_generator_loss(fake_scores)
        au = losses.au_regression_loss(fake_aus, au_condition(batch.target_aus))
        back = self.G(out.result, au_condition(batch.aus))
        cyc = losses.cycle_loss(back.result, batch.image)
        return out, back, adv, au, cyc
