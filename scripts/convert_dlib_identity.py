#!/usr/bin/env python
"""Convert dlib's face recognition network (.dat) into facexpr's torch IdentityNet (safetensors).

Usage::

    .venv/bin/python scripts/convert_dlib_identity.py                 # shipped folder, from the
                                                                      # installed face_recognition_models
    .venv/bin/python scripts/convert_dlib_identity.py --dat FILE --out FOLDER
    .venv/bin/python scripts/convert_dlib_identity.py --verify 300    # + compare with dlib on real faces

The ``.dat`` file is read with a parser of dlib's own binary serialization (no dlib needed for
the conversion; dlib is only used by ``--verify``). The format, as written by dlib's
``serialize()`` overloads (``dlib/serialize.h``, ``dlib/dnn/core.h``, ``layers.h``, ``input.h``,
``loss.h``, ``tensor.h``):

* integers: one header byte (low 4 bits: number of value bytes; 0x80: negative) then the
  magnitude's bytes, little-endian (``pack_int``; 0 is ``01 00``);
* floats: mantissa and exponent as two such integers, value = mantissa * 2**exponent;
* bools: the characters ``'1'`` / ``'0'``; strings: length integer + bytes;
* tensors: version 2, num_samples, k, nr, nc, then the values as raw little-endian float32;
  ``alias_tensor`` (a view into a layer's ``params``): version 1, num_samples, k, nr, nc.

A network ``add_loss_layer<LOSS, add_layer<L1, add_layer<L2, ... input>>>`` is written outside-in
for the *versions* (loss 1, then each ``add_layer`` 2 and each ``add_tag_layer`` /
``add_skip_layer`` 1 from the top layer down to the bottom ``add_layer`` around the input, version
3) and inside-out for the contents: the input layer, then each layer's details followed by its
``add_layer`` bookkeeping (3 bools and 3 tensors, empty in a cleaned net; version 3 adds the
sample expansion factor). Tag and skip layers carry nothing (their ids are template arguments),
so the parser checks the layer sequence against dlib's ``anet_type`` definition, which fixes where
every tag and skip sits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from facexpr.errors import FacexprError

SOURCE_FILE = "dlib_face_recognition_resnet_model_v1.dat"


class DlibFormatError(FacexprError):
    """The file is not the dlib network this converter knows (message says where and why)."""


# --------------------------------------------------------------------------------------------
# dlib's serialization
# --------------------------------------------------------------------------------------------


@dataclass
class Layer:
    """One computational layer of a dlib net, bottom (input side) first.

    ``kind``: con, affine, relu, max_pool, avg_pool, add_prev, fc, or ``tag_or_skip`` (a tag or
    skip layer: the file does not say which). ``arrays``: the parameter arrays, already cut from
    the layer's ``params`` tensor and reshaped to dlib's (n, k, nr, nc) layout.
    """

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    offset: int = 0


@dataclass
class DlibNet:
    loss: dict[str, Any]
    input: dict[str, Any]
    layers: list[Layer]


class Reader:
    """Sequential reader of dlib's serialization primitives; errors name the byte offset."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} at byte {self.pos} of {len(self.data)}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"file ends early (wanted {n} more bytes): truncated download?")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self) -> int:
        head = self.take(1)[0]
        if head & 0x70:
            raise self.fail(f"bad integer header 0x{head:02x}")
        value = int.from_bytes(self.take(head & 0x0F), "little")
        return -value if head & 0x80 else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        return float(np.float32(mantissa * 2.0**exponent))

    def boolean(self) -> bool:
        c = self.take(1)
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool {c!r}")
        return c == b"1"

    def string(self) -> str:
        n = self.integer()
        if not 0 <= n < 256:
            raise self.fail(f"implausible string length {n}")
        return self.take(n).decode("ascii", errors="replace")

    def expect(self, value: int, what: str) -> None:
        got = self.integer()
        if got != value:
            raise self.fail(f"{what}: expected {value}, got {got}")

    def tensor(self) -> np.ndarray:
        self.expect(2, "tensor version")
        shape = tuple(self.integer() for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"negative tensor shape {shape}")
        size = int(np.prod(shape))
        return np.frombuffer(self.take(4 * size), dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, int, int, int]:
        self.expect(1, "alias_tensor version")
        return tuple(self.integer() for _ in range(4))  # type: ignore[return-value]


