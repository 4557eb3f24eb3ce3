"""The identity-preserving U-Net cGAN (seed 004) through the training contract, and the crop ->
dlib-chip map its identity terms use.

Training on real faces: a small Taiwanese subset (4 performers x 7 posed emotions, so every item
has the same person's photo in its target expression) prepared at 128 px; skipped with a reason
when the shared data is absent. The depth that follows the image size is checked without it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from facexpr.cli import cli
from facexpr.data.dataset import PreparedDataset
from facexpr.models import from_pretrained, get_family
from facexpr.models.base import EMOTION_LABELS
from facexpr.training import loop
from facexpr.training.config import make_config
from facexpr.training.data import label_index
from facexpr.training.export import export_run
from facexpr.training.identity import embed, identity_term
from facexpr.training.recipe_unet_cgan import ExpressionPairItems, identity_codes
from facexpr.training.reporting import read_metrics
from facexpr.training.synthetic import make_synthetic_prepared

from helpers import states_equal

#: scripts/fit_crop_to_chip.py measured, on 150 validation crops (Taiwanese + LFW) at 128 px: pairwise-
#: distance correlation 0.973, mean |difference| 0.027, median per-face distance 0.10. On the 28
#: faces here (4 people, so a narrow range of distances): 0.921, 0.031, 0.10, lowered by one
#: wide-mouthed surprised face on which dlib's own 5-point fit fails (its chip shows the mouth;
#: the fixed map's chip is the right face), which is why r is checked at 0.9.
MIN_PAIR_CORRELATION = 0.9
MAX_PAIR_MEAN_ABS_DIFF = 0.05
MAX_MEDIAN_SELF_DISTANCE = 0.2


TORCH_THREADS = 1  # see conftest.torch_threads


@pytest.fixture(scope="module")
def taiwanese(shared_data: Path, tmp_path_factory) -> Path:
    """28 real Taiwanese photos: 4 performers, one photo of each of the 7 emotions, at 128 px."""
    pytest.importorskip("mediapipe")
    from facexpr.data.prepare import prepare

    src = shared_data / "taiwanese"
    tmp = tmp_path_factory.mktemp("tw")
    with open(src / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    chosen, seen = [], set()
    people = sorted({r[1] for r in rows[1:]})[:4]
    for r in rows[1:]:
        if r[1] in people and (r[1], r[2]) not in seen:
            seen.add((r[1], r[2]))
            chosen.append(r)
    assert len(chosen) == 28, len(chosen)
    manifest = tmp / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([rows[0], *chosen])
    out = tmp / "tw"
    prepare(src, out, sizes=(128,), manifest=manifest, workers=1, progress=False)
    return out


def _config(data: Path, **kw: object):
    base: dict = dict(model="unet-cgan", preset="tiny", data=[str(data)], size=32, batch=4, steps=4, workers=0,
                      progress=False, log_every=1, sample_every=1000, checkpoint_every=1000, sample_faces=3,
                      val_fraction=0.25)
    base.update(kw)
    return make_config(**base)


def test_depth_follows_the_image_size() -> None:
    """The default (paper) preset halves down to a 2 px bottleneck at any size: 6 levels at 128 px
    as before, 5 at 64 px (refused before); an explicit depth the size cannot take is refused."""
    family = get_family("unet-cgan")
    resolved = {size: make_config(model="unet-cgan", data=["unused"], size=size).resolved_model_config()
                for size in (64, 96, 128, 256)}
    assert {size: cfg.downs for size, cfg in resolved.items()} == {64: 5, 96: 5, 128: 6, 256: 7}
    torch.manual_seed(0)
    G, D = family.build_generator(resolved[64]), family.build_critic(resolved[64])
    assert len(G.downs) == 5 and len(G.ups) == 4
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = G(x, torch.eye(7)[[1, 4]]).result
        other = G(x, torch.eye(7)[[2, 5]]).result
        patches, classes = D(x, out)
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1 and not torch.equal(out, other)
    assert patches.shape == (2, 1, 6, 6) and classes.shape == (2, 7)
    with pytest.raises(ValueError, match="downs=0"):
        family.build_generator(family.make_config("paper", image_size=64, downs=6))


def test_a_64_px_run_trains_and_exports(tmp_path: Path) -> None:
    """``facexpr train --model unet-cgan --size 64`` with a depth taken from the size (the tiny
    preset's widths, for speed): a step is taken, the run and the exported model name 5 levels."""
    data = make_synthetic_prepared(tmp_path / "syn", n=24, size=64, identities=6)
    res = CliRunner().invoke(cli, ["train", "--model", "unet-cgan", "--preset", "tiny", "--set", "downs=0",
                                   "--set", "lambda_triplet=0", "--set", "log_every=1", "--data", str(data),
                                   "--size", "64", "--batch", "2", "--steps", "2", "--workers", "0",
                                   "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["model_config"]["downs"] == 5 and doc["model_config"]["image_size"] == 64
    rows = [r for r in read_metrics(tmp_path / "run") if "g/total" in r]
    assert len(rows) == 2 and all(math.isfinite(r["g/total"]) and math.isfinite(r["d/total"]) for r in rows)
    model = export_run(tmp_path / "run", tmp_path / "model")
    G = from_pretrained(model)
    assert G.config.downs == 5 and len(G.downs) == 5
    with torch.no_grad():
        assert G(torch.zeros(1, 3, 64, 64), torch.eye(7)[[1]]).result.shape == (1, 3, 64, 64)


def test_trains_and_resumes_bit_identically(taiwanese: Path, tmp_path: Path) -> None:
    cfg = _config(taiwanese, id_weight=0.5, lambda_triplet=1.0, lambda_other_id=1.0)
    full = loop.start_run(cfg, tmp_path / "full", log=lambda s: None)
    part = loop.start_run(cfg, tmp_path / "part", stop_after_steps=2, log=lambda s: None)
    assert part.interrupted and part.step == 2
    resumed = loop.resume_run(tmp_path / "part", log=lambda s: None)
    assert resumed.step == 4
    assert set(full.modules) == {"G", "D"}  # the identity network is not a trained (checkpointed) network
    for name, module in full.modules.items():
        assert states_equal(module.state_dict(), resumed.modules[name].state_dict()), name
    rows = [r for r in read_metrics(tmp_path / "full") if "g/total" in r]
    assert len(rows) == 4
    for key in ("d/real", "d/fake", "d/other_id", "d/cls", "g/adv", "g/cls", "g/l1_paired", "g/triplet",
                "g/d_positive", "g/d_negative", "g/id_distance"):
        assert all(math.isfinite(r[key]) for r in rows), key
    # Taiwanese performers have every emotion: every item is paired
    assert all(r["g/paired_fraction"] == 1.0 for r in rows)
    assert abs(rows[0]["d/cls"] - math.log(7)) < 0.5
    doc = json.loads((tmp_path / "full" / "config.json").read_text())
    assert doc["recipe_config"]["id_weight"] == 0.5 and doc["recipe_config"]["lambda_l1"] == 100.0
    assert [p["name"] for p in doc["phases"]] == ["D", "G"]
    val = [r for r in read_metrics(tmp_path / "full") if "val/id_distance" in r]
    assert val and math.isfinite(val[-1]["val/id_distance"]) and math.isfinite(val[-1]["val/paired_l1"])


def test_items_are_paired_and_keyed(taiwanese: Path) -> None:
    """Target photo = the same performer in the target emotion; other = another performer in it;
    the same (seed, epoch, position) key gives the same item."""
    ds = PreparedDataset(taiwanese)
    rows = np.arange(len(ds))
    items = ExpressionPairItems(ds, rows, EMOTION_LABELS, 32, seed=3, flip=True, paired_sets=(ds.meta["name"],))
    index, ident = label_index(ds, EMOTION_LABELS), identity_codes(ds)
    for pos in range(len(rows)):
        d = items.draw(1, pos)
        assert d["target"] != d["source"] and d["has_target"] and d["paired"] and d["has_other"]
        assert ident[d["target_row"]] == ident[d["row"]] and index[d["target_row"]] == d["target"]
        assert ident[d["other_row"]] != ident[d["row"]] and index[d["other_row"]] == d["target"]
    a, b = items[(1, 5)], items[(1, 5)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    unpaired = ExpressionPairItems(ds, rows, EMOTION_LABELS, 32, seed=3, flip=True, paired_sets=())
    assert not unpaired.draw(1, 5)["paired"] and unpaired.draw(1, 5)["has_target"]


def test_triplet_term_is_zero_when_the_margin_holds(taiwanese: Path) -> None:
    """A hand-made triplet of real faces: anchor = positive = performer A, negative = performer B.
    The negative is farther than the margin, so the recipe's term is 0; with the anchor as its own
    negative it is exactly the margin."""
    from facexpr.training.data import to_tensor_image

    ds = PreparedDataset(taiwanese)
    ident = identity_codes(ds)
    a = int(np.flatnonzero(ident == ident[0])[0])
    b = int(np.flatnonzero(ident != ident[0])[0])
    recipe = loop.make_recipe(_config(taiwanese, margin=0.5))
    face_a = to_tensor_image(ds.image(a))[None]
    face_b = to_tensor_image(ds.image(b))[None]
    loss, d_pos, d_neg = recipe.triplet_term(face_a, face_a, face_b)
    assert float(d_pos) == 0.0 and float(d_neg) > 0.5 + 0.05
    assert float(loss) == 0.0
    loss, _, _ = recipe.triplet_term(face_a, face_a, face_a)
    assert float(loss) == pytest.approx(0.5, abs=1e-6)
    # and the identity term is differentiable with respect to the output crop
    out = face_b.clone().requires_grad_(True)
    metrics: dict = {}
    term = identity_term(2.0, out, face_a, metrics)
    term.backward()
    assert term.item() == pytest.approx(2.0 * metrics["g/id_distance"].item())
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert float(identity_term(0.0, out, face_a)) == 0.0


def test_crop_to_chip_agrees_with_dlib(taiwanese: Path) -> None:
    """IdentityNet(crop_to_chip(crop)) vs dlib's IdentityEncoder on the same 128 px crops (with
    their MediaPipe landmarks, as the evaluation embeds crops)."""
    pytest.importorskip("dlib")
    from facexpr.data.landmarks import dataset_landmarks
    from facexpr.face.identity import IdentityEncoder
    from facexpr.training.data import to_tensor_image

    ds = PreparedDataset(taiwanese)
    landmarks = dataset_landmarks(ds, progress=False)
    keep = [i for i in range(len(ds)) if not np.isnan(landmarks[i]).any()]
    assert len(keep) >= 24
    crops = [ds.image(i) for i in keep]
    with IdentityEncoder() as enc:
        ref = np.stack([enc.embed(c, landmarks[i][:, :2]) for c, i in zip(crops, keep)]).astype(np.float64)
    ours = embed(torch.stack([to_tensor_image(c) for c in crops]), grad=False).numpy().astype(np.float64)
    iu = np.triu_indices(len(keep), 1)
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)[iu]
    d_ours = np.linalg.norm(ours[:, None] - ours[None], axis=-1)[iu]
    assert np.corrcoef(d_ref, d_ours)[0, 1] > MIN_PAIR_CORRELATION
    assert np.abs(d_ref - d_ours).mean() < MAX_PAIR_MEAN_ABS_DIFF
    assert np.median(np.linalg.norm(ref - ours, axis=1)) < MAX_MEDIAN_SELF_DISTANCE


def test_export_and_edit_through_the_cli(taiwanese: Path, tmp_path: Path, portraits: list[Path]) -> None:
    result = loop.start_run(_config(taiwanese, steps=2, lambda_triplet=0.0), tmp_path / "run", log=lambda s: None)
    model = export_run(tmp_path / "run", tmp_path / "model")
    meta = json.loads((model / "config.json").read_text())
    assert meta["family"] == "unet-cgan"
    assert meta["condition"]["kind"] == "labels" and meta["condition"]["interpolates"] is False
    G = from_pretrained(model)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c = torch.eye(7)[[1, 3]]
    with torch.no_grad():
        torch.testing.assert_close(G(x, c).result, result.generator(x, c).result, rtol=0, atol=0)

    photo = portraits[0]
    runner = CliRunner()
    res = runner.invoke(cli, ["edit", str(photo), "-o", str(tmp_path / "out"), "--model", str(model),
                              "--emotion", "happy"])
    assert res.exit_code == 0, res.output
    src = np.asarray(Image.open(photo).convert("RGB"), np.int16)
    out = np.asarray(Image.open(tmp_path / "out" / photo.name).convert("RGB"), np.int16)
    changed = np.abs(out - src).max(axis=2) > 8
    assert changed.any(), "the model changed nothing"
    # the edit stays on the face: the background beside it is untouched
    assert changed[:, :120].mean() < 0.01 and changed[:, -120:].mean() < 0.01
