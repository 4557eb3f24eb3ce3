"""Per-family training recipes: what one critic step and one generator step compute.

A recipe is a small object with one method per phase (the stylegan3 way). It computes the loss
of that phase and a dict of detached metric tensors; the generic loop in :mod:`.loop` owns
everything else (autocast, zeroing, backward, gradient averaging across ranks, clipping, the
optimiser step, EMA). There is no ``set_input(); forward(); optimize()`` coupling: each method
takes the batch it works on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from facexpr import losses
from facexpr.training.recipe_base import Batch, Metrics, WGANAURecipe
from facexpr.training.recipe_dftnet import DFTNetRecipe, render_flow_grid
from facexpr.training.reporting import render_grid

__all__ = ["Batch", "Metrics", "GANimationRecipe", "DFTNetRecipe", "RECIPES", "SAMPLE_GRIDS"]


class GANimationRecipe(WGANAURecipe):
    """WGAN-GP + AU regression + cycle + attention regularisers (Pumarola et al. 2018).

    Serves both ``ganimation`` and ``ganimation-adain``: they differ only inside G.
    """

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """Generator loss: fool the critic, hit the target AUs, come back to the source."""
        out, back, adv, au, cyc = self.translate_and_cycle(batch)
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