def _cut(params: np.ndarray, shapes: dict[str, tuple[int, ...]], reader: Reader) -> dict[str, np.ndarray]:
    """Split a layer's flat ``params`` into consecutive views of the given alias shapes."""
    flat = params.reshape(-1)
    out, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        out[name] = flat[start : start + size].reshape(shape).copy()
        start += size
    if start != flat.size:
        raise reader.fail(f"params hold {flat.size} values but the layer's views use {start}")
    return out


def _read_details(r: Reader) -> Layer:
    offset = r.pos
    name = r.string()
    if name == "con_4":
        params = r.tensor()
        filters, rows, cols, sy, sx, py, px = (r.integer() for _ in range(7))
        fshape, bshape = r.alias(), r.alias()
        mult = [r.real() for _ in range(4)]
        arrays = _cut(params, {"filters": fshape, "biases": bshape}, r)
        attrs = {"filters": filters, "kernel": (rows, cols), "stride": (sy, sx), "padding": (py, px),
                 "multipliers": mult}
        return Layer("con", attrs, arrays, offset)
    if name == "affine_":
        params = r.tensor()
        gshape, bshape = r.alias(), r.alias()
        mode = r.integer()
        if mode != 0:
            raise r.fail(f"affine_ in mode {mode}; only CONV_MODE (0) is supported")
        return Layer("affine", {"mode": mode}, _cut(params, {"gamma": gshape, "beta": bshape}, r), offset)
    if name == "relu_":
        return Layer("relu", {}, {}, offset)
    if name == "add_prev_":
        return Layer("add_prev", {}, {}, offset)
    if name in ("max_pool_2", "avg_pool_2"):
        rows, cols, sy, sx, py, px = (r.integer() for _ in range(6))
        kind = "max_pool" if name.startswith("max") else "avg_pool"
        return Layer(kind, {"window": (rows, cols), "stride": (sy, sx), "padding": (py, px)}, {}, offset)
    if name == "fc_2":
        outputs, inputs = r.integer(), r.integer()
        params = r.tensor()
        wshape, bshape = r.alias(), r.alias()
        bias_mode = r.integer()  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        mult = [r.real() for _ in range(4)]
        shapes = {"weights": wshape}
        if bias_mode == 0:
            shapes["biases"] = bshape
        attrs = {"outputs": outputs, "inputs": inputs, "bias": bias_mode == 0, "multipliers": mult}
        return Layer("fc", attrs, _cut(params, shapes, r), offset)
    raise r.fail(f"layer type {name!r} is not supported by this converter")


def _read_bookkeeping(r: Reader) -> None:
    """``add_layer``'s trailing state: 3 bools and x_grad, cached_output, params_grad tensors."""
    for _ in range(3):
        r.boolean()
    for _ in range(3):
        r.tensor()


