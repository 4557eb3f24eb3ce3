"""Mouth-interior inpainting: geometry, the network's composing contract, files, and training.

The geometry and network tests are synthetic; the training tests prepare 12 real Taiwanese photos
(skipped without the shared data) and train a tiny net through the training contract
(``facexpr train --model mouth``): it learns, resumes bit-identically, exports a folder
``load_mouth`` reads, and the ``train-mouth`` alias runs the same recipe.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facexpr.face import mouth as FM
from facexpr.face.align import matrix_scale, mean_face, transform_points
from facexpr.models.mouth import (
    MouthConfig,
    MouthCritic,
    MouthInpainter,
    count_parameters,
    fill_mouth,
    load_mouth,
    read_mouth_config,
    save_mouth,
)

from helpers import states_equal


def _face(size: int, open_px: float = 0.0, angle_deg: float = 0.0) -> np.ndarray:
    """Template landmarks in a ``size`` image, the lower inner lip pushed down by ``open_px``
    (x ``size / 256``), the whole face rotated by ``angle_deg`` about the image centre."""
    lm = mean_face().astype(np.float64) * size - 0.5
    lower = list(FM.LOWER_INNER_LIP[1:-1])
    lm[lower, 1] += open_px * size / 256
    if angle_deg:
        a = math.radians(angle_deg)
        c = (size - 1) / 2
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        lm[:, :2] = (lm[:, :2] - c) @ rot.T + c
    return lm


@pytest.fixture(scope="module")
def net() -> MouthInpainter:
    torch.manual_seed(0)
    return MouthInpainter(MouthConfig()).eval().requires_grad_(False)


# -- geometry -------------------------------------------------------------------------------------


def test_inner_lip_polygon_and_opening() -> None:
    assert len(FM.INNER_LIP) == 20 and len(set(FM.INNER_LIP)) == 20
    closed, opened = _face(256), _face(256, open_px=20)
    assert FM.inner_lip_polygon(closed).shape == (20, 2)
    assert FM.lip_opening(closed) < 0.03 < FM.lip_opening(opened)  # the mean face is barely parted
    # scale-free: the same face at 4x the resolution has the same opening
    assert FM.lip_opening(_face(1024, open_px=20)) == pytest.approx(FM.lip_opening(opened), rel=1e-6)
    assert math.isnan(FM.lip_opening(np.full((478, 3), np.nan)))


def test_mouth_frame_is_level_centred_and_scale_free() -> None:
    size = 64
    for angle in (0.0, 25.0):
        lm = _face(512, open_px=10, angle_deg=angle)
        m = FM.mouth_frame(lm, size)
        pts = transform_points(lm[:, :2], m)
        eyes = pts[list(FM.OUTER_EYE_CORNERS)]
        assert abs(eyes[1, 1] - eyes[0, 1]) < 1e-6  # eye line horizontal
        corners = pts[list(FM.MOUTH_CORNERS)]
        assert np.linalg.norm(corners[1] - corners[0]) == pytest.approx(0.55 * size, rel=1e-6)
        poly = pts[list(FM.INNER_LIP)]
        assert abs(poly[:, 0].mean() - (size - 1) / 2) < 2 and abs(poly[:, 1].mean() - (size - 1) / 2) < 4
    a = transform_points(_face(256, 10)[:, :2], FM.mouth_frame(_face(256, 10), size))
    b = transform_points(_face(1024, 10)[:, :2], FM.mouth_frame(_face(1024, 10), size))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_mouth_frame_keeps_a_dropped_jaw_inside() -> None:
    lm = _face(256, open_px=60)  # a very tall opening
    lm[FM.MOUTH_CORNERS[0], 0] += 12  # corners pulled in, as in an "O"
    lm[FM.MOUTH_CORNERS[1], 0] -= 12
    pts = transform_points(FM.inner_lip_polygon(lm), FM.mouth_frame(lm, 64))
    assert pts.min() >= 0.08 * 64 - 1e-6 and pts.max() <= 64 * 0.92


def test_polygon_mask() -> None:
    square = np.array([[20, 20], [40, 20], [40, 40], [20, 40]], float)
    hard = FM.polygon_mask(square, (64, 80), 0.0)
    assert hard.shape == (64, 80) and hard.dtype == np.float32
    assert hard[30, 30] == 1.0 and hard[5, 5] == 0.0 and hard[30, 60] == 0.0
    soft = FM.polygon_mask(square, (64, 80), 8.0)
    assert soft[20, 30] > 0.95 and 0 < soft[30, 43] < 1 and soft[30, 48] < 0.1 and soft[30, 54] == 0.0
    assert soft.max() <= 1.0 and (soft >= hard - 0.05).all()
    assert not FM.polygon_mask(np.full((4, 2), np.nan), (8, 8)).any()


# -- network --------------------------------------------------------------------------------------


def test_shapes_parameters_and_exact_compose(net: MouthInpainter) -> None:
    assert 50_000 < count_parameters(net) < 500_000
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    m = torch.zeros(2, 1, 64, 64)
    m[:, :, 24:40, 16:48] = 1.0
    y = net(x, m)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    keep = (m == 0).expand_as(x)
    assert torch.equal(y[keep], x[keep])  # unmasked pixels exactly the input
    assert not torch.equal(y[~keep], x[~keep])
    # what lies under the hole does not matter
    assert torch.equal(net(x.masked_fill(~keep, 0.7), m), y)
    critic = MouthCritic(net.config)
    assert critic(x, m).shape == (2, 1, 8, 8)


def test_fill_mouth_touches_only_the_mask(net: MouthInpainter) -> None:
    rng = np.random.default_rng(0)
    for size in (256, 1024):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        lm = _face(size, open_px=16)
        out = fill_mouth(net, image, lm)
        assert out.shape == image.shape and out.dtype == np.uint8
        changed = (out != image).any(axis=2)
        assert changed.any()
        poly_mask = FM.polygon_mask(FM.inner_lip_polygon(lm), image.shape, 0.0)
        default = FM.polygon_mask(FM.inner_lip_polygon(lm), image.shape,
                                  2.0 / matrix_scale(FM.mouth_frame(lm, 64)))
        assert np.array_equal(out[default == 0], image[default == 0])  # byte-identical outside
        assert changed[poly_mask >= 1].mean() > 0.9
        ys, xs = np.nonzero(changed)
        lo, hi = FM.inner_lip_polygon(lm).min(0), FM.inner_lip_polygon(lm).max(0)
        pad = 0.1 * size  # the feather never reaches far outside the lips
        assert xs.min() > lo[0] - pad and xs.max() < hi[0] + pad and ys.min() > lo[1] - pad and ys.max() < hi[1] + pad
    # an explicit mask: zero outside it means byte-identical there
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    lm = _face(200, open_px=12)
    lm[:, 1] += 50
    fm = np.zeros((300, 200), np.float32)
    fm[175:185, 80:120] = 0.5
    out = fill_mouth(net, image, lm, fm)
    assert np.array_equal(out[fm == 0], image[fm == 0])
    assert (out[fm > 0] != image[fm > 0]).any()
    assert np.array_equal(fill_mouth(net, image, lm, np.zeros_like(fm)), image)
    with pytest.raises(ValueError):
        fill_mouth(net, image, lm, np.zeros((10, 10), np.float32))


# -- files ----------------------------------------------------------------------------------------


def test_save_load_round_trip(net: MouthInpainter, tmp_path: Path) -> None:
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    m = torch.zeros(1, 1, 64, 64)
    m[..., 20:44, 12:52] = 1
    ref = net(x, m)
    folder = tmp_path / "model"
    weights = save_mouth(net, folder, training={"steps": 3})
    assert weights == folder / "mouth.safetensors" and (folder / "mouth.json").is_file()
    assert read_mouth_config(folder)["training"] == {"steps": 3}
    assert torch.equal(load_mouth(folder)(x, m), ref)
    single = save_mouth(net, tmp_path / "other" / "m.safetensors", fp16=True)
    assert single.with_suffix(".json").is_file()
    half = load_mouth(single)
    assert next(half.parameters()).dtype == torch.float32
    assert (half(x, m) - ref).abs().max() < 0.02
    assert not (weights.read_bytes()[:8] == b"\x80\x04")  # not a pickle
    (folder / "mouth.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(Exception, match="not a facexpr mouth model"):
        load_mouth(folder)


# -- training on real crops -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory, shared_data: Path) -> Path:
    """12 theatrical happy/surprised Taiwanese photos of 6 people, prepared at 128 px."""
    pytest.importorskip("mediapipe")
    from facexpr.data.prepare import prepare

    src = shared_data / "taiwanese"
    with open(src / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    picked: dict[tuple[str, str], list[str]] = {}
    for r in body:
        key = (r[1], r[2])
        if r[3] == "theatric" and r[2] in ("happy", "surprised") and key not in picked:
            picked[key] = r
    people = sorted({k[0] for k in picked if (k[0], "happy") in picked and (k[0], "surprised") in picked})[:6]
    manifest = tmp_path_factory.mktemp("mouth-manifest") / "subset.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for p in people:
            w.writerow(picked[(p, "happy")])
            w.writerow(picked[(p, "surprised")])
    out = tmp_path_factory.mktemp("mouth-prep") / "tw"
    prepare(src, out, sizes=(128,), manifest=manifest, workers=1, progress=False)
    return out


TORCH_THREADS = 1  # see conftest.torch_threads: small convolutions on shared cores


def _mouth_config(data: Path, **kw):
    from facexpr.training.config import make_config

    base = dict(model="mouth", preset="tiny", data=[str(data)], batch=4, steps=4, workers=0, progress=False,
                log_every=1, sample_every=1000, checkpoint_every=1000)
    base.update(kw)
    return make_config(**base)


@pytest.fixture(scope="module")
def trained(tiny_prepared: Path, tmp_path_factory) -> Path:
    """A tiny mouth net trained through ``facexpr train --model mouth`` (the training contract)."""
    from click.testing import CliRunner

    from facexpr.cli import cli

    run = tmp_path_factory.mktemp("mouth-run") / "run"
    res = CliRunner().invoke(cli, ["train", "--model", "mouth", "--preset", "tiny", "--data", str(tiny_prepared),
                                   "--out", str(run), "--steps", "120", "--batch", "4", "--workers", "0",
                                   "--sample-every", "40", "--checkpoint-every", "60", "--set", "lr=2e-3", "--set", "log_every=1",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    return run


def test_mouth_trains_through_the_contract_and_learns(trained: Path, tiny_prepared: Path) -> None:
    from facexpr.training.reporting import read_metrics

    doc = json.loads((trained / "config.json").read_text())
    assert doc["family"] == "mouth" and doc["recipe"] == "MouthRecipe"
    assert doc["model_config"]["size"] == 64  # the mouth crop, not the data's 128 px face crop
    assert doc["exports"] == {"generator": "G_ema"} and [p["name"] for p in doc["phases"]] == ["D", "G"]
    assert doc["train"]["decay_fraction"] == 0.0  # the recipe's run default (mouth-v1 had no decay)
    assert 4 <= doc["data"]["train_used"] <= doc["data"]["train"]  # open mouths only
    rows = read_metrics(trained)
    steps = [r for r in rows if "g/total" in r]
    assert len(steps) == 120 and all(math.isfinite(r["g/l1"]) and math.isfinite(r["d/total"]) for r in steps)
    val = [r for r in rows if "val/l1_hole" in r]
    assert [r["step"] for r in val] == [40, 80, 120]
    assert sorted((trained / "samples").glob("*.png"))[-1].name == "step-0000120.png"
    # the same validation mouths through the untrained network (the run's seed and first draw)
    from facexpr.data.dataset import PreparedDataset
    from facexpr.data.landmarks import dataset_landmarks
    from facexpr.training.mouth import build_mouth_set, evaluate_mouths

    ds = PreparedDataset(tiny_prepared)
    config = MouthConfig(**doc["model_config"])
    _, val_rows = ds.split(doc["train"]["val_fraction"], doc["train"]["split_seed"])
    mouths = build_mouth_set(ds, val_rows, dataset_landmarks(ds, progress=False), config, 0.03)
    torch.manual_seed(doc["train"]["seed"])
    start = evaluate_mouths(MouthInpainter(config).eval(), mouths)
    assert start["l1_hole_pixels"] == val[-1]["val/l1_hole_pixels"] > 0
    last, baseline = val[-1]["val/l1_hole"], val[-1]["val/l1_hole_crop_mean"]
    assert start["l1_hole_crop_mean"] == pytest.approx(baseline)
    # it learns: on two validation people's mouths after 120 steps on seven training mouths, the
    # hole L1 ends well below the untrained net's (0.155 -> 0.125 here) and at its best comes
    # down to a fill with the mean colour of the crop around the hole (0.118); an untrained or
    # broken loss stays at the start
    curve = [r["val/l1_hole"] for r in val]
    assert last < 0.9 * start["l1_hole"], (start["l1_hole"], curve)
    assert min(curve) < 0.8 * start["l1_hole"] and min(curve) < 1.05 * baseline, (start, baseline, curve)


def test_mouth_resume_is_bit_identical(tiny_prepared: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from facexpr.training import checkpoint as ckpt
    from facexpr.training import loop

    cfg = _mouth_config(tiny_prepared, steps=4)
    full = loop.start_run(cfg, tmp_path / "full", log=lambda s: None)
    part = loop.start_run(cfg, tmp_path / "part", stop_after_steps=2, log=lambda s: None)
    assert part.interrupted and part.step == 2
    resumed = loop.resume_run(tmp_path / "part", overrides={"workers": 1}, log=lambda s: None)
    assert resumed.step == 4 and not resumed.interrupted
    for name in ("G", "D", "G_ema"):
        assert states_equal(full.modules[name].state_dict(), resumed.modules[name].state_dict()), name
    wa = load_file(ckpt.latest_checkpoint(tmp_path / "full") / "optimizers.safetensors")
    wb = load_file(ckpt.latest_checkpoint(tmp_path / "part") / "optimizers.safetensors")
    assert states_equal(wa, wb)
    # and training did move the weights (the comparison above is not of two untouched nets)
    torch.manual_seed(cfg.seed)
    fresh = MouthInpainter(full.modules["G"].config)
    assert not states_equal(fresh.state_dict(), full.modules["G"].state_dict())


def test_exported_mouth_loads_and_fills_a_real_mouth(trained: Path, tiny_prepared: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facexpr.cli import cli
    from facexpr.data.dataset import PreparedDataset
    from facexpr.data.landmarks import dataset_landmarks
    from facexpr.training import checkpoint as ckpt

    out = tmp_path / "mouth-model"
    res = CliRunner().invoke(cli, ["export", str(trained), str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "mouth.json", "mouth.safetensors"]
    assert "load_mouth" in (out / "MODEL_CARD.md").read_text()
    net = load_mouth(out)  # what `fit-geometry --mouth OUT` does
    assert net.config.width == 8 and read_mouth_config(out)["training"]["step"] == 120
    from safetensors.torch import load_file

    weights = load_file(ckpt.latest_checkpoint(trained) / "weights.safetensors")
    assert states_equal(net.state_dict(), {k[len("G_ema/"):]: v for k, v in weights.items() if k.startswith("G_ema/")})
    # it paints inside the lips of a real open mouth and nowhere else
    ds = PreparedDataset(tiny_prepared)
    lms = dataset_landmarks(ds, progress=False)
    i = int(np.nanargmax([FM.lip_opening(lm) if np.isfinite(lm).all() else np.nan for lm in lms]))
    image, lm = ds.image(i), lms[i]
    filled = fill_mouth(net, image, lm)
    default = FM.polygon_mask(FM.inner_lip_polygon(lm), image.shape, 2.0 / matrix_scale(FM.mouth_frame(lm, 64)))
    changed = (filled != image).any(axis=2)
    assert np.array_equal(filled[default == 0], image[default == 0])
    assert changed[FM.polygon_mask(FM.inner_lip_polygon(lm), image.shape, 0.0) >= 1].mean() > 0.5
    # an existing folder is replaced only when asked, and only if it is a mouth model's
    assert CliRunner().invoke(cli, ["export", str(trained), str(out)]).exit_code != 0
    assert CliRunner().invoke(cli, ["export", str(trained), str(out), "--overwrite"]).exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert CliRunner().invoke(cli, ["export", str(trained), str(tmp_path / "mine"), "--overwrite"]).exit_code != 0
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_train_mouth_alias_runs_the_contract_and_resumes(tiny_prepared: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facexpr.cli import cli

    run = tmp_path / "run"
    args = ["train-mouth", "--data", str(tiny_prepared), "--out", str(run), "--batch", "4", "--seed", "1",
            "--threads", "1", "--min-opening", "0.01", "--workers", "0", "--sample-every", "2",
            "--checkpoint-every", "2", "--no-progress"]
    res = CliRunner().invoke(cli, [*args, "--steps", "3"])
    assert res.exit_code == 0, res.output
    doc = json.loads((run / "config.json").read_text())
    assert doc["family"] == "mouth" and doc["recipe_config"]["min_opening"] == 0.01 and doc["train"]["batch"] == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 <= metrics["l1_hole"] <= 1
    assert load_mouth(run).config.size == 64  # OUT/mouth.safetensors + mouth.json, as before
    # again on the same folder: resumed from the checkpoint at step 3 to the new total
    res = CliRunner().invoke(cli, [*args, "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
