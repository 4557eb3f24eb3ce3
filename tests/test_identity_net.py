"""The torch port of dlib's face descriptor (facexpr.face.identity_net) and the identity losses.

The real-face tests read ../shared/data (skipped with a reason when absent). Measured on 300 real
faces (scripts/convert_dlib_identity.py --verify 300): max element difference 4.6e-7, max pair
distance difference 7.7e-7; the tolerances below leave a margin of ~20x for other CPUs/BLAS.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facexpr.errors import ConfigError, FacexprError
from facexpr.face.identity_net import (
    CHIP_SIZE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    FaceChipper,
    IdentityNet,
    chips_to_tensor,
    shipped_identity_dir,
)
from facexpr.losses import identity_loss, triplet_loss

REPO = Path(__file__).resolve().parents[1]
MAX_ELEMENT_DIFF = 1e-5
MAX_DISTANCE_DIFF = 1e-5

torch.set_num_threads(1)


def _converter():
    spec = importlib.util.spec_from_file_location("convert_dlib_identity", REPO / "scripts" / "convert_dlib_identity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("convert_dlib_identity", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def net() -> IdentityNet:
    return IdentityNet.from_pretrained()


@pytest.fixture(scope="module")
def dlib_rec():
    dlib = pytest.importorskip("dlib")
    from facexpr.face.identity import _RECOGNITION_MODEL, model_dir

    return dlib.face_recognition_model_v1(str(model_dir() / _RECOGNITION_MODEL))


@pytest.fixture(scope="module")
def real_faces(shared_data: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """24 real photos (12 LFW, 12 Taiwanese) and a face box in each (dlib's detector, or the
    whole image for tight crops where it finds none)."""
    import dlib

    from facexpr.imageio import load_image

    detector = dlib.get_frontal_face_detector()
    images, boxes = [], []
    for name in ("lfw", "taiwanese"):
        with open(shared_data / name / "manifest.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows[:: len(rows) // 12][:12]:
            rgb = load_image(shared_data / name / row["file"]).rgb
            dets = detector(rgb, 1)
            h, w = rgb.shape[:2]
            d = max(dets, key=lambda r: r.area()) if len(dets) else dlib.rectangle(0, 0, w - 1, h - 1)
            images.append(rgb)
            boxes.append([d.left(), d.top(), d.right(), d.bottom()])
    return images, np.asarray(boxes, np.float64)


# ---- agreement with dlib ----------------------------------------------------------------


def test_torch_matches_dlib_on_real_faces(net, dlib_rec, real_faces) -> None:
    images, boxes = real_faces
    chips = FaceChipper().chips(images, boxes)
    assert chips.shape == (len(images), CHIP_SIZE, CHIP_SIZE, 3) and chips.dtype == np.uint8
    ref = np.stack([np.asarray(dlib_rec.compute_face_descriptor(c)) for c in chips])
    ours = net.embed_chips(chips, batch_size=8).astype(np.float64)
    assert ours.shape == (len(images), 128)
    assert np.abs(ours - ref).max() < MAX_ELEMENT_DIFF
    iu = np.triu_indices(len(chips), 1)
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)[iu]
    d_ours = np.linalg.norm(ours[:, None] - ours[None], axis=-1)[iu]
    assert np.abs(d_ours - d_ref).max() < MAX_DISTANCE_DIFF
    assert np.corrcoef(d_ours, d_ref)[0, 1] > 1 - 1e-9
    # The [-1, 1] training path gives the same descriptors as the uint8 path.
    x = chips_to_tensor(chips[:4]) / 127.5 - 1.0
    with torch.no_grad():
        assert np.abs(net(x).numpy() - ours[:4]).max() < MAX_ELEMENT_DIFF


def test_chip_is_what_dlib_embeds(net, real_faces) -> None:
    """FaceChipper + IdentityNet on a whole photo = IdentityEncoder (dlib aligning it itself)."""
    from facexpr.face.identity import IdentityEncoder

    images, boxes = real_faces
    chipper = FaceChipper()
    with IdentityEncoder() as enc:
        for rgb, box in list(zip(images, boxes))[::6]:
            ref = enc.embed(rgb, box)
            ours = net.embed_chips(chipper.chip(rgb, box))[0]
            assert np.abs(ours - ref).max() < MAX_ELEMENT_DIFF
            # The same chip from dlib's 5 landmarks given explicitly.
            points = chipper.landmarks(rgb, box)
            assert points.shape == (5, 2)
            np.testing.assert_array_equal(chipper.chip(rgb, points), chipper.chip(rgb, box))


def test_different_people_are_far_apart(net, real_faces) -> None:
    """Sanity on real faces: 12 different LFW people lie beyond dlib's 0.6 threshold on average."""
    images, boxes = real_faces
    emb = net.embed_chips(FaceChipper().chips(images, boxes))
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    assert np.isfinite(d).all() and np.allclose(np.diag(d), 0)
    assert d[np.triu_indices(12, 1)].mean() > 0.6