def read_dlib_net(path: str | Path) -> DlibNet:
    """Parse a dlib ``add_loss_layer`` network file into its layers (bottom first)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DlibFormatError(f"{path}: cannot read ({exc})") from exc
    r = Reader(data, str(path))
    r.expect(1, "add_loss_layer version")
    loss_name = r.string()
    if loss_name != "loss_metric_2":
        raise r.fail(f"loss layer {loss_name!r}: this converter reads loss_metric_2 networks")
    loss = {"name": loss_name, "margin": r.real(), "distance_threshold": r.real()}
    versions: list[int] = []
    while True:  # outer-to-inner versions, down to the add_layer holding the input (version 3)
        v = r.integer()
        if v not in (1, 2, 3):
            raise r.fail(f"unexpected layer version {v}")
        versions.append(v)
        if v == 3:
            break
        if len(versions) > 10_000:
            raise r.fail("no input layer found")
    in_name = r.string()
    if in_name != "input_rgb_image_sized":
        raise r.fail(f"input layer {in_name!r}: this converter reads input_rgb_image_sized")
    inp = {"name": in_name, "mean": [r.real(), r.real(), r.real()], "rows": r.integer(), "cols": r.integer()}
    layers = [_read_details(r)]
    _read_bookkeeping(r)
    inp["sample_expansion_factor"] = r.integer()
    for v in reversed(versions[:-1]):
        if v == 1:
            layers.append(Layer("tag_or_skip", {}, {}, r.pos))
        else:
            layers.append(_read_details(r))
            _read_bookkeeping(r)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unread bytes after the network")
    return DlibNet(loss, inp, layers)


# --------------------------------------------------------------------------------------------
# dlib layers -> IdentityNet state dict
# --------------------------------------------------------------------------------------------


class _Walk:
    """Consumes the layer list in order, checking each against the expected anet_type."""

    def __init__(self, net: DlibNet, name: str) -> None:
        self.layers = net.layers
        self.i = 0
        self.name = name

    def next(self, kind: str, **attrs: Any) -> Layer:
        if self.i >= len(self.layers):
            raise DlibFormatError(f"{self.name}: network ends where a {kind} layer was expected")
        layer = self.layers[self.i]
        if layer.kind != kind:
            raise DlibFormatError(
                f"{self.name}: layer {self.i} (byte {layer.offset}) is {layer.kind}, expected {kind}: "
                "not dlib's face recognition anet_type"
            )
        for key, want in attrs.items():
            if layer.attrs.get(key) != want:
                raise DlibFormatError(
                    f"{self.name}: layer {self.i} ({kind}) has {key}={layer.attrs.get(key)}, expected {want}"
                )
        self.i += 1
        return layer


def _conv(state: dict[str, np.ndarray], prefix: str, layer: Layer, cin: int) -> None:
    w, b = layer.arrays["filters"], layer.arrays["biases"]
    cout = layer.attrs["filters"]
    if w.shape != (cout, cin, *layer.attrs["kernel"]) or b.shape != (1, cout, 1, 1):
        raise DlibFormatError(f"{prefix}: filters {w.shape} / biases {b.shape} do not fit {cin}->{cout}")
    state[f"{prefix}.weight"] = w  # dlib (n, k, nr, nc) = torch (out, in, kh, kw), cross-correlation
    state[f"{prefix}.bias"] = b.reshape(cout)


def _affine(state: dict[str, np.ndarray], prefix: str, layer: Layer, channels: int) -> None:
    g, b = layer.arrays["gamma"], layer.arrays["beta"]
    if g.shape != (1, channels, 1, 1) or b.shape != (1, channels, 1, 1):
        raise DlibFormatError(f"{prefix}: gamma {g.shape} / beta {b.shape} do not fit {channels} channels")
    state[f"{prefix}.weight"] = g.reshape(channels)
    state[f"{prefix}.bias"] = b.reshape(channels)


def to_state_dict(net: DlibNet, name: str = "network") -> dict[str, np.ndarray]:
    """Map a parsed dlib face recognition net onto :class:`IdentityNet`'s parameter names.

    Checks every layer's type, kernel, stride and padding against dlib's ``anet_type`` (see
    :mod:`facexpr.face.identity_net`), in the order dlib stores them (input side first).
    """
    from facexpr.face.identity_net import CHIP_SIZE, STAGES

    if (net.input["rows"], net.input["cols"]) != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFormatError(f"{name}: input is {net.input['rows']}x{net.input['cols']}, expected {CHIP_SIZE}")
    walk = _Walk(net, name)
    state: dict[str, np.ndarray] = {"input_mean": np.asarray(net.input["mean"], np.float32)}
    _conv(state, "conv", walk.next("con", filters=32, kernel=(7, 7), stride=(2, 2), padding=(0, 0)), 3)
    _affine(state, "affine", walk.next("affine"), 32)
    walk.next("relu")
    walk.next("max_pool", window=(3, 3), stride=(2, 2), padding=(0, 0))
    cin, index = 32, 0
    for cout, count, down in STAGES:
        for k in range(count):
            first = down and k == 0
            p = f"blocks.{index}"
            walk.next("tag_or_skip")  # tag1: the block's input
            stride, pad = ((2, 2), (0, 0)) if first else ((1, 1), (1, 1))
            _conv(state, f"{p}.conv1", walk.next("con", filters=cout, kernel=(3, 3), stride=stride, padding=pad), cin)
            _affine(state, f"{p}.affine1", walk.next("affine"), cout)
            walk.next("relu")
            _conv(state, f"{p}.conv2", walk.next("con", filters=cout, kernel=(3, 3), stride=(1, 1), padding=(1, 1)), cout)
            _affine(state, f"{p}.affine2", walk.next("affine"), cout)
            if first:
                walk.next("tag_or_skip")  # tag2: the block's output
                walk.next("tag_or_skip")  # skip1: back to the block's input
                walk.next("avg_pool", window=(2, 2), stride=(2, 2), padding=(0, 0))
            walk.next("add_prev")
            walk.next("relu")
            cin, index = cout, index + 1
    walk.next("avg_pool", window=(0, 0), stride=(1, 1), padding=(0, 0))  # avg_pool_everything
    fc = walk.next("fc", outputs=128, inputs=256, bias=False)
    if fc.arrays["weights"].shape != (256, 128, 1, 1):
        raise DlibFormatError(f"{name}: fc weights {fc.arrays['weights'].shape}, expected (256, 128, 1, 1)")
    state["fc.weight"] = np.ascontiguousarray(fc.arrays["weights"].reshape(256, 128).T)  # dlib: x @ W
    if walk.i != len(net.layers):
        raise DlibFormatError(f"{name}: {len(net.layers) - walk.i} layers after the fc layer")
    return state


# --------------------------------------------------------------------------------------------
# Writing the folder
# --------------------------------------------------------------------------------------------


def _source_info(dat: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"file": dat.name, "sha256": hashlib.sha256(dat.read_bytes()).hexdigest(),
                            "bytes": dat.stat().st_size}
    from importlib.metadata import PackageNotFoundError, version

    try:
        info["package"] = f"face_recognition_models=={version('face_recognition_models')}"
    except PackageNotFoundError:  # a .dat from elsewhere: provenance is the file's hash alone
        info["package"] = "unknown"
    return info


def _previous_verification(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The figures an earlier ``--verify`` recorded for the very same weights, if any."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = isinstance(old, dict) and old.get("weights_sha256") == config["weights_sha256"]
    return old.get("verification") if same else None


def convert(dat: Path, out: Path, verification: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``identity.safetensors`` + ``config.json`` (+ ``MODEL_CARD.md``) into ``out``."""
    import torch
    from safetensors.torch import save

    from facexpr.atomic import atomic_open, fsync_path
    from facexpr.face.identity_net import (
        CHIP_PADDING,
        CHIP_SIZE,
        CONFIG_FILE,
        FORMAT,
        WEIGHTS_FILE,
        IdentityNet,
    )

    net = read_dlib_net(dat)
    arrays = to_state_dict(net, str(dat))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    IdentityNet().load_state_dict(state)  # strict: every name and shape must fit
    blob = save(state, metadata={"format": FORMAT})  # one key: safetensors orders keys randomly
    source = _source_info(dat)
    config = {
        "format": FORMAT,
        "architecture": "dlib-resnet-metric-v1",
        "weights": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "embedding_dim": 128,
        "chip_size": CHIP_SIZE,
        "chip_padding": CHIP_PADDING,
        "input": "dlib-aligned chips (B,3,150,150) RGB in [-1,1]; internally ((x+1)*127.5 - input_mean) / 256",
        "input_mean": [float(m) for m in net.input["mean"]],
        "distance": "euclidean",
        "same_person_threshold": net.loss["distance_threshold"],
        "training_margin": net.loss["margin"],
        "parameters": int(sum(v.size for k, v in arrays.items() if k != "input_mean")),
        "source": source,
        "converted_by": "scripts/convert_dlib_identity.py",
    }
    if verification is None:
        verification = _previous_verification(out / CONFIG_FILE, config)
    if verification:
        config["verification"] = verification
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / WEIGHTS_FILE, "wb") as fh:
        fh.write(blob)
    with atomic_open(out / CONFIG_FILE, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(config, indent=2) + "\n")
    with atomic_open(out / "MODEL_CARD.md", "w", encoding="utf-8") as fh:
        fh.write(model_card(config))
    fsync_path(out)
    return config


