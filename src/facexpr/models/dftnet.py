"""DFT-Net: a flow + texture generator that edits expressions by moving pixels first.

Expression edits are mostly geometry (mouth corners rise, eyelids close); a GANimation-style
generator has to *repaint* that motion with its colour image, which blurs skin, eyes and hair and
ties the result to the model's resolution. DFT-Net (seed 001) disentangles the two: one shared
encoder over the source image and the tiled target AU maps, then

* a **flow decoder** predicting an appearance-flow field (where each output pixel samples the
  source) and an attention mask, at half resolution and bilinearly upsampled (motion is
  smooth; this also keeps it as cheap as GANimation's decoder), and
* a **texture decoder** with U-Net skip connections from the encoder, predicting a texture
  image that holds what warping cannot produce: wrinkles, creases and regions hidden in the
  source such as the mouth interior.

The source is warped by differentiable bilinear sampling and the output is
``result = A * warped + (1 - A) * texture`` (project convention: ``A = 1`` keeps the warped
source pixel), i.e. the paper's ``(1 - A) T + A W(I_src)``.

Flow parameterisation (the contract with :func:`facexpr.pipeline.editor.warp_with_flow`):
``flow`` is ``(B, 2, H, W)`` holding **absolute** sampling positions in normalised ``[-1, 1]``
grid coordinates, channel 0 = x, channel 1 = y, in the ``grid_sample(align_corners=False)``
convention (pixel centres at ``(2 i + 1) / W - 1``). It is built as the identity grid plus a
predicted offset bounded by ``flow_range`` through a tanh. Because positions are
resolution-free, the editor upsamples them and samples the full-resolution photo crop, so only
the texture-attended pixels come from the low-resolution decoder.

Initialisation makes an untrained model (nearly) the identity: the flow head starts at zero
(offset 0, so ``warped == source`` exactly) and the attention head's bias starts at
``logit(ATTENTION_INIT)`` so the warped source dominates from the first step. This gives the
GAN a sane starting point and makes a fresh model folder safe to push through the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facexpr.models.base import GeneratorOutput
from facexpr.models.layers import ConvNormAct, PatchCritic, ResidualBlock, check_image_size, init_weights

#: Attention (share of the warped source) of a freshly initialised generator.
ATTENTION_INIT = 0.95


@dataclass
class DFTNetConfig:
    """Architecture of a DFT-Net generator and critic.

    ``width`` is the channel count after the first conv (doubled by each of the ``downs``
    stride-2 stages); ``res_blocks`` residual blocks form the bottleneck shared by both decoders.
    ``flow_range`` bounds the predicted offset in normalised units (0.25 = an eighth of the crop
    side, more than any expression moves a feature in an aligned crop). The loss weights are
    the recipe's (``facexpr.training.recipe_dftnet.DFTNetTrainConfig``).
    """

    image_size: int = 128
    num_aus: int = 17
    width: int = 64
    downs: int = 2
    res_blocks: int = 3
    flow_range: float = 0.25
    critic_width: int = 64
    critic_max_width: int = 2048


# "paper": GANimation's widths (64, two downs) with a 3-block bottleneck shared by the two
# decoders; the paper reports DFT-Net faster than GANimation (7.32 vs 12.11 ms on a 1080 Ti),
# which a shared, shorter bottleneck reproduces. "small" trains at usable speed on a CPU at
# 128 px; "tiny" exists for tests and smoke runs.
PRESETS: dict[str, dict[str, int]] = {
    "paper": {},
    "small": {"width": 32, "res_blocks": 2, "critic_width": 32, "critic_max_width": 512},
    "tiny": {"width": 8, "res_blocks": 1, "critic_width": 8, "critic_max_width": 64},
}


def _check(config: DFTNetConfig) -> None:
    check_image_size(config.image_size, config.downs)
    if min(config.width, config.res_blocks + 1, config.num_aus, config.downs) < 1:
        raise ValueError(f"invalid DFT-Net config {config} (width, num_aus, downs must be >= 1)")
    if not 0.0 < config.flow_range <= 2.0:
        raise ValueError(f"flow_range must be in (0, 2], got {config.flow_range}")


def _resize_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """2x bilinear upsampling then a 3x3 conv: an upsampling layer without the checkerboard
    pattern of strided transposed convolutions (Odena et al. 2016)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        ConvNormAct(in_ch, out_ch, 3, 1, 1),
    )