# ---- differentiability --------------------------------------------------------------------


def test_gradients_flow_to_the_chip(net) -> None:
    torch.manual_seed(0)
    x = (torch.rand(2, 3, CHIP_SIZE, CHIP_SIZE) * 2 - 1).requires_grad_(True)
    target = torch.randn(2, 128) * 0.1
    loss = identity_loss(net(x), target)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())  # frozen by default
    assert not any(p.requires_grad for p in net.parameters())
    trainable = IdentityNet.from_pretrained(trainable=True)
    identity_loss(trainable(x.detach()), target).backward()
    assert trainable.conv.weight.grad is not None


def test_forward_refuses_wrong_shapes(net) -> None:
    with pytest.raises(ConfigError, match="150"):
        net(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ConfigError, match="uint8"):
        net.embed_chips(np.zeros((1, CHIP_SIZE, CHIP_SIZE, 3), np.float32))


def test_pad_add_matches_dlib_semantics() -> None:
    from facexpr.face.identity_net import pad_add

    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 1, 4, 4), 10.0)
    out = pad_add(a, b)
    assert out.shape == (1, 2, 4, 4)
    assert out[0, 0, :3, :3].eq(11).all() and out[0, 0, 3].eq(10).all() and out[0, 1, :3, :3].eq(1).all()
    assert out[0, 1, 3].eq(0).all() and out[0, 1, :, 3].eq(0).all()


# ---- losses ---------------------------------------------------------------------------------


def test_identity_loss_is_mean_euclidean() -> None:
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert identity_loss(a, b).item() == pytest.approx((5.0 + 0.0) / 2)
    a.requires_grad_(True)
    identity_loss(a, b).backward()
    assert torch.isfinite(a.grad).all()  # zero distance: zero subgradient, not NaN
    with pytest.raises(ValueError):
        identity_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_triplet_loss_zero_when_margin_met_and_positive_otherwise() -> None:
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    positive = torch.tensor([[0.3, 0.0], [0.0, 0.5]])
    negative = torch.tensor([[1.0, 0.0], [0.0, 0.9]])
    # d_ap = (0.3, 0.5), d_an = (1.0, 0.9): margin 0.2 met by both (0.3-1.0+0.2 < 0, 0.5-0.9+0.2 < 0).
    assert triplet_loss(anchor, positive, negative, margin=0.2).item() == 0.0
    # margin 0.5: hinge (0.3-1.0+0.5, 0.5-0.9+0.5) = (0, 0.1) -> mean 0.05.
    assert triplet_loss(anchor, positive, negative, margin=0.5).item() == pytest.approx(0.05)
    # squared distances: (0.09-1.0+0.5, 0.25-0.81+0.5) = (-0.41, -0.06) -> 0; margin 0.7 -> (0, 0.14) -> 0.07.
    assert triplet_loss(anchor, positive, negative, margin=0.5, squared=True).item() == 0.0
    assert triplet_loss(anchor, positive, negative, margin=0.7, squared=True).item() == pytest.approx(0.07)
    # Gradient pulls the positive in and pushes the negative out where the hinge is active.
    p = positive.clone().requires_grad_(True)
    n = negative.clone().requires_grad_(True)
    triplet_loss(anchor, p, n, margin=0.5).backward()
    assert p.grad[0].abs().sum() == 0 and p.grad[1, 1] > 0 and n.grad[1, 1] < 0


