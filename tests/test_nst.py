"""Face-restricted neural style transfer (pipeline/nst.py) and the VGG19 loader (models/vgg.py).

The optimisation tests run on real photos (skipped without ../shared/data) with a randomly
initialised VGG19 cut at relu3_1 on 96 px crops: they check the mechanics (the loss falls, only
the region moves, parts select regions), not the look, which needs trained features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facexpr.errors import ConfigError, NoFaceError
from facexpr.models.vgg import VGG19_LAYERS, VGG19Features, load_vgg19_state
from facexpr.pipeline.nst import (
    PARTS,
    StyleTransfer,
    identity_network_available,
    load_feature_network,
    masked_gram,
    part_mask,
)


TORCH_THREADS = 1  # see conftest.torch_threads


FAST = {"size": 96, "steps": 12, "content_layer": "relu3_1", "style_layers": ("relu1_1", "relu2_1", "relu3_1")}


# --------------------------------------------------------------------------------------------
# VGG19 loader
# --------------------------------------------------------------------------------------------


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_vgg19_layout_matches_torchvision_names() -> None:
    assert VGG19_LAYERS["conv1_1"] == 0 and VGG19_LAYERS["conv4_2"] == 21 and VGG19_LAYERS["relu5_1"] == 29
    net = VGG19Features(None, layers=("relu5_1",))
    keys = [k for k in net.state_dict() if k.endswith(".weight")]
    assert keys == [f"features.{i}.weight" for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)]
    out = net(torch.rand(1, 3, 64, 64), ("relu1_1", "relu3_1", "relu5_1"))
    assert out["relu1_1"].shape == (1, 64, 64, 64)
    assert out["relu3_1"].shape == (1, 256, 16, 16)
    assert out["relu5_1"].shape == (1, 512, 4, 4)


def test_vgg19_loads_random_weights_from_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = VGG19Features(None, layers=("relu5_4",))  # the full trunk: every conv of a torchvision file
    state = dict(src.state_dict())
    state["classifier.0.weight"] = torch.zeros(4, 4)  # a full torchvision file has these: ignored
    path = _save(state, tmp_path / "vgg19.safetensors")
    net = VGG19Features(path, layers=("relu3_1",))
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(net(x, ("relu3_1",))["relu3_1"], src(x, ("relu3_1",))["relu3_1"])
    # bare "N.weight" keys (a saved `vgg.features` module) load too
    bare = {k.removeprefix("features."): v for k, v in src.state_dict().items()}
    net2 = VGG19Features(_save(bare, tmp_path / "bare.safetensors"), layers=("relu3_1",))
    assert torch.equal(net2(x, ("relu3_1",))["relu3_1"], src(x, ("relu3_1",))["relu3_1"])


def test_vgg19_refuses_wrong_shapes_missing_keys_and_pickles(tmp_path: Path) -> None:
    state = dict(VGG19Features(None, layers=("relu3_1",)).state_dict())
    wrong = dict(state)
    wrong["features.5.weight"] = torch.zeros(128, 32, 3, 3)  # VGG16-ish / truncated channels
    with pytest.raises(ConfigError, match=r"wrong shape.*features\.5\.weight.*\(128, 64, 3, 3\)"):
        VGG19Features(_save(wrong, tmp_path / "wrong.safetensors"), layers=("relu3_1",))
    missing = {k: v for k, v in state.items() if not k.startswith("features.10.")}
    with pytest.raises(ConfigError, match=r"missing.*features\.10\.weight"):
        VGG19Features(_save(missing, tmp_path / "missing.safetensors"), layers=("relu3_1",))
    pth = tmp_path / "vgg19.pth"
    pth.write_bytes(b"not read")
    with pytest.raises(ConfigError, match="only .safetensors"):
        load_vgg19_state(pth)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        load_vgg19_state(junk)
    with pytest.raises(ConfigError, match="not found"):
        load_vgg19_state(tmp_path / "absent.safetensors")
    with pytest.raises(ConfigError, match="unknown VGG19 layer"):
        VGG19Features(None, layers=("conv6_1",))


def test_feature_network_names() -> None:
    with pytest.raises(ConfigError, match="needs vgg_weights"):
        load_feature_network("vgg19")
    with pytest.raises(ConfigError, match="unknown feature network"):
        load_feature_network("resnet")
    net = load_feature_network("vgg19-random")
    assert net.content_layer == "relu4_2" and len(net.style_layers) == 5


def test_masked_gram_ignores_outside_positions() -> None:
    f = torch.rand(1, 4, 8, 8)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:5, 3:7] = 1.0
    g = masked_gram(f, m)
    g2 = masked_gram(torch.where(m > 0, f, torch.rand_like(f) * 100), m)
    assert torch.allclose(g, g2, atol=1e-5)
    inside = f[..., 2:5, 3:7].reshape(4, -1)
    assert torch.allclose(g[0], inside @ inside.T / inside.shape[1], atol=1e-6)


# --------------------------------------------------------------------------------------------
# Real photos
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(shared_data: Path) -> dict[str, np.ndarray]:
    """A 1024 px portrait (made 512 px to keep things quick) and the happy misc photo, with landmarks."""
    import cv2

    from facexpr.face.detect import FaceAnalyzer
    from facexpr.imageio import load_image

    photo = load_image(min((shared_data / "inputs" / "portraits_1024").glob("*.jpg"))).rgb
    photo = cv2.resize(photo, (512, 512), interpolation=cv2.INTER_AREA)
    ref = load_image(next((shared_data / "inputs" / "misc").glob("*-hao-*"))).rgb
    with FaceAnalyzer() as fa:
        fp, fr = fa.analyze(photo, complete=False), fa.analyze(ref, complete=False)
    assert fp and fr
    return {"photo": photo, "ref": ref, "lm_photo": fp[0].landmarks, "lm_ref": fr[0].landmarks}


@pytest.fixture(scope="module")
def vgg_random() -> object:
    torch.manual_seed(0)
    return load_feature_network("vgg19-random")


@pytest.fixture(scope="module")
def run(pair: dict[str, np.ndarray], vgg_random: object):
    """Transfer with the random VGG19 (built once), fast settings, and the pair's landmarks."""
    return lambda parts, photo=None, **kw: _run(pair, vgg_random, parts, photo, **kw)


