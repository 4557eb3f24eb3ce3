"""A small RGB -> depth (+ surface normals) network for StarGAN with 3D depth guidance (seed 003).

Why it exists: the StarGAN-depth family gives its generator a 3D-consistency signal through a
depth critic that judges ``(image, depth of image)`` pairs. The depth of a *generated* image
cannot be measured with MediaPipe inside a training step (not differentiable, and far too
slow), so a network estimates it; its gradient flows back into the generator. This module is
that network, pretrained on depth maps rendered from MediaPipe's face mesh
(:func:`facexpr.face.depth.render_depth_normals`, see :mod:`facexpr.training.depth_pretrain`).

Shape: a fully-convolutional U-Net that works at half resolution: the input is folded into
(B, 12, S/2, S/2) by a 2x2 space-to-depth, three stride-2 stages go down to 1/16 resolution,
two residual blocks (one dilated conv each) there let every output pixel see the whole face,
nearest-neighbour upsampling with skip connections comes back to S/2, and the head's 4x
channels unfold by depth-to-space to full resolution. Convolutions on 3-16 channels at full
resolution are what is slow on a CPU; folding keeps the output at full resolution without them.
Small on purpose: ~0.4 M parameters at the default width 16, ~0.11 s forward + backward for a
batch of eight 128 px faces on one CPU thread, so it fits in a GAN's training step. GroupNorm
(8 channels per group): per-image statistics (no coupling of the faces of a batch, like the
generators' InstanceNorm), and a little robustness to the colour and contrast shifts of
generated images.

Conventions (those of :mod:`facexpr.face.depth`):

- input ``(B, 3, S, S)`` RGB in ``[-1, 1]``, an aligned face crop (facexpr's alignment);
- depth ``(B, 1, S, S)`` in ``[0, 1]``: 1 at the nearest face point,
  :data:`~facexpr.face.depth.DEPTH_FLOOR` at the farthest, 0 on the background (a sigmoid, so
  the background is only ever *near* 0: threshold it, e.g. ``depth > DEPTH_FLOOR / 2``, for a mask);
- normals ``(B, 3, S, S)`` (when ``config.normals``): unit vectors, x right, y up, z toward the
  viewer. They are predicted everywhere; only the face region (depth > 0) was supervised.

Files: a model folder ``depth.safetensors`` (fp32 or fp16) + ``config.json`` (``format``
``facexpr-depthnet``) + ``MODEL_CARD.md``, written to a temporary sibling and renamed into
place. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from facexpr import __version__
from facexpr.atomic import atomic_folder
from facexpr.errors import ConfigError
from facexpr.models.base import config_from_dict
from facexpr.weights_io import read_tensors

FORMAT = "facexpr-depthnet"
FORMAT_VERSION = 1
WEIGHTS = "depth.safetensors"
CONFIG = "config.json"
CARD = "MODEL_CARD.md"
#: Files a depth-net folder holds; ``overwrite`` replaces only a folder made of these.
FOLDER_FILES = frozenset({WEIGHTS, CONFIG, CARD})
#: Folder of the shipped model inside ``facexpr/weights``.
SHIPPED = "depthnet-v1"
#: Total downsampling (space-to-depth + three stride-2 stages): the image size must be a
#: multiple of 2**DOWNS.
DOWNS = 4


@dataclass
class DepthNetConfig:
    """Shape of the depth network.

    ``image_size`` is the side of the square input it is meant for (the network is fully
    convolutional and runs at any multiple of 16, but it was trained at this size and the depth
    scale of a face depends on how large the face is). ``width`` is the channel count at 1/2
    resolution (the first level); it doubles at 1/4 and 1/8 and stays there at 1/16.
    ``normals`` adds a head predicting unit surface normals.
    """

    image_size: int = 128
    width: int = 16
    normals: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % (2**DOWNS):
            raise ConfigError(f"DepthNetConfig.image_size must be a multiple of {2**DOWNS} and >= 16, got {self.image_size}")
        if self.width < 4 or self.width % 4:
            raise ConfigError(f"DepthNetConfig.width must be a multiple of 4 and at least 4, got {self.width}")


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, ch // 8), ch)


class _ConvBlock(nn.Sequential):
    """3x3 conv (optionally stride 2) -> GroupNorm -> LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.LeakyReLU(0.2, inplace=True))


class _ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and an identity skip (the second one dilated for context)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), _norm(ch), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ch, ch, 3, 1, 2, dilation=2, bias=False), _norm(ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x + self.body(x), 0.2)


