"""VGG19 feature extractor (torchvision layer layout) with weights the *user* supplies.

Neural style transfer (:mod:`facexpr.pipeline.nst`) classically reads its content and style
features from ImageNet VGG19. Nothing in this project downloads at run time and no installed
package ships those weights, so :class:`VGG19Features` rebuilds the architecture in plain torch
and loads a safetensors file given by the user (e.g. torchvision's ``vgg19`` state dict converted
once with ``safetensors.torch.save_file``). Pickled ``.pth`` files are deliberately not read:
convert them where you trust them.

Layout: ``features.{i}`` exactly as torchvision's ``vgg19().features``, so a converted state dict
loads unchanged. Convolutions sit at indices 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30,
32, 34 (3x3, padding 1), ReLUs after each, max-pools at 4, 9, 18, 27, 36. Only the layers up to
the deepest one asked for are built; ``classifier.*`` keys in the file are ignored. Layers are
named like Gatys et al.: ``conv{block}_{n}``, ``relu{block}_{n}``, ``pool{block}``.

Input: float ``(B, 3, H, W)`` RGB in ``[0, 1]``; ImageNet mean/std normalisation is applied
inside (torchvision's convention, which converted weights expect).

Without a weights file (``weights=None``) the network keeps torch's random initialisation: useful
for tests, and random conv filters do carry some texture statistics (Ustyuzhaninov et al. 2016),
but they are *not* a substitute for trained features.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from facexpr.errors import ConfigError
from facexpr.weights_io import read_tensors

__all__ = [
    "VGG19_CONFIG",
    "VGG19_LAYERS",
    "VGG19Features",
    "load_vgg19_state",
]

#: torchvision's VGG19 ("E") configuration: output channels per conv, "M" = max-pool.
VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _layer_names() -> dict[str, int]:
    """Gatys-style layer name -> index in ``features``."""
    names: dict[str, int] = {}
    block, n, i = 1, 1, 0
    for v in VGG19_CONFIG:
        if v == "M":
            names[f"pool{block}"] = i
            i += 1
            block, n = block + 1, 1
        else:
            names[f"conv{block}_{n}"] = i
            names[f"relu{block}_{n}"] = i + 1
            i += 2
            n += 1
    return names


#: Layer name (``conv4_2``, ``relu1_1``, ``pool3``, ...) -> index in ``features``.
VGG19_LAYERS: dict[str, int] = _layer_names()


def _expected_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """``features.{i}.weight/bias`` -> shape for the first ``depth`` modules."""
    shapes: dict[str, tuple[int, ...]] = {}
    cin, i = 3, 0
    for v in VGG19_CONFIG:
        if i >= depth:
            break
        if v == "M":
            i += 1
            continue
        assert isinstance(v, int)
        shapes[f"features.{i}.weight"] = (v, cin, 3, 3)
        shapes[f"features.{i}.bias"] = (v,)
        cin, i = v, i + 2
    return shapes


def load_vgg19_state(path: str | Path) -> dict[str, Tensor]:
    """Read a VGG19 state dict from a safetensors file (keys ``features.N.*``, or bare ``N.*``).

    Raises:
        ConfigError: the file is missing, is not safetensors, or holds no VGG19 feature layers.
    """
    p = Path(path)
    state = read_tensors(p, "pass a VGG19 state dict in torchvision's layout as safetensors (convert a .pth "
                            "once with: torch.load(pth, weights_only=True) -> safetensors.torch.save_file)")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        out[key if key.startswith("features.") else f"features.{key}"] = value
    if not out:
        raise ConfigError(f"VGG19 weights {p}: no 'features.N.weight' tensors found (keys: {sorted(state)[:5]})")
    return out


class VGG19Features(nn.Module):
    """VGG19's convolutional trunk, returning the activations of named layers.

    Args:
        weights: a safetensors path, an already loaded state dict, or None (random weights).
        layers: the layer names the caller will ask for; the trunk is cut after the deepest.
        pool: ``"max"`` (torchvision, the default) or ``"avg"`` (Gatys et al. found average
            pooling gives smoother syntheses; the weights are the same).

    Raises:
        ConfigError: an unknown layer or pooling name, or weights whose keys or shapes do not fit
            VGG19 (the message lists the offending tensors).
    """

    def __init__(
        self,
        weights: str | Path | Mapping[str, Tensor] | None = None,
        layers: Iterable[str] = ("relu5_1",),
        pool: str = "max",
    ) -> None:
        super().__init__()
        layers = tuple(layers)
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown or not layers:
            raise ConfigError(f"unknown VGG19 layer(s) {unknown or '(none given)'}; known: {', '.join(VGG19_LAYERS)}")
        if pool not in ("max", "avg"):
            raise ConfigError(f"VGG19 pooling must be 'max' or 'avg', got {pool!r}")
        depth = max(VGG19_LAYERS[n] for n in layers) + 1
        modules: list[nn.Module] = []
        cin = 3
        for v in VGG19_CONFIG:
            if len(modules) >= depth:
                break
            if v == "M":
                modules.append(nn.MaxPool2d(2, 2) if pool == "max" else nn.AvgPool2d(2, 2))
            else:
                assert isinstance(v, int)
                modules += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*modules[:depth])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.name = "vgg19 (random weights)" if weights is None else "vgg19"
        if weights is not None:
            state = load_vgg19_state(weights) if isinstance(weights, (str, Path)) else dict(weights)
            self._load(state, str(weights) if isinstance(weights, (str, Path)) else "the given state dict")
            if isinstance(weights, (str, Path)):
                self.name = f"vgg19 ({Path(weights).name})"
        self.requires_grad_(False)
        self.eval()

    def _load(self, state: dict[str, Tensor], source: str) -> None:
        state = {k if k.startswith("features.") else f"features.{k}": v for k, v in state.items()
                 if not k.startswith("classifier.")}
        expected = _expected_shapes(len(self.features))
        missing = [k for k in expected if k not in state]
        wrong = [f"{k}: {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
                 if k in state and tuple(state[k].shape) != expected[k]]
        if missing or wrong:
            parts = []
            if wrong:
                parts.append(f"{len(wrong)} tensor(s) with the wrong shape, e.g. {'; '.join(wrong[:3])}")
            if missing:
                parts.append(f"{len(missing)} missing, e.g. {', '.join(missing[:3])}")
            raise ConfigError(
                f"VGG19 weights from {source} do not fit torchvision's vgg19 layout: {' and '.join(parts)}"
            )
        bad = [k for k in expected if not torch.isfinite(state[k]).all()]
        if bad:
            raise ConfigError(f"VGG19 weights from {source}: non-finite values in {', '.join(bad[:3])}")
        own = {k: state[k].to(torch.float32) for k in expected}
        self.load_state_dict(own, strict=True)

    def forward(self, x: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
        """Activations ``{name: (B, C, h, w)}`` of ``layers`` for RGB ``x`` in ``[0, 1]``."""
        layers = tuple(layers)
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown or not layers:
            raise ConfigError(f"unknown VGG19 layer(s) {unknown or '(none given)'}; known: {', '.join(VGG19_LAYERS)}")
        wanted = {VGG19_LAYERS[n]: n for n in layers}
        if any(i >= len(self.features) for i in wanted):
            raise ConfigError(f"layer(s) {sorted(wanted.values())} lie beyond the layers this extractor was built for")
        out: dict[str, Tensor] = {}
        h = (x - self.mean) / self.std
        last = max(wanted)
        for i, module in enumerate(self.features):
            h = module(h)
            if i in wanted:
                out[wanted[i]] = h
            if i == last:
                break
        return out