def _run(pair: dict[str, np.ndarray], net: object, parts: tuple[str, ...], photo: np.ndarray | None = None,
         **kw: object):
    settings = {**FAST, **kw}
    with StyleTransfer(features=net, **settings) as nst:
        return nst.transfer(pair["photo"] if photo is None else photo, pair["ref"], parts=parts,
                            photo_face=pair["lm_photo"], reference_face=pair["lm_ref"], progress=False)


def test_part_masks_on_a_real_face(pair: dict[str, np.ndarray]) -> None:
    from facexpr.face.align import align_face

    a = align_face(pair["photo"], pair["lm_photo"], 128)
    masks = {p: part_mask(a.landmarks, 128, (p,)) for p in PARTS}
    for p, m in masks.items():
        assert m.dtype == np.float32 and m.shape == (128, 128) and 0 < m.max() <= 1, p
        assert m[0].max() == 0 and m[:, -1].max() == 0, p  # nothing at the crop border
    for small in ("lips", "eyes", "brows"):
        assert (masks[small] > 0.5).sum() < 0.25 * (masks["face"] > 0.5).sum()
        assert not ((masks[small] > 0.5) & (masks["skin"] > 0.5)).any()  # skin has the holes
    assert not ((masks["lips"] > 0) & (masks["eyes"] > 0)).any()
    lips_y = np.nonzero(masks["lips"])[0].mean()
    eyes_y = np.nonzero(masks["eyes"])[0].mean()
    brows_y = np.nonzero(masks["brows"])[0].mean()
    assert brows_y < eyes_y < lips_y
    union = part_mask(a.landmarks, 128, "lips,eyes")
    assert np.array_equal(union, np.maximum(masks["lips"], masks["eyes"]))
    with pytest.raises(ConfigError, match="unknown face part"):
        part_mask(a.landmarks, 128, ("nose",))


def test_loss_falls_and_outside_is_byte_identical(pair: dict[str, np.ndarray], run) -> None:
    res = run(("face",))
    losses = res.losses
    assert len(losses) == FAST["steps"] and np.isfinite(losses).all()
    assert res.final["total"] < 0.5 * losses[0]
    assert set(res.history[0]) == {"total", "content", "style", "tv"}
    photo = pair["photo"]
    assert res.image.shape == photo.shape and res.image.dtype == np.uint8
    changed = (res.image != photo).any(axis=2)
    outside = res.image_mask == 0
    assert changed.sum() > 1000  # it did something
    assert not changed[outside].any()  # byte-identical outside the region
    assert np.array_equal(res.image[outside], photo[outside])
    # the region is the face: well inside the 512 px photo
    ys, xs = np.nonzero(res.image_mask)
    assert 0 < xs.min() and xs.max() < 511 and 0 < ys.min() and ys.max() < 511