class DepthNet(nn.Module):
    """U-Net: RGB face crop -> depth in [0, 1] (+ unit normals); see the module docstring.

    ``forward(image)`` returns depth ``(B,1,S,S)`` when ``config.normals`` is False, otherwise
    ``(depth, normals)`` with normals ``(B,3,S,S)``. :meth:`predict` always returns a dict.
    """

    def __init__(self, config: DepthNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or DepthNetConfig()
        w = self.config.width
        chans = [w, 2 * w, 4 * w, 4 * w]  # S/2, S/4, S/8, S/16
        self.stem = _ConvBlock(3 * 4, chans[0])
        self.down = nn.ModuleList(
            nn.Sequential(_ConvBlock(chans[k], chans[k + 1], stride=2), _ConvBlock(chans[k + 1], chans[k + 1]))
            for k in range(len(chans) - 1)
        )
        self.mid = nn.Sequential(_ResBlock(chans[-1]), _ResBlock(chans[-1]))
        # up[k]: from level k+1 to level k, concatenated with the encoder's level k.
        self.up = nn.ModuleList(_ConvBlock(chans[k + 1] + chans[k], chans[k]) for k in range(len(chans) - 1))
        self.out_channels = 1 + (3 if self.config.normals else 0)
        self.head = nn.Conv2d(chans[0], 4 * self.out_channels, 3, 1, 1)
        with torch.no_grad():  # start near "background everywhere", a facing normal on the face
            bias = torch.tensor([-2.0, 0.0, 0.0, 1.0][: self.out_channels])
            self.head.bias.copy_(bias.repeat_interleave(4))

    def logits(self, image: Tensor) -> Tensor:
        """Raw outputs (B, 1 [+3], S, S): depth logit [and unnormalised normals]."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"DepthNet expects images of shape (B, 3, S, S), got {tuple(image.shape)}")
        factor = 2**DOWNS
        if image.shape[-1] % factor or image.shape[-2] % factor:
            raise ValueError(f"DepthNet needs an image side divisible by {factor}, got {tuple(image.shape[-2:])}")
        skips = [self.stem(F.pixel_unshuffle(image, 2))]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        h = self.mid(skips.pop())
        for k in reversed(range(len(self.up))):
            h = self.up[k](torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skips[k]], dim=1))
        return F.pixel_shuffle(self.head(h), 2)

    def forward(self, image: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = self.logits(image)
        depth = torch.sigmoid(out[:, :1])
        if not self.config.normals:
            return depth
        return depth, F.normalize(out[:, 1:], dim=1, eps=1e-6)

    def predict(self, image: Tensor) -> dict[str, Tensor]:
        """``{"depth": (B,1,S,S)}`` plus ``"normals": (B,3,S,S)`` when the model has them."""
        out = self(image)
        if isinstance(out, tuple):
            return {"depth": out[0], "normals": out[1]}
        return {"depth": out}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- files ----------------------------------------------------------------------------------------


def save_depthnet(
    net: DepthNet,
    folder: str | os.PathLike[str],
    *,
    fp16: bool = False,
    model_card: str | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``net`` as a model folder (``depth.safetensors`` + ``config.json`` + ``MODEL_CARD.md``).

    The folder is assembled in a temporary sibling and renamed into place, so a reader never
    sees half of it. ``overwrite`` replaces an earlier depth-net folder, never anything else.
    ``fp16`` halves the file; :func:`load_depthnet` casts back to float32.
    """
    folder = Path(folder)
    from facexpr.models.pretrained import check_replaceable_folder

    check_replaceable_folder(folder, overwrite, fmt=FORMAT, kind="depth-net", own_file=FOLDER_FILES.__contains__,
                             flag="overwrite=True")
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in net.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(net.config),
        "image_size": int(net.config.image_size),
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": count_parameters(net),
        "input": "aligned face crop (B,3,S,S), RGB in [-1,1] (facexpr.face.align)",
        "output": {
            "depth": "(B,1,S,S) in [0,1]: 1 = nearest face point, 0.1 = farthest, 0 = background "
                     "(facexpr.face.depth.render_depth_normals)",
            **({"normals": "(B,3,S,S) unit vectors, x right, y up, z toward the viewer"} if net.config.normals else {}),
        },
        "facexpr_version": __version__,
        "training": training or {},
    }
    with atomic_folder(folder, "depth-net folder") as tmp:
        (tmp / WEIGHTS).write_bytes(save_safetensors_bytes(state, metadata={"format": FORMAT}))
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(model_card or "# facexpr depth network\n\nNo model card was provided.\n", encoding="utf-8")
    return folder


def read_depthnet_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``config.json`` of a depth-net folder (raises :class:`ConfigError`)."""
    from facexpr.models.pretrained import read_format_json

    return read_format_json(Path(folder) / CONFIG, FORMAT, FORMAT_VERSION, "depth network",
                            "a depth network is a folder of depth.safetensors + config.json "
                            "(train one with facexpr.training.depth_pretrain.pretrain_depth)")


def shipped_depthnet_path() -> Path:
    """The folder of the depth network shipped in the package (``facexpr/weights/depthnet-v1``)."""
    from importlib import resources

    return Path(str(resources.files("facexpr") / "weights" / SHIPPED))


def load_depthnet(folder: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu") -> DepthNet:
    """Rebuild the network from ``config.json`` and load ``depth.safetensors`` (float32, eval mode,
    parameters frozen; call ``.requires_grad_(True).train()`` to fine-tune it).

    Raises:
        ConfigError: the folder is missing a file, a file is damaged or the weights do not match
            the config; the message names the file.
    """
    folder = Path(folder) if folder is not None else shipped_depthnet_path()
    meta = read_depthnet_config(folder)
    config = meta.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{folder / CONFIG}: has no 'config' object; re-save the model")
    net = DepthNet(config_from_dict(DepthNetConfig, config))
    weights = folder / WEIGHTS
    from facexpr.models.pretrained import load_weights

    load_weights(net, read_tensors(weights, "re-save the depth network"), weights, CONFIG)
    return net.to(device).eval().requires_grad_(False)


__all__ = [
    "FORMAT",
    "SHIPPED",
    "DepthNet",
    "DepthNetConfig",
    "count_parameters",
    "load_depthnet",
    "read_depthnet_config",
    "save_depthnet",
    "shipped_depthnet_path",
]
