"""Training recipe of ``ganimation`` and ``ganimation-adain`` (Pumarola et al. 2018).

WGAN-GP + AU regression + cycle + attention regularisers. Both families share it: they differ
only inside G. The critic phase, schedule, data and samples are the shared AU-conditioned ones
(:class:`~facexpr.training.recipe_base.WGANAURecipe`).
"""

from __future__ import annotations

from torch import Tensor

from facexpr import losses
from facexpr.training.recipe_base import Batch, Metrics, WGANAURecipe, identity_term


class GANimationRecipe(WGANAURecipe):
    families = ("ganimation", "ganimation-adain")

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """Generator loss: fool the critic, hit the target AUs, come back to the source."""
        out, back, adv, au, cyc = self.translate_and_cycle(batch)
        c = self.cfg
        att = losses.attention_loss(out.attention, c.lambda_attention_mean, c.lambda_attention_tv) \
            + losses.attention_loss(back.attention, c.lambda_attention_mean, c.lambda_attention_tv)
        extra: Metrics = {}
        total = adv + self.au_weight_g * au + c.lambda_cycle * cyc + att \
            + identity_term(c.id_weight, out.result, batch.image, extra)
        return total, {
            **extra,
            "g/total": total.detach(),
            "g/adv": adv.detach(),
            "g/au_mse": au.detach(),
            "g/cycle_l1": cyc.detach(),
            "g/attention_reg": att.detach(),
            "g/attention_mean": out.attention.detach().float().mean(),
        }
