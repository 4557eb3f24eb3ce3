"""CycleGAN (Zhu et al., ICCV 2017) between two expressions; seed 002's best system.

Two translators, one per direction between the expression domains ``domain_a`` and ``domain_b``
(default neutral <-> happy), each the paper's ResNet generator (appendix 7.2)::

    c7s1-64, d128, d256, R256 x res_blocks, u128, u64, c7s1-3, tanh

``c7s1-k``: reflection pad 3, 7x7 conv, InstanceNorm, ReLU; ``dk``: 3x3 stride-2 conv,
InstanceNorm, ReLU; ``Rk``: two reflection-padded 3x3 convs with InstanceNorm and a skip;
``uk``: 3x3 stride-1/2 (transposed) conv, InstanceNorm, ReLU. InstanceNorm without affine
parameters, as in the authors' reference code; a conv followed by InstanceNorm has no bias (the
reference code gives it one, but the norm subtracts any per-channel constant, so it never changes
an output: its gradient is rounding noise, which Adam would turn into steps of size ``lr``).
9 residual blocks at 256 px, 6 at 128 px.

Critics: the 70x70 PatchGAN (C64-C128-C256-C512 of 4x4 convs, stride 2 except the last two,
InstanceNorm from C128 on, LeakyReLU 0.2, no norm on C64, then a 4x4 conv to one channel).

The exported model is :class:`CycleGANGenerator`, holding both translators as components
``G_AB`` (a -> b) and ``G_BA`` (b -> a). As every label-conditioned family it takes a one-hot
row over ``(domain_a, domain_b)`` and routes each face through the translator that maps *into*
the requested domain: target b -> ``G_AB``, target a -> ``G_BA``. It paints the whole crop; the
editor keeps the photo's pixels where the output reproduces the input
(``pipeline.editor.change_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facexpr.errors import ConfigError
from facexpr.expression import resolve_emotion
from facexpr.models.base import Condition, GeneratorOutput
from facexpr.models.layers import init_weights


@dataclass
class CycleGANConfig:
    """Architecture (defaults = the CycleGAN paper at 256 px: 64 filters, 9 residual blocks, a
    70x70 PatchGAN). ``domain_a`` / ``domain_b``: the two expressions translated between."""

    image_size: int = 256
    domain_a: str = "neutral"
    domain_b: str = "happy"
    width: int = 64  # ngf: filters of c7s1 (d and u stages double / halve it)
    res_blocks: int = 9  # 9 at 256 px, 6 at 128 px in the paper
    critic_width: int = 64  # ndf
    critic_layers: int = 3  # stride-2 layers of the PatchGAN: 3 = the 70x70 receptive field

    @property
    def label_names(self) -> tuple[str, str]:
        return (self.domain_a, self.domain_b)


PRESETS: dict[str, dict[str, int]] = {
    "paper": {},
    "small": {"width": 32, "res_blocks": 6, "critic_width": 32},
    "tiny": {"width": 8, "res_blocks": 1, "critic_width": 8},
}


def condition(config: CycleGANConfig) -> Condition:
    return Condition("labels", config.label_names, False)


def check_config(config: CycleGANConfig) -> None:
    for field in ("domain_a", "domain_b"):
        value = getattr(config, field)
        try:
            name = resolve_emotion(value)
        except ConfigError as exc:
            raise ValueError(f"{field}: {exc}") from None
        if name != value:
            raise ValueError(f"{field}={value!r}: write the expression's canonical name {name!r}")
    if config.domain_a == config.domain_b:
        raise ValueError(f"domain_a and domain_b must be two different expressions, both are {config.domain_a!r}")
    if min(config.width, config.critic_width, config.res_blocks + 1, config.critic_layers) < 1:
        raise ValueError(f"invalid CycleGAN config {config}")
    # two stride-2 stages in G; the PatchGAN needs a map of at least 2x2 after its last conv
    smallest = 2 ** config.critic_layers * 3
    if config.image_size % 4 or config.image_size < max(32, smallest):
        raise ValueError(f"image_size {config.image_size} must be a multiple of 4 and at least "
                         f"{max(32, smallest)} for a CycleGAN with critic_layers={config.critic_layers}")


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``Rk``: reflection pad, 3x3 conv, IN, ReLU, reflection pad, 3x3 conv, IN; plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), _norm(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), _norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """One direction: ``forward(image (B,3,H,W) in [-1,1]) -> (B,3,H,W)`` in [-1, 1]."""

    def __init__(self, config: CycleGANConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        w = config.width
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, w, 7, bias=False), _norm(w), nn.ReLU(True)]
        ch = w
        for _ in range(2):  # d128, d256
            layers += [nn.Conv2d(ch, ch * 2, 3, 2, 1, bias=False), _norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(ch) for _ in range(config.res_blocks)]
        for _ in range(2):  # u128, u64
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1, bias=False),
                       _norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


class PatchGANCritic(nn.Module):
    """The 70x70 PatchGAN: ``forward(image) -> (B,1,h,w)`` realism logits, one per patch."""

    def __init__(self, config: CycleGANConfig, in_channels: int = 3) -> None:
        super().__init__()
        w, n = config.critic_width, config.critic_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, w, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for i in range(1, n + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 2 if i < n else 1
            layers += [nn.Conv2d(w * prev, w * mult, 4, stride, 1, bias=False), _norm(w * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(w * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


class CycleGANGenerator(nn.Module):
    """Both translators as one label-conditioned generator (what a model folder loads).

    ``forward(image (B,3,H,W) in [-1,1], labels (B,2) one-hot over (domain_a, domain_b))``: faces
    whose target is ``domain_b`` go through ``G_AB``, the others through ``G_BA``. InstanceNorm
    works per image, so routing a sub-batch gives each face exactly what a batch of one would.
    """

    family = "cyclegan"

    def __init__(self, config: CycleGANConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        self.G_AB = ResnetGenerator(config)
        self.G_BA = ResnetGenerator(config)

    def forward(self, image: Tensor, cond: Tensor) -> GeneratorOutput:
        if cond.ndim != 2 or cond.shape[1] != 2:
            raise ValueError(f"a CycleGAN takes one-hot rows over (domain_a, domain_b), shape (B, 2); got "
                             f"{tuple(cond.shape)}")
        to_b = cond[:, 1] > cond[:, 0]
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():  # no data-dependent shapes in a graph
            return GeneratorOutput(result=torch.where(to_b.view(-1, 1, 1, 1), self.G_AB(image), self.G_BA(image)))
        result = torch.empty_like(image)
        if bool(to_b.any()):
            result[to_b] = self.G_AB(image[to_b]).to(result.dtype)
        if not bool(to_b.all()):
            result[~to_b] = self.G_BA(image[~to_b]).to(result.dtype)
        return GeneratorOutput(result=result)


def build_critic(config: CycleGANConfig) -> PatchGANCritic:
    return PatchGANCritic(config)
