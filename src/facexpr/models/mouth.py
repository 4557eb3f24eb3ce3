"""A small learned inpainter for the mouth interior, and the code that applies it to a photo.

Why it exists: the geometry-driven editor warps the real photo to a target expression. When the
target opens the lips wider than the source (a smile showing teeth, a dropped jaw), the region
inside the target's inner-lip polygon has no real pixels behind it: stretching the lips across it
looks like a rubber mask. This network paints a plausible mouth interior there, conditioned only
on the shape of the opening (the mask) and the surrounding lips and skin: teeth under a smiling
upper lip, a dark cavity and tongue in a tall opening.

Scale: it works on a ``size`` px (64 by default) crop of the mouth (:func:`facexpr.face.mouth.mouth_frame`),
where a mouth is ~35 px wide. That is enough for teeth and a cavity to read as such at the scale
of a face, and it keeps the network tiny (~0.3 M parameters, a few ms on one CPU core). On a
large face (a 1024 px face crop) the interior is upsampled back bicubically and is visibly
softer than the photo around it; it is a plausible interior, not a high-resolution one.

Conventions: images ``(B, 3, S, S)`` in ``[-1, 1]``; the mask ``(B, 1, S, S)`` is 1 where the
network must invent pixels. ``forward`` zeroes the hole itself and composes
``mask * generated + (1 - mask) * image``, so pixels where the mask is 0 are returned exactly.

Files: ``mouth.safetensors`` (weights, fp32 or fp16) + ``mouth.json`` (format, config,
conventions, training summary). Nothing is ever unpickled. It is the registered family ``mouth``
(``facexpr train --model mouth``, recipe :mod:`facexpr.training.recipe_mouth`); ``facexpr export``
writes its folder in this format (:func:`save_mouth_folder`), so :func:`load_mouth` and
``facexpr fit-geometry --mouth`` read an export directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from facexpr import __version__
from facexpr.atomic import atomic_open, fsync_path
from facexpr.errors import ConfigError, OutputError
from facexpr.face.align import matrix_scale, warp_crop
from facexpr.face.mouth import inner_lip_polygon, mouth_frame, polygon_mask_roi
from facexpr.models.base import Condition, config_from_dict
from facexpr.weights_io import read_tensors

FORMAT = "facexpr-mouth"
FORMAT_VERSION = 1
WEIGHTS = "mouth.safetensors"
CONFIG = "mouth.json"
#: Folder of the shipped model inside ``facexpr/weights``.
SHIPPED = "mouth-v1"
CARD = "MODEL_CARD.md"
#: What the network computes (the registry's ``output_convention`` for this family).
OUTPUT_CONVENTION = "mask * generated + (1 - mask) * image"
#: It is conditioned on the hole's shape, not on an expression: no condition vector.
MASK_CONDITION = Condition(kind="mask", labels=(), interpolates=False)


@dataclass
class MouthConfig:
    """Shape of the inpainter and of its crop.

    ``size`` is the crop side (a multiple of 8: three stride-2 stages). ``width`` is the channel
    count at full resolution; it doubles, then doubles again at 1/4 and 1/8 resolution.
    ``blocks`` dilated residual blocks at 1/8 resolution give every output pixel a view of the
    whole mouth, which is what lets a tall opening get a cavity and a wide one get teeth.
    ``width_fraction`` is the mouth-corner distance as a fraction of the crop
    (:func:`facexpr.face.mouth.mouth_frame`); ``critic_width`` only matters for training.
    """

    size: int = 64
    width: int = 16
    blocks: int = 2
    width_fraction: float = 0.55
    critic_width: int = 32

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 8:
            raise ConfigError(f"MouthConfig.size must be a multiple of 8 and at least 16, got {self.size}")
        if self.width < 4:
            raise ConfigError(f"MouthConfig.width must be at least 4, got {self.width}")


#: Architecture presets of the registered family: ``paper`` is the shipped ``mouth-v1``'s shape,
#: ``tiny`` is for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {},
    "tiny": {"width": 8, "blocks": 1, "critic_width": 16},
}


def condition(config: MouthConfig) -> Condition:
    """The hole's shape is its only condition (:data:`MASK_CONDITION`)."""
    return MASK_CONDITION


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class _DilatedBlock(nn.Module):
    """Residual block of two 3x3 convs (the first dilated): wide context at a tiny cost."""

    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = _conv(ch, ch, dilation=dilation)
        self.conv2 = _conv(ch, ch)
        self.act = _act()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class MouthInpainter(nn.Module):
    """U-Net: (masked image, mask) -> image with the hole filled.

    No normalisation layers: instance or batch statistics would be dominated by the hole's
    zeros and change with its size, i.e. with exactly the thing the network is conditioned on.
    """

    family = "mouth"

    def __init__(self, config: MouthConfig | None = None) -> None:
        super().__init__()
        self.config = config or MouthConfig()
        w = self.config.width
        self.enc0 = nn.Sequential(_conv(4, w), _act())  # S
        self.enc1 = nn.Sequential(_conv(w, 2 * w, 2), _act(), _conv(2 * w, 2 * w), _act())  # S/2
        self.enc2 = nn.Sequential(_conv(2 * w, 4 * w, 2), _act())  # S/4
        self.enc3 = nn.Sequential(_conv(4 * w, 4 * w, 2), _act())  # S/8
        self.mid = nn.Sequential(*[_DilatedBlock(4 * w, 2 if i % 2 == 0 else 1) for i in range(self.config.blocks)])
        self.dec2 = nn.Sequential(_conv(8 * w, 2 * w), _act())  # S/4
        self.dec1 = nn.Sequential(_conv(4 * w, w), _act())  # S/2
        self.dec0 = nn.Sequential(_conv(2 * w, w), _act())  # S
        self.out = _conv(w, 3)

    def generate(self, image: Tensor, mask: Tensor) -> Tensor:
        """Raw network output over the whole crop (before composing), in [-1, 1]."""
        x = torch.cat([image * (1.0 - mask), mask], dim=1)
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        h = self.mid(self.enc3(e2))
        h = self.dec2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), e2], 1))
        h = self.dec1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), e1], 1))
        h = self.dec0(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), e0], 1))
        return torch.tanh(self.out(h))

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        """``mask * generated + (1 - mask) * image``: the hole filled, everything else exact.

        ``image`` (B, 3, S, S) in [-1, 1] (what is under the hole is ignored: it is zeroed here,
        so a caller may pass the original or an already-masked image); ``mask`` (B, 1, S, S) in
        0..1, 1 = fill.
        """
        return mask * self.generate(image, mask) + (1.0 - mask) * image