def test_parts_change_only_the_chosen_parts(pair: dict[str, np.ndarray], run) -> None:
    photo = pair["photo"]
    lips = run(("lips",), steps=5)
    eyes = run(("eyes",), steps=5)
    for res in (lips, eyes):
        changed = (res.image != photo).any(axis=2)
        assert changed.any()
        assert not changed[res.image_mask == 0].any()
    # the two regions do not overlap, and each edit leaves the other part's pixels alone
    assert not ((lips.image_mask > 0) & (eyes.image_mask > 0)).any()
    assert np.array_equal(lips.image[eyes.image_mask > 0], photo[eyes.image_mask > 0])
    assert np.array_equal(eyes.image[lips.image_mask > 0], photo[lips.image_mask > 0])
    # the lips region sits around the mouth landmarks, the eyes region around the eyes
    lm = pair["lm_photo"]
    mouth_y, eye_y = lm[[13, 14], 1].mean(), lm[[159, 386], 1].mean()
    assert abs(np.nonzero(lips.image_mask)[0].mean() - mouth_y) < 15
    assert abs(np.nonzero(eyes.image_mask)[0].mean() - eye_y) < 15


def test_grey_photo_stays_grey_and_alpha_is_kept(pair: dict[str, np.ndarray], run) -> None:
    grey = pair["photo"].mean(axis=2).round().astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 200)])
    res = run(("lips",), photo=rgba, steps=4)
    assert res.image.shape == rgba.shape
    assert np.array_equal(res.image[..., 3], rgba[..., 3])
    assert np.array_equal(res.image[..., 0], res.image[..., 1]) and np.array_equal(res.image[..., 1], res.image[..., 2])
    assert (res.image[..., :3] != rgba[..., :3]).any()


def test_bad_inputs(pair: dict[str, np.ndarray], vgg_random: object) -> None:
    with pytest.raises(ConfigError, match="steps"):
        StyleTransfer(features=vgg_random, steps=0)
    with pytest.raises(ConfigError, match="optimizer"):
        StyleTransfer(features=vgg_random, optimizer="sgd")
    with pytest.raises(ConfigError, match="unknown NST setting"):
        StyleTransfer(features=vgg_random, stepz=3)
    with pytest.raises(ConfigError, match="one weight per style layer"):
        StyleTransfer(features=vgg_random, style_layer_weights=(1.0, 2.0))
    nst = StyleTransfer(features=vgg_random, **FAST)
    with pytest.raises(ConfigError, match="uint8"):
        nst.transfer(pair["photo"].astype(np.float32), pair["ref"], photo_face=pair["lm_photo"],
                     reference_face=pair["lm_ref"], progress=False)
    with pytest.raises(NoFaceError):
        nst.transfer(np.full((200, 200, 3), 128, np.uint8), pair["ref"], reference_face=pair["lm_ref"], progress=False)
    nst.close()


def test_progress_callback_and_adam(pair: dict[str, np.ndarray], vgg_random: object) -> None:
    seen: list[tuple[int, int]] = []
    with StyleTransfer(features=vgg_random, **{**FAST, "steps": 6, "optimizer": "adam", "lr": 0.05}) as nst:
        res = nst.transfer(pair["photo"], pair["ref"], parts="brows", photo_face=pair["lm_photo"],
                           reference_face=pair["lm_ref"], progress=lambda i, n, loss: seen.append((i, n)))
    assert seen == [(i, 6) for i in range(1, 7)]
    assert res.final["total"] < res.history[0]["total"]


@pytest.mark.skipif(not identity_network_available(), reason="facexpr.face.identity_net and its weights are not installed")
def test_default_identity_features(pair: dict[str, np.ndarray]) -> None:
    with StyleTransfer(size=96, steps=8) as nst:
        res = nst.transfer(pair["photo"], pair["ref"], parts="lips", photo_face=pair["lm_photo"],
                           reference_face=pair["lm_ref"], progress=False)
    assert "identity" in res.network.lower() or "dlib" in res.network.lower()
    assert res.final["total"] < res.history[0]["total"]
    changed = (res.image != pair["photo"]).any(axis=2)
    assert not changed[res.image_mask == 0].any()


def test_identity_features_with_untrained_weights(pair: dict[str, np.ndarray]) -> None:
    """The identity network's tap points and input scaling (its real weights may be absent)."""
    net = load_feature_network("identity-random")
    f = net(torch.rand(1, 3, 128, 128), ("stem", "res32", "res64", "res128", "res256"))
    # any crop is brought to dlib's chip scale (~170 px for the whole crop): stem at stride 4
    assert f["stem"].shape[1] == 32 and 38 <= f["stem"].shape[2] == f["stem"].shape[3] <= 44
    assert f["res64"].shape[1] == 64 and f["res128"].shape[1] == 128 and f["res256"].shape[1] == 256
    assert net(torch.rand(1, 3, 320, 320), ("res64",))["res64"].shape == f["res64"].shape
    with pytest.raises(ConfigError, match="unknown identity-network layer"):
        net(torch.rand(1, 3, 64, 64), ("relu1_1",))
    torch.manual_seed(0)
    with StyleTransfer(features=net, size=96, steps=6) as nst:
        res = nst.transfer(pair["photo"], pair["ref"], parts="lips", photo_face=pair["lm_photo"],
                           reference_face=pair["lm_ref"], progress=False)
    assert res.content_layer == "res64" and res.style_layers == ("stem", "res32", "res64", "res128")
    assert res.final["total"] < res.history[0]["total"]