def identity_grid(height: int, width: int, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """The flow that samples every pixel at its own centre: ``(1, 2, H, W)``, x then y,
    ``grid_sample(align_corners=False)`` coordinates."""
    xs = (torch.arange(width, device=device, dtype=dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=device, dtype=dtype) * 2 + 1) / height - 1
    gx = xs.view(1, 1, 1, width).expand(1, 1, height, width)
    gy = ys.view(1, 1, height, 1).expand(1, 1, height, width)
    return torch.cat([gx, gy], dim=1)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Bilinearly sample ``image`` (B,C,H,W) at the absolute positions ``flow`` (B,2,h,w).

    Border padding repeats edge pixels instead of pulling in black, matching the editor's
    ``cv2.remap(..., BORDER_REPLICATE)``. ``flow`` may have another size than ``image``: that is
    how a low-resolution flow warps a high-resolution crop.
    """
    grid = flow.permute(0, 2, 3, 1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


class DFTNetGenerator(nn.Module):
    """Shared encoder (image + tiled AU maps) -> flow decoder (flow, attention) and texture
    decoder (with skips) -> ``A * warp(source, flow) + (1 - A) * texture``.

    ``forward(image (B,3,H,W) in [-1,1], cond (B,num_aus) = aus/5) -> GeneratorOutput`` with
    ``result, attention, flow, warped, texture`` and ``colour = texture`` (the image the mask
    blends in, so consumers written for GANimation's fields keep working); the flow offset is
    in ``extras["offset"]`` for the smoothness loss.
    """

    family = "dftnet"

    def __init__(self, config: DFTNetConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        w, d = config.width, config.downs
        self.stem = ConvNormAct(3 + config.num_aus, w, 7, 1, 3)
        self.downs = nn.ModuleList(ConvNormAct(w * 2**i, w * 2 ** (i + 1), 4, 2, 1) for i in range(d))
        deep = w * 2**d
        self.bottleneck = nn.Sequential(*[ResidualBlock(deep) for _ in range(config.res_blocks)])

        # Flow decoder: no skips, so the deformation is driven by the global code (what to move
        # where) and cannot copy source edges into the flow. It works at half resolution with
        # resize-convolutions, and its outputs are upsampled bilinearly: facial motion is smooth,
        # and a transposed-conv decoder's checkerboard becomes a pixel shuffle once it is a flow.
        self.flow_decoder = nn.Sequential(
            *[_resize_conv(w * 2 ** (d - i), w * 2 ** (d - i - 1)) for i in range(d - 1)]
        )
        self.flow_head = nn.Conv2d(2 * w, 2, 7, 1, 3)
        self.attention_head = nn.Conv2d(2 * w, 1, 7, 1, 3)

        # Texture decoder: U-Net skips give it the source's high-frequency detail, which it needs
        # to paint plausible wrinkles and teeth in place rather than blobs.
        ups = []
        in_ch = deep
        for i in range(d):
            out_ch = w * 2 ** (d - i - 1)
            ups.append(ConvNormAct(in_ch, out_ch, 4, 2, 1, transpose=True))
            in_ch = out_ch * 2  # after concatenating the encoder feature of that scale
        self.texture_ups = nn.ModuleList(ups)
        self.texture_head = nn.Sequential(nn.Conv2d(in_ch, 3, 7, 1, 3, bias=False), nn.Tanh())

        init_weights(self)
        nn.init.zeros_(self.flow_head.weight)
        nn.init.zeros_(self.flow_head.bias)
        nn.init.constant_(self.attention_head.bias, math.log(ATTENTION_INIT / (1 - ATTENTION_INIT)))

    def forward(self, image: Tensor, cond: Tensor) -> GeneratorOutput:
        b, _, h, w = image.shape
        maps = cond.to(image.dtype).view(b, -1, 1, 1).expand(b, cond.shape[1], h, w)
        skips = [self.stem(torch.cat([image, maps], dim=1))]
        for down in self.downs:
            skips.append(down(skips[-1]))
        code = self.bottleneck(skips[-1])

        f = self.flow_decoder(code)
        raw = F.interpolate(torch.cat([self.flow_head(f), self.attention_head(f)], dim=1), size=(h, w),
                            mode="bilinear", align_corners=False)
        offset = self.config.flow_range * torch.tanh(raw[:, :2])
        attention = torch.sigmoid(raw[:, 2:])
        flow = identity_grid(h, w, image.device, offset.dtype) + offset
        warped = warp(image, flow)

        t = code
        for i, up in enumerate(self.texture_ups):
            t = torch.cat([up(t), skips[-2 - i]], dim=1)
        texture = self.texture_head(t)

        result = attention * warped + (1 - attention) * texture
        return GeneratorOutput(
            result=result,
            attention=attention,
            colour=texture,
            flow=flow,
            warped=warped,
            texture=texture,
            extras={"offset": offset},
        )


def build_critic(config: DFTNetConfig) -> PatchCritic:
    """GANimation's critic: PatchGAN real/fake scores plus an AU-regression head."""
    critic = PatchCritic(config.image_size, config.num_aus, config.critic_width, config.critic_max_width)
    init_weights(critic)
    return critic