class MouthCritic(nn.Module):
    """Small PatchGAN critic on (image, mask) mouth crops: one score per ~22 px patch.

    It sees the mask so it can judge the hole against its surroundings (a real interior at that
    place and shape) rather than the untouched pixels, which are identical in real and fake.
    Spectral normalisation keeps the light adversarial term from ever dominating the L1 term.
    """

    def __init__(self, config: MouthConfig | None = None) -> None:
        super().__init__()
        self.config = config or MouthConfig()
        w = self.config.critic_width
        sn = nn.utils.parametrizations.spectral_norm
        self.net = nn.Sequential(
            sn(nn.Conv2d(4, w, 4, 2, 1)), _act(),
            sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), _act(),
            sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), _act(),
            sn(nn.Conv2d(4 * w, 1, 3, 1, 1)),
        )

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        """(B, 1, S/8, S/8) realness scores."""
        return self.net(torch.cat([image, mask], dim=1))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- applying it to a photo -----------------------------------------------------------------------


def _to_tensor(rgb: NDArray[np.uint8]) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(127.5).sub_(1.0)


def fill_mouth(
    net: MouthInpainter,
    image: NDArray[np.uint8],
    landmarks: np.ndarray,
    fill_mask: NDArray[np.floating] | None = None,
    *,
    feather_crop_px: float = 2.0,
) -> NDArray[np.uint8]:
    """Paint a mouth interior into ``image`` where ``fill_mask`` says so; returns a new image.

    Args:
        net: a :class:`MouthInpainter` (eval mode is set by :func:`load_mouth`).
        image: uint8 (H, W, 3) RGB, any size: the photo already warped to the target geometry.
        landmarks: (478, 2|3) landmarks of the TARGET geometry in ``image``'s pixels; they frame
            the mouth crop and, without ``fill_mask``, define the opening.
        fill_mask: float (H, W) in 0..1, where to paint (soft edges are blend weights). None =
            the target inner-lip polygon, grown and feathered by ``feather_crop_px`` pixels of
            the mouth crop (so the feather looks the same at any image resolution).
        feather_crop_px: feather of the default mask, in mouth-crop pixels.

    Pixels where the mask is 0 (and pixels outside the mouth crop, which the network never saw)
    are byte-identical to ``image``. The network runs at ``net.config.size`` px; on a large face
    its output is upsampled bicubically and is softer than the photo around it (expected: the
    interior is plausible at the scale of a mouth, not detailed at 1024 px).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"fill_mouth expects a uint8 HxWx3 image, got {img.dtype} {img.shape}")
    size = int(net.config.size)
    matrix = mouth_frame(landmarks, size, width_fraction=net.config.width_fraction)
    scale = matrix_scale(matrix)  # crop px per image px
    out = img.copy()
    # The mask, only over the box where it is non-zero: no full-size temporaries on a big photo.
    if fill_mask is None:
        mask, box = polygon_mask_roi(inner_lip_polygon(landmarks), img.shape, feather_crop_px / scale)
        if box is None:
            return out
    else:
        full = np.asarray(fill_mask)
        if full.shape != img.shape[:2]:
            raise ValueError(f"fill_mask is {full.shape}, the image is {img.shape[:2]}")
        bx, by, bw, bh = cv2.boundingRect((full > 0).view(np.uint8) if full.dtype == bool
                                          else (full > 0).astype(np.uint8))
        if bw == 0 or bh == 0:
            return out
        box = (bx, by, bx + bw, by + bh)
        mask = np.clip(np.nan_to_num(full[by:by + bh, bx:bx + bw].astype(np.float32)), 0.0, 1.0)
    x0, y0, x1, y1 = box
    if not (mask > 0).any():
        return out
    # image -> crop for coordinates inside the box
    m_roi = np.asarray(matrix, dtype=np.float64).copy()
    m_roi[:, 2] += m_roi[:, :2] @ np.array([x0, y0], dtype=np.float64)
    # The hole the network fills: every crop pixel the mask touches, grown 1 px, so no part of
    # the soft mask blends in a resampled copy of the pixels it is replacing.
    crop = warp_crop(img, matrix, size)
    mask_crop = warp_crop(mask, m_roi, size, border=cv2.BORDER_CONSTANT)
    hole = cv2.dilate((mask_crop > 1.0 / 64).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    param = next(net.parameters())
    with torch.inference_mode():
        x = _to_tensor(crop).to(param.device, param.dtype)
        m = torch.from_numpy(hole)[None, None].to(param.device, param.dtype)
        y = net(x, m)[0].float().add(1.0).mul(127.5).clamp(0, 255).permute(1, 2, 0).contiguous().cpu().numpy()
    # Back to image space over the box only (bicubic: the crop is smaller than a large face).
    dsize = (x1 - x0, y1 - y0)
    back = cv2.warpAffine(y, m_roi, dsize, flags=cv2.WARP_INVERSE_MAP | cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)
    # Where the crop has no pixels (a caller's mask reaching outside it), the photo stays as is.
    inside = cv2.warpAffine(np.ones((size, size), np.float32), m_roi, dsize,
                            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    alpha = mask * inside
    sel = alpha > 0
    region = out[y0:y1, x0:x1]
    blended = region.astype(np.float32) * (1.0 - alpha[..., None]) + back * alpha[..., None]
    region[sel] = np.clip(np.rint(blended[sel]), 0, 255).astype(np.uint8)
    return out


# -- files ----------------------------------------------------------------------------------------


def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(weights, config) for a folder, a ``.safetensors`` file or a ``.json`` file."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    return p / WEIGHTS, p / CONFIG


def save_mouth(
    net: MouthInpainter,
    path: str | os.PathLike[str],
    *,
    fp16: bool = False,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``net`` as ``mouth.safetensors`` + ``mouth.json``; returns the weights path.

    ``path`` is a folder (created; the two files go inside) or a ``NAME.safetensors`` file (the
    config goes beside it as ``NAME.json``). Each file is written atomically; the config last,
    so a reader that finds it also finds the matching weights. ``fp16`` halves the file; the
    loader casts back to float32.
    """
    weights, config = _paths(path)
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in net.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(net.config),
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": count_parameters(net),
        "input": "image (B,3,S,S) in [-1,1] + mask (B,1,S,S), 1 = fill; crop = facexpr.face.mouth.mouth_frame",
        "output": "mask * generated + (1 - mask) * image, in [-1,1]",
        "facexpr_version": __version__,
        "training": training or {},
    }
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(weights, "wb") as fh:
            fh.write(save_safetensors_bytes(state, metadata={"format": FORMAT}))
        with atomic_open(config, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(meta, indent=2) + "\n")
        fsync_path(weights.parent)
    except OSError as exc:
        raise OutputError(f"{weights}: cannot write the mouth model ({exc})") from exc
    return weights


