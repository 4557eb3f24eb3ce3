"""U-Net conditional GAN for expression synthesis with identity preservation (seed 004).

Wang, Wang and Li, "U-Net Conditional GANs for Photo-Realistic and Identity-Preserving Facial
Expression Synthesis" (ACM TOMM 2019): a pix2pix generator (Isola et al. 2017) whose input is the
face and the target expression label; the U-Net's skip connections carry the input's detail (and
so its identity) to the output.

Generator (:class:`UNetGenerator`): the one-hot target label is tiled into constant maps and
concatenated to the RGB image (``condition_at`` ``input``), concatenated to the bottleneck
(``bottleneck``), or both (the default). ``downs`` stride-2 4x4 convolutions (the first without
normalisation, then InstanceNorm, LeakyReLU 0.2) halve the size down to the bottleneck (by default
as often as the size allows down to 2 px, pix2pix's 2x2 at 128 px: 6 levels at 128, 5 at 64), which
fuses the label with a 3x3 conv; ``downs`` learned 2x upsamplings (4x4 transposed convs, or
nearest + 3x3 conv) with InstanceNorm and ReLU climb back, each concatenating the encoder feature
of its size (the skip connections); the last one outputs RGB through tanh. It paints the whole
crop (no attention map): the editor keeps the photo's own pixels wherever the output reproduces
the input (``pipeline.editor.change_attention``). pix2pix's dropout is left out (no randomness at
inference; the condition label, not noise, decides the output).

Critic (:class:`PairCritic`): the 70x70 PatchGAN of pix2pix on *pairs* ``(input, candidate)``
(6 channels): a real/fake logit per patch, and a class head saying which expression the candidate
shows: a convolution whose kernel covers the whole last feature map (StarGAN's classifier). Not a
global average pool: after InstanceNorm every channel's spatial mean is its learned bias whatever
the face, so pooled features cannot tell expressions apart (an early version did that and its
class head never beat chance on generated faces). InstanceNorm instead of pix2pix's batch norm, so
faces of a batch never interact (DDP gives what one process gives).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facexpr.models.base import EMOTION_LABELS, Condition, GeneratorOutput
from facexpr.models.layers import init_weights

CONDITION_PLACES = ("input", "bottleneck", "both")


@dataclass
class UNetCGANConfig:
    """Architecture (defaults = pix2pix's widths at 128 px, bottleneck 2x2). ``labels``: the
    expressions of the one-hot condition, comma-separated, in order. ``downs=0`` is replaced by
    the depth the image size allows (:func:`depth_for`), so a saved config names its real depth."""

    image_size: int = 128
    labels: str = ",".join(EMOTION_LABELS)
    width: int = 64  # channels after the first down (pix2pix ngf)
    max_width: int = 512  # channel cap of the deeper levels
    downs: int = 0  # stride-2 levels; the bottleneck is image_size / 2**downs (>= 2) px; 0 = from the size
    condition_at: str = "both"  # where the label enters: input | bottleneck | both
    upsample: str = "transpose"  # transpose (pix2pix) | nearest (resize + 3x3 conv)
    critic_width: int = 64  # PatchGAN ndf
    critic_layers: int = 3  # stride-2 layers of the PatchGAN: 3 = the 70x70 receptive field

    def __post_init__(self) -> None:
        if self.downs == 0:
            self.downs = depth_for(self.image_size)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.labels.split(",") if x.strip())


def depth_for(image_size: int) -> int:
    """The most stride-2 levels that halve ``image_size`` exactly down to a bottleneck of at least
    2 px (InstanceNorm needs more than one pixel): 6 at 128 px, 5 at 64, 5 at 96 (3 px)."""
    downs = 0
    while image_size % 2 ** (downs + 1) == 0 and image_size >> (downs + 1) >= 2:
        downs += 1
    return downs


PRESETS: dict[str, dict[str, int]] = {
    "paper": {},
    "small": {"width": 32, "max_width": 256, "downs": 5, "critic_width": 32},
    "tiny": {"width": 8, "max_width": 32, "downs": 3, "critic_width": 8, "critic_layers": 2},
}


def condition(config: UNetCGANConfig) -> Condition:
    return Condition("labels", config.label_names, False)


def check_config(config: UNetCGANConfig) -> None:
    names = config.label_names
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"labels must name at least two distinct expressions, got {config.labels!r}")
    if config.downs < 1:
        raise ValueError(f"no U-Net depth for image_size {config.image_size} and downs {config.downs}: downs must be "
                         ">= 1 (0 = from the size) and the size even and at least 4 px")
    if config.image_size % (2**config.downs) or config.image_size >> config.downs < 2:
        raise ValueError(f"image_size {config.image_size} must be divisible by 2**downs = {2**config.downs} with a "
                         f"bottleneck of at least 2 px (InstanceNorm needs more than one pixel); lower downs, "
                         f"or set downs=0 to take the depth the size allows")
    if min(config.width, config.max_width, config.critic_width, config.critic_layers) < 1:
        raise ValueError(f"invalid U-Net cGAN config {config}")
    if config.condition_at not in CONDITION_PLACES:
        raise ValueError(f"condition_at must be one of {', '.join(CONDITION_PLACES)}, got {config.condition_at!r}")
    if config.upsample not in ("transpose", "nearest"):
        raise ValueError(f"upsample must be 'transpose' or 'nearest', got {config.upsample!r}")
    if config.image_size >> config.critic_layers < 4:
        raise ValueError(f"critic_layers {config.critic_layers} is too deep for {config.image_size} px")


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


def _up(cin: int, cout: int, upsample: str) -> nn.Module:
    if upsample == "transpose":
        return nn.ConvTranspose2d(cin, cout, 4, 2, 1)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1))


def _tile(cond: Tensor, like: Tensor) -> Tensor:
    b, _, h, w = like.shape
    return cond.to(like.dtype).view(b, -1, 1, 1).expand(b, cond.shape[1], h, w)


class UNetGenerator(nn.Module):
    """``forward(image (B,3,H,W) in [-1,1], labels (B,L) one-hot) -> GeneratorOutput(result)``."""

    family = "unet-cgan"

    def __init__(self, config: UNetCGANConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        n = len(config.label_names)
        self.at_input = config.condition_at in ("input", "both")
        self.at_bottleneck = config.condition_at in ("bottleneck", "both")
        widths = [min(config.width * 2**k, config.max_width) for k in range(config.downs)]
        downs: list[nn.Module] = [nn.Sequential(nn.Conv2d(3 + (n if self.at_input else 0), widths[0], 4, 2, 1),
                                                nn.LeakyReLU(0.2, True))]
        for k in range(1, config.downs):
            downs.append(nn.Sequential(nn.Conv2d(widths[k - 1], widths[k], 4, 2, 1, bias=False), _norm(widths[k]),
                                       nn.LeakyReLU(0.2, True)))
        self.downs = nn.ModuleList(downs)
        deepest = widths[-1]
        self.bottleneck = nn.Sequential(
            nn.Conv2d(deepest + (n if self.at_bottleneck else 0), deepest, 3, 1, 1, bias=False), _norm(deepest),
            nn.ReLU(True))
        ups: list[nn.Module] = []
        cin = deepest
        for k in range(config.downs - 1, 0, -1):  # up to level k-1, then concatenate its skip
            ups.append(nn.Sequential(_up(cin, widths[k - 1], config.upsample), _norm(widths[k - 1]), nn.ReLU(True)))
            cin = 2 * widths[k - 1]
        self.ups = nn.ModuleList(ups)
        self.head = nn.Sequential(_up(cin, 3, config.upsample), nn.Tanh())
        init_weights(self)

    def forward(self, image: Tensor, cond: Tensor) -> GeneratorOutput:
        x = torch.cat([image, _tile(cond, image)], dim=1) if self.at_input else image
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        if self.at_bottleneck:
            x = torch.cat([x, _tile(cond, x)], dim=1)
        x = self.bottleneck(x)
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            x = torch.cat([up(x), skip], dim=1)
        return GeneratorOutput(result=self.head(x))


def critic_map_size(config: UNetCGANConfig) -> int:
    """Side of the critic's last feature map: ``critic_layers`` stride-2 4x4 convs (the first
    included) halve the image, then one stride-1 4x4 conv with padding 1 takes one pixel off."""
    size = config.image_size
    for _ in range(config.critic_layers):
        size //= 2
    return size - 1


class PairCritic(nn.Module):
    """``forward(input, candidate) -> (patch logits (B,1,h,w), class logits (B,L))``.

    The 70x70 PatchGAN (C64-C128-C256-C512; stride 2 except the last two convs; InstanceNorm from
    the second layer; LeakyReLU 0.2) on the channel concatenation of the two images.
    """

    def __init__(self, config: UNetCGANConfig) -> None:
        super().__init__()
        check_config(config)
        w, n = config.critic_width, config.critic_layers
        layers: list[nn.Module] = [nn.Conv2d(6, w, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for i in range(1, n + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 2 if i < n else 1
            layers += [nn.Conv2d(w * prev, w * mult, 4, stride, 1, bias=False), _norm(w * mult),
                       nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)
        self.patch_head = nn.Conv2d(w * mult, 1, 4, 1, 1)
        self.class_head = nn.Conv2d(w * mult, len(config.label_names), critic_map_size(config), bias=False)
        init_weights(self)

    def forward(self, source: Tensor, candidate: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(torch.cat([source, candidate], dim=1))
        return self.patch_head(h), self.class_head(h).flatten(1)


def build_critic(config: UNetCGANConfig) -> PairCritic:
    return PairCritic(config)