def model_card(config: dict[str, Any]) -> str:
    src = config["source"]
    ver = config.get("verification")
    if ver:
        verified = (
            f"On {ver['faces']} real faces ({ver['data']}; the detector found "
            f"{ver['detected_by_dlib']}), chips made by dlib's 5-point landmarks "
            f"and `get_face_chip(size=150, padding=0.25)`, the torch descriptors differ from "
            f"`dlib.face_recognition_model_v1.compute_face_descriptor` (dlib {ver['dlib_version']}) "
            f"by at most {ver['max_abs_diff']:.2e} per element (mean {ver['mean_abs_diff']:.2e}); "
            f"over all {ver['pairs']} pairs the Euclidean distances differ by at most "
            f"{ver['max_pair_distance_diff']:.2e} (Pearson 1 - r = {1 - ver['pair_distance_pearson']:.1e}). "
            f"The chip is exactly what dlib feeds its network: dlib's descriptor of the whole image, "
            f"`compute_face_descriptor(image, shape)`, equals its descriptor of the chip to "
            f"{ver['dlib_image_vs_chip_max_diff']:.1e} (first 20 faces). CPU time per face, batch of 32, "
            f"best of 3, {ver.get('cpu', 'shared machine')} (other users' jobs): dlib "
            f"{ver['ms_per_face']['dlib']:.1f} ms; torch {ver['ms_per_face']['torch_1_thread']:.1f} ms "
            f"(1 thread), {ver['ms_per_face']['torch_2_threads']:.1f} ms (2 threads; dlib's own threading "
            f"is not configurable from Python)."
        )
    else:
        verified = "Not re-verified by the run that wrote this folder (run the converter with --verify N)."
    return f"""# identity-dlib-resnet: dlib's face recognition ResNet in torch

**What it is.** dlib's 128-d face descriptor network (`{src['file']}`, the ResNet "anet_type" of
dlib's `dnn_face_recognition_ex.cpp`: 29 convolutions, input 150x150 RGB aligned chip, trained
with dlib's `loss_metric` — margin {config['training_margin']:.2f}, same-person threshold
{config['same_person_threshold']:.2f} in Euclidean distance). Rebuilt as the torch module
`facexpr.face.identity_net.IdentityNet`; {config['parameters']:,} parameters. Input: dlib-aligned
chips (`FaceChipper`), `(B, 3, 150, 150)` in `[-1, 1]`; output: the same unnormalised descriptor
dlib gives. Differentiable with respect to the chip: for identity losses in training.

**Origin and conversion.** The weights are dlib's, unchanged: facexpr did not train or fine-tune
them. Source file: `{src['file']}` from the `{src.get('package', 'face_recognition_models')}`
distribution (SHA-256 `{src['sha256']}`, {src['bytes']:,} bytes).
`scripts/convert_dlib_identity.py` parses dlib's binary serialization directly (no dlib involved),
checks every layer against the `anet_type` definition and writes `identity.safetensors`
(float32); `config.json` records the weights' SHA-256, which `IdentityNet.from_pretrained` checks.
Re-run: `.venv/bin/python scripts/convert_dlib_identity.py [--verify 300]`.

**Licence.** dlib's model files were released by Davis King (dlib-models repository) into the
public domain / under CC0 1.0 Universal. Verified locally: the installed
`face_recognition_models` distribution (Adam Geitgey's repackaging of the files) states in its
metadata "These models were created by Davis King ... and are licensed in the public domain or
under CC0 1.0 Universal" and ships the CC0 1.0 text as its licence file (its package metadata
separately says "MIT license" for the package itself). Not verified here (no network access
during conversion): the dlib-models README itself and the terms of the training data. As far as
dlib's documentation is recalled here (not checked offline), the network was trained from scratch
on about 3 million faces from the FaceScrub and VGG face datasets plus images gathered from the
web, whose own terms are not stated; treat the descriptors' use accordingly.

**Verification.** {verified} See `tests/test_identity_net.py`.

**Limits.** Same as dlib's model: trained on mostly adult, mostly lighter-skinned web faces; its
LFW accuracy (99.38 %) does not carry over uniformly to other groups, children or poor images.
Descriptors are for measuring and preserving identity in edits, not for any decision about a
person.
"""


