"""Per-family training recipes: what one critic step and one generator step compute.

A recipe is a small object with one method per phase (the stylegan3 way). It computes the loss
of that phase and a dict of detached metric tensors; the generic loop in :mod:`.loop` owns
everything else (autocast, zeroing, backward, gradient averaging across ranks, clipping, the
optimiser step, EMA). There is no ``set_input(); forward(); optimize()`` coupling: each method
takes the batch it works on.
"""

from __future__ import annotations

from collections.abc import Callable
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


class GANimationRecipe:
    """WGAN-GP + AU regression + cycle + attention regularisers (Pumarola et al. 2018).

    Serves both ``ganimation`` and ``ganimation-adain``: they differ only inside G.

    The AU-regression terms are ``lambda / batch * MSE(aus/5)`` on both sides, reproducing the
    reference implementation (which divides the mean squared error by the batch size, so its
    weight 4000 is effectively 160 at batch 25). ``batch`` is the configured global batch, a
    constant of the run, so the weighting does not change with the number of ranks.
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

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """Generator loss: fool the critic, hit the target AUs, come back to the source."""
        cond_real = au_condition(batch.aus)
        cond_target = au_condition(batch.target_aus)
        out = self.G(batch.image, cond_target)
        fake_scores, fake_aus = self.D(out.result)
        adv = losses.wgan_generator_loss(fake_scores)
        au = losses.au_regression_loss(fake_aus, cond_target)
        back = self.G(out.result, cond_real)
        cyc = losses.cycle_loss(back.result, batch.image)
        att = losses.attention_loss(
            out.attention, self.cfg.lambda_attention_mean, self.cfg.lambda_attention_tv
        ) + losses.attention_loss(back.attention, self.cfg.lambda_attention_mean, self.cfg.lambda_attention_tv)
        total = adv + self.au_weight_g * au + self.cfg.lambda_cycle * cyc + att
        return total, {
            "g/total": total.detach(),
            "g/adv": adv.detach(),
            "g/au_mse": au.detach(),
            "g/cycle_l1": cyc.detach(),
            "g/attention_reg": att.detach(),
            "g/attention_mean": out.attention.detach().float().mean(),
        }


from facexpr.training.recipe_dftnet import DFTNetRecipe, render_flow_grid  # noqa: E402 (needs Batch above)
from facexpr.training.reporting import render_grid  # noqa: E402

#: family name -> recipe class. Families without an entry cannot be trained yet.
RECIPES: dict[str, type] = {
    "ganimation": GANimationRecipe,
    "ganimation-adain": GANimationRecipe,
    "dftnet": DFTNetRecipe,
}

#: family name -> sample-grid renderer ``(G, images, [(name, aus)], autocast) -> uint8 HxWx3``;
#: families not listed use the attention/colour grid.
SAMPLE_GRIDS: dict[str, Callable[..., Any]] = {
    "dftnet": render_flow_grid,
}


def sample_grid_for(name: str) -> Callable[..., Any]:
    return SAMPLE_GRIDS.get(name, render_grid)


def recipe_for(name: str) -> type:
    from facexpr.errors import ConfigError

    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            f"model {name!r} has no training recipe yet; trainable: {', '.join(sorted(RECIPES))}"
        ) from None
