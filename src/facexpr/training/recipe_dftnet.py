"""Training recipe and sample grid of the ``dftnet`` family (DFT-Net, seed 001).

The critic phase is GANimation's (WGAN-GP PatchGAN critic with an AU-regression head trained on
real images); the generator phase adds the two DFT-Net regularisers to the adversarial, AU and
cycle terms:

* L1 on the texture share ``1 - A`` (``lambda_attention_l1``): the warp is sharp at any
  resolution and the texture is not, so texture should be used only where warping cannot
  explain the target (mouth interior, wrinkles). Without it nothing stops the texture decoder
  from taking over the face, which would make the model a blurrier GANimation;
* L1 total variation of the flow *offset* in pixels (``lambda_flow_tv``), summed over each
  image's pixels and averaged over the batch. The offset, not the absolute flow, is
  regularised: the identity grid has a constant non-zero gradient, and an L1 penalty on it
  would push the warp to shrink the face.

Both regularisers apply to the forward and to the cycle translation, as GANimation's attention
regulariser does. All weights are this recipe's options (:class:`DFTNetTrainConfig`): the three
DFT-Net ones and GANimation's gradient penalty, AU regression and cycle weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from facexpr import losses
from facexpr.models import au_condition
from facexpr.training.recipe_base import (
    Batch,
    Metrics,
    WGANAUConfig,
    WGANAURecipe,
    identity_term,
)
from facexpr.training.reporting import to_uint8


def texture_share_loss(attention: Tensor) -> Tensor:
    """Mean L1 of ``1 - A``: how much of the image comes from the texture decoder.

    ``A`` is in [0, 1], so this is the L1 norm of the texture mask per pixel. Not in
    :mod:`facexpr.losses` because GANimation's :func:`~facexpr.losses.attention_loss` regularises
    the opposite share (it pushes ``A`` down so its colour image is used).
    """
    return (1.0 - attention.float()).mean()


def flow_smoothness_loss(offset: Tensor) -> Tensor:
    """L1 total variation of the flow offset (B,2,H,W) measured in pixels of the crop, summed
    over each image's pixels and averaged over the batch.

    Pixels rather than normalised units: a 1 px jump between neighbours is the same visible
    tear at any crop size, and in normalised units (1.0 = half the crop) the paper's weight of
    1e-4 would be too weak to stop a pixel-shuffling flow.
    """
    h, w = offset.shape[-2:]
    scale = offset.new_tensor([w / 2.0, h / 2.0]).view(1, 2, 1, 1)
    return losses.total_variation(offset * scale, squared=False).mean()


@dataclass
class DFTNetTrainConfig(WGANAUConfig):
    """GANimation's options plus DFT-Net's three loss weights (seed 001's values):

    * ``lambda_adv``: adversarial (WGAN) term of the generator (paper: 1);
    * ``lambda_attention_l1``: L1 on the *texture share* ``1 - A`` (paper: 1), so the warp does
      the work and the texture decoder only fills what warping cannot explain;
    * ``lambda_flow_tv``: L1 total variation of the flow offset in pixels, summed over the pixels
      of each image (paper: 1e-4), so the warp stays a smooth deformation, not a pixel shuffle.
    """

    lambda_adv: float = 1.0
    lambda_attention_l1: float = 1.0
    lambda_flow_tv: float = 1e-4


class DFTNetRecipe(WGANAURecipe):
    """WGAN-GP + AU regression + cycle + texture-share L1 + flow TV (DFT-Net).

    AU-regression weights are ``lambda / batch`` on MSE of ``aus / 5``, exactly as the GANimation
    recipe (which reproduces the reference code), so the two families' ``lambda_cond`` mean the
    same thing and their runs can be compared.
    """

    families = ("dftnet",)
    Config = DFTNetTrainConfig
    cfg: DFTNetTrainConfig

    def generator_step(self, batch: Batch) -> tuple[Tensor, Metrics]:
        """Fool the critic, hit the target AUs, come back to the source; warp rather than paint,
        and warp smoothly."""
        m = self.cfg
        out, back, adv, au, cyc = self.translate_and_cycle(batch)
        tex = texture_share_loss(out.attention) + texture_share_loss(back.attention)
        tv = flow_smoothness_loss(out.extras["offset"]) + flow_smoothness_loss(back.extras["offset"])
        extra: Metrics = {}
        total = (m.lambda_adv * adv + self.au_weight_g * au + m.lambda_cycle * cyc
                 + m.lambda_attention_l1 * tex + m.lambda_flow_tv * tv
                 + identity_term(m.id_weight, out.result, batch.image, extra))
        offset = out.extras["offset"].detach().float()
        size = batch.image.shape[-1]
        return total, {
            **extra,
            "g/total": total.detach(),
            "g/adv": adv.detach(),
            "g/au_mse": au.detach(),
            "g/cycle_l1": cyc.detach(),
            "g/texture_share": (1.0 - out.attention.detach().float()).mean(),
            "g/flow_tv": tv.detach(),
            # mean displacement in pixels of the training crop (offset 2.0 = the crop's side)
            "g/flow_px": offset.norm(dim=1).mean() * size / 2,
            "g/attention_mean": out.attention.detach().float().mean(),
        }


@torch.no_grad()
def render_flow_grid(
    generator: nn.Module,
    images: Tensor,
    targets: Sequence[tuple[str, Tensor]],
    autocast: Callable[[], Any] | None = None,
) -> NDArray[np.uint8]:
    """Sample grid of a flow family. Rows: faces. Columns: source | (warped | texture |
    attention | result) per named target (``(name, aus (B,17) on the 0..5 scale)``).

    Attention is white where the warped source is kept, so what the texture decoder paints
    shows dark; comparing *warped* with *source* shows what the flow moved.
    """
    from contextlib import nullcontext

    from PIL import Image, ImageDraw

    ctx = autocast or nullcontext
    columns = [to_uint8(images)]
    for _, aus in targets:
        with ctx():
            out = generator(images, au_condition(aus))
        columns += [to_uint8(out.warped), to_uint8(out.texture), to_uint8(out.attention * 2 - 1),
                    to_uint8(out.result)]
    s = images.shape[-1]
    grid = np.concatenate([np.concatenate(list(col), axis=0) for col in columns], axis=1)
    header = Image.new("RGB", (grid.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    draw.text((2, 1), "source", fill=(0, 0, 0))
    for i, (name, _) in enumerate(targets):
        x0 = s * (1 + 4 * i)
        draw.text((x0 + 2, 1), f"{name}: warped | texture | A | result", fill=(0, 0, 0))
        draw.line([(x0, 0), (x0, 14)], fill=(128, 128, 128))
    return np.concatenate([np.asarray(header, dtype=np.uint8), grid], axis=0)


DFTNetRecipe.render_grid = staticmethod(render_flow_grid)  # defined above the renderer it names