def save_mouth_folder(
    net: MouthInpainter,
    folder: str | os.PathLike[str],
    *,
    fp16: bool = False,
    model_card: str | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an exported mouth model folder: ``mouth.safetensors`` + ``mouth.json`` +
    ``MODEL_CARD.md``, built beside ``folder`` and renamed into place (the family's
    ``save_model``: ``facexpr export`` calls it). ``overwrite`` replaces only an earlier mouth
    folder, never a run, a dataset or other files."""
    from facexpr.atomic import atomic_folder

    folder = Path(folder)
    from facexpr.models.pretrained import check_replaceable_folder

    check_replaceable_folder(folder, overwrite, fmt=FORMAT, kind="mouth model", config=CONFIG,
                             own_file=(WEIGHTS, CONFIG, CARD).__contains__)
    with atomic_folder(folder, "mouth model folder") as tmp:
        save_mouth(net, tmp, fp16=fp16, training=training)
        (tmp / CARD).write_text(model_card or "# facexpr mouth model\n\nNo model card was provided.\n",
                                encoding="utf-8")
    return folder


def read_mouth_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``mouth.json`` of a folder / weights file / config file."""
    from facexpr.models.pretrained import read_format_json

    _, config = _paths(path)
    return read_format_json(config, FORMAT, FORMAT_VERSION, "mouth model",
                            "a mouth model is mouth.safetensors + mouth.json (train one with `facexpr train --model mouth` "
                            "and export it with `facexpr export RUN OUT`)")


def shipped_mouth_path() -> Path:
    """The folder of the mouth model shipped in the package (``facexpr/weights/mouth-v1``)."""
    from importlib import resources

    return Path(str(resources.files("facexpr") / "weights" / SHIPPED))


def load_mouth(path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu") -> MouthInpainter:
    """Rebuild the network from ``mouth.json`` and load ``mouth.safetensors`` (float32, eval mode).

    ``path``: a folder holding both files, either file, or None for the shipped model.
    """
    if path is None:
        path = shipped_mouth_path()
    weights, _ = _paths(path)
    meta = read_mouth_config(path)
    net = MouthInpainter(config_from_dict(MouthConfig, meta.get("config", {})))
    from facexpr.models.pretrained import load_weights

    load_weights(net, read_tensors(weights, "re-export the mouth model"), weights, CONFIG)
    return net.to(device).eval().requires_grad_(False)


__all__ = [
    "MouthConfig",
    "MouthInpainter",
    "MouthCritic",
    "count_parameters",
    "fill_mouth",
    "save_mouth",
    "save_mouth_folder",
    "load_mouth",
    "shipped_mouth_path",
    "read_mouth_config",
]