# ---- loading and conversion -----------------------------------------------------------------


def _copy_shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "identity"
    shutil.copytree(shipped_identity_dir(), folder)
    return folder


def test_shipped_folder_is_complete() -> None:
    folder = shipped_identity_dir()
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["format"] == "facexpr-identity" and config["format"] != "facexpr-model"
    assert (folder / WEIGHTS_FILE).is_file() and (folder / "MODEL_CARD.md").is_file()
    card = (folder / "MODEL_CARD.md").read_text()
    assert "CC0" in card and config["source"]["sha256"] in card


def test_loading_refuses_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FacexprError, match="not an identity network folder"):
        IdentityNet.from_pretrained(tmp_path / "nothing")
    folder = _copy_shipped(tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(FacexprError, match="identity.safetensors"):
        IdentityNet.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_loading_refuses_a_damaged_file(tmp_path: Path, damage: str) -> None:
    folder = _copy_shipped(tmp_path)
    path = folder / WEIGHTS_FILE
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        blob[len(blob) // 2] ^= 0x40
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    with pytest.raises(FacexprError, match="damaged"):
        IdentityNet.from_pretrained(folder)


def test_loading_refuses_unreadable_or_mismatched_weights(tmp_path: Path) -> None:
    import hashlib

    from safetensors.torch import save

    folder = _copy_shipped(tmp_path)
    cfg_path = folder / CONFIG_FILE
    config = json.loads(cfg_path.read_text())
    for blob, message in (
        (b"not a safetensors file at all", "not a readable safetensors"),
        (save({"conv.weight": torch.zeros(3)}), "does not match"),
    ):
        (folder / WEIGHTS_FILE).write_bytes(blob)
        config["weights_sha256"] = hashlib.sha256(blob).hexdigest()
        cfg_path.write_text(json.dumps(config))
        with pytest.raises(FacexprError, match=message):
            IdentityNet.from_pretrained(folder)
    cfg_path.write_text(json.dumps({**config, "format": "facexpr-model"}))
    with pytest.raises(FacexprError, match="format"):
        IdentityNet.from_pretrained(folder)
    cfg_path.write_text("{not json")
    with pytest.raises(FacexprError, match="JSON"):
        IdentityNet.from_pretrained(folder)


def test_converter_reproduces_the_shipped_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from facexpr.face.identity import model_dir

    conv = _converter()
    config = conv.convert(model_dir() / conv.SOURCE_FILE, tmp_path / "out")
    shipped_bytes = (shipped_identity_dir() / WEIGHTS_FILE).read_bytes()
    assert (tmp_path / "out" / WEIGHTS_FILE).read_bytes() == shipped_bytes  # byte-reproducible
    assert IdentityNet.from_pretrained(tmp_path / "out") is not None
    assert config["weights_sha256"] == json.loads((shipped_identity_dir() / CONFIG_FILE).read_text())["weights_sha256"]
    parsed = conv.read_dlib_net(model_dir() / conv.SOURCE_FILE)
    assert parsed.loss["margin"] == pytest.approx(0.04) and parsed.loss["distance_threshold"] == pytest.approx(0.6)
    assert parsed.input["mean"] == pytest.approx([122.782, 117.001, 104.298], abs=1e-4)
    state = conv.to_state_dict(parsed)
    shipped = load_file(str(shipped_identity_dir() / WEIGHTS_FILE))
    assert set(state) == set(shipped)
    for key, value in state.items():
        np.testing.assert_array_equal(value, shipped[key].numpy(), err_msg=key)


def test_converter_refuses_a_truncated_dat(tmp_path: Path) -> None:
    from facexpr.face.identity import model_dir

    conv = _converter()
    src = model_dir() / conv.SOURCE_FILE
    bad = tmp_path / "cut.dat"
    with open(src, "rb") as fh:
        bad.write_bytes(fh.read(100_000))
    with pytest.raises(FacexprError, match="truncated"):
        conv.read_dlib_net(bad)
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x01\x01\x01\x05hello")
    with pytest.raises(FacexprError, match="loss layer"):
        conv.read_dlib_net(other)
