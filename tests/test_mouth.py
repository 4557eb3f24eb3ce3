"""Mouth-interior inpainting: geometry, the network's composing contract, files, and training.

The geometry and network tests are synthetic; the training test prepares 12 real Taiwanese photos
(skipped without the shared data).
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


def test_three_training_steps_resume_and_cli(tiny_prepared: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facexpr.cli import cli
    from facexpr.training.mouth import train_mouth

    run = tmp_path / "run"
    metrics = train_mouth([tiny_prepared], run, steps=3, batch=4, seed=1, threads=1, progress=False,
                          min_opening=0.01, sample_every=2, checkpoint_every=2)
    assert metrics["steps"] == 3 and metrics["train_mouths"] >= 4
    assert (run / "mouth.safetensors").is_file() and (run / "mouth.json").is_file()
    assert (run / "samples" / "step-000002.png").is_file() and (run / "samples" / "step-000003.png").is_file()
    assert (run / "checkpoints" / "latest.json").is_file()
    assert "val_l1_hole" in metrics and 0 <= metrics["val_l1_hole"] <= 1
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 3 and math.isfinite(lines[-1]["l1"])
    net = load_mouth(run)
    assert net.config.size == 64
    # resumed through the CLI: one more step from the checkpoint at step 3
    res = CliRunner().invoke(cli, ["train-mouth", "--data", str(tiny_prepared), "--out", str(run), "--steps", "4",
                                   "--batch", "4", "--seed", "1", "--threads", "1", "--min-opening", "0.01",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
