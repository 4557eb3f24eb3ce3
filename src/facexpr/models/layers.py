"""Building blocks shared by the generator and critic families.

Plain ``nn.Module`` classes with no device or dtype baked in: callers move whole networks with
``.to(device)``. Normalisation is InstanceNorm everywhere in generators (as in GANimation and
StarGAN): batch statistics would couple the faces of a batch and break DDP equivalence.
"""

from __future__ import annotations

import math

from torch import Tensor, nn


class ConvNormAct(nn.Sequential):
    """Conv -> InstanceNorm (affine) -> ReLU, the unit of every GANimation-style encoder/decoder.

    ``transpose=True`` gives the learned 2x upsampling of the reference implementation.
    The conv has no bias because InstanceNorm removes any per-channel constant anyway.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        *,
        transpose: bool = False,
    ) -> None:
        conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
        super().__init__(
            conv_cls(in_ch, out_ch, kernel, stride, padding, bias=False),
            nn.InstanceNorm2d(out_ch, affine=True, track_running_stats=False),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convs with InstanceNorm and an identity skip (the GANimation bottleneck block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(channels, affine=True, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.InstanceNorm2d(channels, affine=True, track_running_stats=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class AdaIN(nn.Module):
    """Adaptive instance normalisation: normalise each channel, then scale and shift it with
    values predicted from a style/domain vector.

    The scale is predicted as ``1 + gamma`` so a freshly initialised layer starts close to plain
    InstanceNorm, which keeps early training stable.
    """

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
        self.affine = nn.Linear(style_dim, 2 * channels)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        gamma, beta = self.affine(style).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdaINResidualBlock(nn.Module):
    """A residual block whose two normalisations are AdaIN layers driven by a domain vector."""

    def __init__(self, channels: int, style_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm1 = AdaIN(channels, style_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = AdaIN(channels, style_dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        h = self.act(self.norm1(self.conv1(x), style))
        h = self.norm2(self.conv2(h), style)
        return x + h


def conv_decoder(channels: int, downs: int, upsample: str) -> tuple[nn.Sequential, int]:
    """``downs`` 2x upsampling stages halving the channels: 4x4 stride-2 transposed convs
    (``"transpose"``, the papers') or nearest resize + 3x3 conv (``"nearest"``)."""
    layers: list[nn.Module] = []
    for _ in range(downs):
        if upsample == "transpose":
            layers.append(ConvNormAct(channels, channels // 2, 4, 2, 1, transpose=True))
        else:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), ConvNormAct(channels, channels // 2, 3, 1, 1)]
        channels //= 2
    return nn.Sequential(*layers), channels


def conv_encoder(in_ch: int, width: int, downs: int) -> tuple[nn.Sequential, int]:
    """7x7 conv to ``width`` channels, then ``downs`` 4x4 stride-2 stages doubling them (the
    encoder of GANimation and StarGAN); returns the stack and its output channels."""
    layers: list[nn.Module] = [ConvNormAct(in_ch, width, 7, 1, 3)]
    channels = width
    for _ in range(downs):
        layers.append(ConvNormAct(channels, channels * 2, 4, 2, 1))
        channels *= 2
    return nn.Sequential(*layers), channels



class PatchCritic(nn.Module):
    """PatchGAN critic with two heads: a real/fake score per patch and an AU regression.

    Stride-2 4x4 convs with LeakyReLU(0.01) and no normalisation (a WGAN-GP critic must not
    normalise over the batch, and the reference GANimation critic uses none at all). The number
    of stride-2 layers is chosen from the image size so the last feature map is 2x2 at any
    power-of-two size (six layers at 128 px, as in the paper). The AU head is a conv whose
    kernel covers that whole map, giving one vector of ``num_aus`` values per image.
    """

    def __init__(self, image_size: int, num_aus: int, width: int = 64, max_width: int = 2048,
                 in_channels: int = 3) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"critic needs images of at least 8 px, got {image_size}")
        depth = max(1, int(math.log2(image_size)) - 1)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
        ch = width
        for _ in range(depth - 1):
            out = min(ch * 2, max_width)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
            ch = out
        self.features = nn.Sequential(*layers)
        final = image_size >> depth
        self.patch_head = nn.Conv2d(ch, 1, 3, 1, 1, bias=False)
        self.au_head = nn.Conv2d(ch, num_aus, final, bias=False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(patch_scores (B,1,h,w), aus (B,num_aus))``; AUs on the condition scale."""
        h = self.features(image)
        return self.patch_head(h), self.au_head(h).flatten(1)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """DCGAN-style N(0, 0.02) conv init; the GAN literature this project follows trains from it."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def check_image_size(image_size: int, downs: int) -> None:
    """An encoder with ``downs`` stride-2 stages needs a size it can halve that often."""
    factor = 2**downs
    if image_size % factor or image_size < 8:
        raise ValueError(f"image_size {image_size} must be >= 8 and divisible by 2**downs = {factor}")
