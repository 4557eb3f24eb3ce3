"""GANimation (Pumarola et al., ECCV 2018) and its AdaIN-conditioned variant.

``ganimation``: the target AU vector (``aus / 5``) is tiled into constant maps and concatenated
to the RGB image; conv 7x7 -> two stride-2 downs -> residual blocks -> two learned ups -> two
heads, a colour image (tanh, 3 channels) and an attention mask (sigmoid, 1 channel). The output
follows the project convention ``result = A * source + (1 - A) * colour`` (A = 1 keeps the
source pixel), which is also the paper's ``I = (1 - A) C + A I_src``.

``ganimation-adain``: the image alone goes through the encoder; a domain-embedding MLP maps the
target vector to a fixed-size code that drives AdaIN layers in the residual blocks. Because the
label never becomes image channels, its size is free (17 AUs, 52 blendshapes, one-hot emotions).

Both share :class:`~facexpr.models.layers.PatchCritic` (real/fake patches + AU regression).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facexpr.models.base import GeneratorOutput
from facexpr.models.layers import (
    AdaINResidualBlock,
    PatchCritic,
    ResidualBlock,
    check_image_size,
    conv_decoder,
    conv_encoder,
    init_weights,
)


@dataclass
class GANimationConfig:
    """Architecture of a GANimation generator and critic (defaults = the paper at 128 px).

    ``width`` is the channel count after the first conv (doubled by each down); ``downs`` is the
    number of stride-2 stages (image size must be divisible by ``2**downs``).
    ``upsample="nearest"`` replaces the paper's 4x4 stride-2 transposed convs by nearest-neighbour
    2x resizing followed by a 3x3 conv, which avoids the checkerboard artefacts transposed convs
    produce early in training (Odena et al. 2016) at the same cost.
    """

    image_size: int = 128
    num_aus: int = 17
    width: int = 64
    downs: int = 2
    res_blocks: int = 6
    critic_width: int = 64
    critic_max_width: int = 2048
    upsample: str = "transpose"  # "transpose" (paper) or "nearest" (resize + conv: no checkerboard)


@dataclass
class GANimationAdaINConfig(GANimationConfig):
    """GANimation with AdaIN conditioning; ``embed_dim`` is the domain-embedding size."""

    embed_dim: int = 64


# Named architectures: "paper" reproduces Pumarola et al.; "small" trains at usable speed on a
# CPU at 128 px (about 8x fewer generator FLOPs); "tiny" exists for tests and smoke runs.
PRESETS: dict[str, dict[str, int]] = {
    "paper": {},
    "small": {"width": 32, "res_blocks": 4, "critic_width": 32, "critic_max_width": 512},
    "tiny": {"width": 8, "res_blocks": 1, "critic_width": 8, "critic_max_width": 64},
}


def _check(config: GANimationConfig) -> None:
    check_image_size(config.image_size, config.downs)
    if min(config.width, config.res_blocks + 1, config.num_aus, config.downs + 1) < 1:
        raise ValueError(f"invalid GANimation config {config}")
    if config.upsample not in ("transpose", "nearest"):
        raise ValueError(f"upsample must be 'transpose' or 'nearest', got {config.upsample!r}")


def _compose(source: Tensor, colour: Tensor, attention: Tensor) -> GeneratorOutput:
    result = attention * source + (1 - attention) * colour
    return GeneratorOutput(result=result, attention=attention, colour=colour)


class _Heads(nn.Module):
    """Colour (tanh) and attention (sigmoid) 7x7 heads of the reference implementation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.colour = nn.Sequential(nn.Conv2d(channels, 3, 7, 1, 3, bias=False), nn.Tanh())
        self.attention = nn.Sequential(nn.Conv2d(channels, 1, 7, 1, 3, bias=False), nn.Sigmoid())

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.colour(h), self.attention(h)


class GANimationGenerator(nn.Module):
    """AU-conditioned generator with the condition tiled and concatenated to the image.

    ``forward(image (B,3,H,W) in [-1,1], cond (B,num_aus) = aus/5) -> GeneratorOutput``.
    """

    family = "ganimation"

    def __init__(self, config: GANimationConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        self.encoder, ch = conv_encoder(3 + config.num_aus, config.width, config.downs)
        self.bottleneck = nn.Sequential(*[ResidualBlock(ch) for _ in range(config.res_blocks)])
        self.decoder, ch = conv_decoder(ch, config.downs, config.upsample)
        self.heads = _Heads(ch)
        init_weights(self)

    def forward(self, image: Tensor, cond: Tensor) -> GeneratorOutput:
        b, _, h, w = image.shape
        maps = cond.to(image.dtype).view(b, -1, 1, 1).expand(b, cond.shape[1], h, w)
        x = self.decoder(self.bottleneck(self.encoder(torch.cat([image, maps], dim=1))))
        colour, attention = self.heads(x)
        return _compose(image, colour, attention)


class GANimationAdaINGenerator(nn.Module):
    """GANimation whose residual blocks are modulated by AdaIN from an embedded label vector.

    The embedding is a small MLP (FC -> ReLU -> FC) so even a one-hot label gets a dense code.
    """

    family = "ganimation-adain"

    def __init__(self, config: GANimationAdaINConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        self.embed = nn.Sequential(
            nn.Linear(config.num_aus, config.embed_dim),
            nn.ReLU(inplace=True),
            nn.Linear(config.embed_dim, config.embed_dim),
        )
        self.encoder, ch = conv_encoder(3, config.width, config.downs)
        self.blocks = nn.ModuleList(
            [AdaINResidualBlock(ch, config.embed_dim) for _ in range(config.res_blocks)]
        )
        self.decoder, ch = conv_decoder(ch, config.downs, config.upsample)
        self.heads = _Heads(ch)
        init_weights(self)
        # The embedding needs a larger init than N(0, 0.02): with two tiny layers in series the
        # label would barely reach the AdaIN layers at the start of training.
        for layer in self.embed:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")

    def forward(self, image: Tensor, cond: Tensor) -> GeneratorOutput:
        style = self.embed(cond.to(image.dtype))
        x = self.encoder(image)
        for block in self.blocks:
            x = block(x, style)
        colour, attention = self.heads(self.decoder(x))
        return _compose(image, colour, attention)


def build_critic(config: GANimationConfig) -> PatchCritic:
    critic = PatchCritic(config.image_size, config.num_aus, config.critic_width, config.critic_max_width)
    init_weights(critic)
    return critic