def test_editor_runs_the_shipped_nst_model_with_like_only(pair: dict[str, np.ndarray], vgg_random: object,
                                                          tmp_path: Path, shared_data: Path) -> None:
    """`--model nst` is a shipped model folder: the Editor restyles each face after the --like
    photo and refuses emotions and AUs with what to use instead."""
    from click.testing import CliRunner

    from facexpr.cli import cli
    from facexpr.pipeline import Editor
    from facexpr.pipeline.registry import resolve_model
    from facexpr.pipeline.targets import EmotionTarget

    info = resolve_model("nst")
    assert info.family == "nst" and info.condition.kind == "reference"
    with Editor(StyleTransfer(features=vgg_random, **FAST), info) as editor:
        target = editor.reference(pair["ref"], "happy.jpg")
        result = editor.edit(pair["photo"], target, faces="largest", details=True)
        changed = np.abs(result.image.astype(int) - pair["photo"].astype(int)).max(axis=2) > 0
        assert changed.any() and not changed[:60].any()  # the face changed, the hair above it did not
        assert result.faces[0].mask.max() > 0.5
        with pytest.raises(ConfigError, match="--like"):
            editor.edit(pair["photo"], EmotionTarget("happy"))
        with pytest.raises(ConfigError, match="--like"):  # refused before the photo is searched for a face
            editor.edit(np.zeros((64, 64, 3), np.uint8), EmotionTarget("happy"))
    photos = sorted((shared_data / "inputs" / "portraits_1024").glob("*.jpg"))[:2]
    res = CliRunner().invoke(cli, ["edit", *map(str, photos), "-o", str(tmp_path / "o"), "--model", "nst",
                                   "--emotion", "happy"])
    # one refusal for the whole call, not one failure per photo
    assert isinstance(res.exception, ConfigError) and "use --like REFERENCE" in str(res.exception)
    assert "failed" not in res.output and not (tmp_path / "o").exists()


def test_evaluate_scores_style_transfer_against_reference_photos(taiwanese_6x7: Path, vgg_random: object,
                                                                 tmp_path: Path) -> None:
    """`facexpr evaluate --model nst` asks each emotion through a photo of *another* validation
    person labelled with it, cycles back with the face's own photo as the reference, leaves the
    pixels outside the face alone, and names every reference in samples.csv."""
    import csv

    from facexpr.data.dataset import PreparedDataset
    from facexpr.evaluation.evaluate import EvalConfig, evaluate
    from facexpr.expression import resolve_emotion
    from facexpr.pipeline import Editor
    from facexpr.pipeline.registry import resolve_model

    data = PreparedDataset(taiwanese_6x7)
    cfg = EvalConfig(limit=1, val_fraction=0.34, sample_faces=1, skip=("aus", "identity", "fid", "paired"))
    with Editor(StyleTransfer(features=vgg_random, **FAST), resolve_model("nst")) as editor:
        bars = []
        transfer = editor.nst.transfer
        editor.nst.transfer = lambda *a, **kw: bars.append(kw["progress"]) or transfer(*a, **kw)
        m = evaluate(editor, data, tmp_path / "ev", cfg, progress=False)
        assert bars == [False] * 14  # 7 edits + 7 cycle edits, none with its own bar
        assert editor.progress  # and the editor's bar is back on afterwards
    assert m["model"]["condition"] == "reference photo"
    assert m["counts"] == {"faces": 1, "targets_per_face": 7, "edits": 7}
    assert m["cycle"]["ssim"]["count"] == 7 and 0.5 < m["cycle"]["ssim"]["value"] < 1.0
    assert m["fidelity"]["changed_outside_face"]["value"] < 0.01
    rows = list(csv.DictReader((tmp_path / "ev" / "samples.csv").open()))
    ident = {f: i for f, i in zip(data.files, data.identities)}
    expr = {f: e for f, e in zip(data.files, data.expressions)}
    assert {r["emotion"] for r in rows} == {"angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"}
    for r in rows:
        assert ident[r["reference"]] != ident[r["file"]]
        assert resolve_emotion(expr[r["reference"]]) == r["emotion"]