# --------------------------------------------------------------------------------------------
# Verification against dlib on real faces
# --------------------------------------------------------------------------------------------


def _real_faces(data: Path, n: int) -> tuple[list[np.ndarray], list[Any], list[str]]:
    """Up to ``n`` (image, 5-point dlib shape, name) triples, half from LFW, half from Taiwanese.

    The largest face of dlib's frontal detector is used; where it finds none (tight crops), the
    whole image is the box, and the name ends with ``*``.
    """
    import csv

    import dlib

    from facexpr.face.identity import _SHAPE_MODEL, model_dir
    from facexpr.imageio import load_image

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_dir() / _SHAPE_MODEL))
    images, shapes, names = [], [], []
    for set_name, count in (("lfw", n - n // 2), ("taiwanese", n // 2)):
        with open(data / set_name / "manifest.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        step = max(1, len(rows) // count)
        for row in rows[::step][:count]:
            rgb = load_image(data / set_name / row["file"]).rgb
            dets = detector(rgb, 1)
            h, w = rgb.shape[:2]
            rect = max(dets, key=lambda d: d.area()) if len(dets) else dlib.rectangle(0, 0, w - 1, h - 1)
            images.append(rgb)
            shapes.append(predictor(rgb, rect))
            names.append(f"{set_name}/{row['file']}" + ("" if len(dets) else "*"))
    return images, shapes, names


def verify(folder: Path, data: Path, n: int) -> dict[str, Any]:
    """Compare the converted network with dlib on ``n`` real faces; returns the figures."""
    import dlib
    import torch

    from facexpr.face.identity import _RECOGNITION_MODEL, model_dir
    from facexpr.face.identity_net import (
        CHIP_PADDING,
        CHIP_SIZE,
        IdentityNet,
        chips_to_tensor,
    )

    images, shapes, names = _real_faces(data, n)
    detected = sum(not name.endswith("*") for name in names)
    chips = np.stack([np.asarray(dlib.get_face_chip(im, s, size=CHIP_SIZE, padding=CHIP_PADDING)) for im, s in zip(images, shapes)])
    rec = dlib.face_recognition_model_v1(str(model_dir() / _RECOGNITION_MODEL))
    ref = np.stack([np.asarray(rec.compute_face_descriptor(c)) for c in chips]).astype(np.float64)
    whole = np.stack([np.asarray(rec.compute_face_descriptor(im, s)) for im, s in zip(images[:20], shapes[:20])])
    net = IdentityNet.from_pretrained(folder)
    ours = net.embed_chips(chips).astype(np.float64)
    diff = np.abs(ours - ref)
    iu = np.triu_indices(len(chips), 1)
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)[iu]
    d_ours = np.linalg.norm(ours[:, None] - ours[None], axis=-1)[iu]

    batch = chips[:32]
    x = chips_to_tensor(batch)

    def best_ms(fn: Any, repeats: int = 3) -> float:
        """Best of ``repeats`` timed calls, in ms per face (the machine may be shared)."""
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) * 1000 / len(batch)

    load_before = os.getloadavg()[0]
    timings = {"dlib": best_ms(lambda: rec.compute_face_descriptor(list(batch)))}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            timings[f"torch_{threads}_thread{'s' if threads > 1 else ''}"] = best_ms(lambda: net.features(x))
    torch.set_num_threads(1)
    return {
        "faces": len(chips),
        "detected_by_dlib": int(detected),
        "data": "LFW + Taiwanese Facial Expression DB photos, dlib frontal detector (whole image when it finds none)",
        "dlib_version": dlib.__version__,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "pairs": len(d_ref),
        "max_pair_distance_diff": float(np.abs(d_ours - d_ref).max()),
        "pair_distance_pearson": float(np.corrcoef(d_ours, d_ref)[0, 1]),
        "dlib_image_vs_chip_max_diff": float(np.abs(whole - ref[:20]).max()),
        "ms_per_face": timings,
        "cpu": f"{os.cpu_count()} cores, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} while timing",
    }


def main(argv: list[str] | None = None) -> int:
    from facexpr.face.identity_net import shipped_identity_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dat", type=Path, help=f"dlib's {SOURCE_FILE} (default: from face_recognition_models)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped one)")
    parser.add_argument("--verify", type=int, default=0, metavar="N",
                        help="compare with dlib on N real faces from --data and record the figures")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder with lfw/ and taiwanese/ (for --verify)")
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
        if args.dat is None:
            from facexpr.face.identity import model_dir

            args.dat = model_dir() / SOURCE_FILE
        out = args.out or shipped_identity_dir()
        config = convert(args.dat, out)
        if args.verify:
            figures = verify(out, args.data, args.verify)
            config = convert(args.dat, out, figures)
            print(json.dumps(figures, indent=2))
    except FacexprError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({config['parameters']:,} parameters, weights sha256 {config['weights_sha256'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
