"""StarGAN (Choi et al., CVPR 2018) on one-hot expressions; also the RGB network of seed 003.

Generator: the one-hot target label is tiled into constant maps and concatenated to the RGB
image; conv 7x7 -> two stride-2 downs -> residual blocks -> two learned ups -> conv 7x7 -> tanh.
It paints the whole crop (no attention map): the editor keeps the photo's own pixels wherever
the output reproduces the input (``pipeline.editor.change_attention``).

Critic: the PatchGAN of GANimation with its second head read as class logits (``D_cls``), as
StarGAN's discriminator has a real/fake patch head and a classification head on one trunk.

``stargan`` and ``stargan-depth`` share this architecture; the depth variant differs only in
training (its recipe adds the depth network and the depth critic), so an exported
``stargan-depth`` model is a StarGAN generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facexpr.models.base import EMOTION_LABELS, Condition, GeneratorOutput
from facexpr.models.layers import (
    PatchCritic,
    ResidualBlock,
    check_image_size,
    conv_decoder,
    conv_encoder,
    init_weights,
)


@dataclass
class StarGANConfig:
    """Architecture (defaults = the StarGAN paper at 128 px). ``labels`` are the expressions of
    the one-hot condition, comma-separated, in order."""

    image_size: int = 128
    labels: str = ",".join(EMOTION_LABELS)
    width: int = 64
    downs: int = 2
    res_blocks: int = 6
    critic_width: int = 64
    critic_max_width: int = 2048
    upsample: str = "transpose"

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.labels.split(",") if x.strip())


PRESETS: dict[str, dict[str, int]] = {
    "paper": {},
    "small": {"width": 32, "res_blocks": 4, "critic_width": 32, "critic_max_width": 512},
    "tiny": {"width": 8, "res_blocks": 1, "critic_width": 8, "critic_max_width": 64},
}


def condition(config: StarGANConfig) -> Condition:
    return Condition("labels", config.label_names, False)


def _check(config: StarGANConfig) -> None:
    check_image_size(config.image_size, config.downs)
    if len(config.label_names) < 2 or len(set(config.label_names)) != len(config.label_names):
        raise ValueError(f"labels must name at least two distinct expressions, got {config.labels!r}")
    if min(config.width, config.res_blocks + 1, config.downs + 1) < 1:
        raise ValueError(f"invalid StarGAN config {config}")
    if config.upsample not in ("transpose", "nearest"):
        raise ValueError(f"upsample must be 'transpose' or 'nearest', got {config.upsample!r}")


class StarGANGenerator(nn.Module):
    """``forward(image (B,3,H,W) in [-1,1], labels (B,L) one-hot) -> GeneratorOutput(result)``."""

    family = "stargan"

    def __init__(self, config: StarGANConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        n = len(config.label_names)
        self.encoder, ch = conv_encoder(3 + n, config.width, config.downs)
        self.bottleneck = nn.Sequential(*[ResidualBlock(ch) for _ in range(config.res_blocks)])
        self.decoder, ch = conv_decoder(ch, config.downs, config.upsample)
        self.head = nn.Sequential(nn.Conv2d(ch, 3, 7, 1, 3, bias=False), nn.Tanh())
        init_weights(self)

    def forward(self, image: Tensor, cond: Tensor) -> GeneratorOutput:
        b, _, h, w = image.shape
        maps = cond.to(image.dtype).view(b, -1, 1, 1).expand(b, cond.shape[1], h, w)
        x = self.decoder(self.bottleneck(self.encoder(torch.cat([image, maps], dim=1))))
        return GeneratorOutput(result=self.head(x))


class StarGANDepthGenerator(StarGANGenerator):
    """The same generator, registered as the ``stargan-depth`` family (trained with depth)."""

    family = "stargan-depth"


def build_critic(config: StarGANConfig, in_channels: int = 3) -> PatchCritic:
    """Patch realism head + class-logit head (``in_channels`` 1 or 3 for the depth critic)."""
    critic = PatchCritic(config.image_size, len(config.label_names), config.critic_width,
                         config.critic_max_width, in_channels)
    init_weights(critic)
    return critic
