"""StarGAN and StarGAN with depth guidance (seed 003) through the training contract: they train on
real labelled faces, resume bit-identically, export and edit through ``facexpr edit``; the
confidence penalty raises the depth classifier's entropy."""

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
from facexpr.errors import ConfigError
from facexpr.models import from_pretrained, get_family
from facexpr.models.depthnet import DepthNet, DepthNetConfig, save_depthnet
from facexpr.training import loop
from facexpr.training.config import make_config
from facexpr.training.export import export_run
from facexpr.training.data import label_index
from facexpr.training.recipe_stargan import confidence_penalised_ce
from facexpr.training.reporting import read_metrics

from helpers import states_equal


TORCH_THREADS = 1  # see conftest.torch_threads


@pytest.fixture(scope="module")
def taiwanese(shared_data: Path, tmp_path_factory) -> Path:
    """48 real Taiwanese photos (every emotion, many performers) prepared at 128 px."""
    pytest.importorskip("mediapipe")
    from facexpr.data.prepare import prepare

    src = shared_data / "taiwanese"
    tmp = tmp_path_factory.mktemp("tw")
    with open(src / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    manifest = tmp / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([rows[0], *rows[1::21]])
    out = tmp / "tw"
    prepare(src, out, sizes=(128,), manifest=manifest, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory) -> Path:
    """A depth network folder with normals (random weights: these tests check the machinery;
    the shipped network's quality is tested in test_depthnet.py)."""
    torch.manual_seed(0)
    return save_depthnet(DepthNet(DepthNetConfig(normals=True)), tmp_path_factory.mktemp("dn") / "depth")


def _config(data: Path, family: str, **kw: object):
    base: dict = dict(model=family, preset="tiny", data=[str(data)], size=32, batch=4, steps=4, workers=0,
                      progress=False, log_every=1, sample_every=1000, checkpoint_every=1000, sample_faces=3,
                      val_fraction=0.25, critic_steps=2)
    base.update(kw)
    return make_config(**base)


@pytest.mark.parametrize("family,extra", [
    ("stargan", {}),
    ("stargan-depth", {"geometry": "depth"}),
    ("stargan-depth", {"geometry": "normals", "beta": 0.0}),
])
def test_trains_and_resumes_bit_identically(taiwanese: Path, depth_model: Path, tmp_path: Path, family: str,
                                            extra: dict) -> None:
    if family == "stargan-depth":
        extra = {**extra, "depth_model": str(depth_model)}
    cfg = _config(taiwanese, family, **extra)
    full = loop.start_run(cfg, tmp_path / "full", log=lambda s: None)
    part = loop.start_run(cfg, tmp_path / "part", stop_after_steps=2, log=lambda s: None)
    assert part.interrupted and part.step == 2
    resumed = loop.resume_run(tmp_path / "part", log=lambda s: None)
    assert resumed.step == 4
    for name, module in full.modules.items():
        assert states_equal(module.state_dict(), resumed.modules[name].state_dict()), name
    rows = [r for r in read_metrics(tmp_path / "full") if "g/total" in r]
    keys = ["d/cls", "d/gp", "g/adv", "g/cls", "g/rec_l1"]
    if family == "stargan-depth":
        keys += ["dd/cls", "dd/entropy", "g/depth_adv", "g/depth_cls", "g/depth_rec_l1"]
        assert set(full.modules) == {"G", "D", "Gd", "Dd", "Gr"}
    for key in keys:
        assert all(math.isfinite(r[key]) for r in rows), key
    # a 7-way classifier starts near chance: cross-entropy about log(7)
    assert abs(rows[0]["d/cls"] - math.log(7)) < 0.5
    doc = json.loads((tmp_path / "full" / "config.json").read_text())
    assert doc["recipe_config"]["lambda_rec"] == 10.0 and doc["recipe_config"]["critic_steps"] == 2
    assert [p["name"] for p in doc["phases"]] == (["D", "G"] if family == "stargan" else ["D", "Dd", "G"])


def test_training_rows_are_the_labelled_ones(taiwanese: Path) -> None:
    from facexpr.data.dataset import PreparedDataset

    ds = PreparedDataset(taiwanese)
    labels = get_family("stargan").condition(get_family("stargan").make_config("tiny")).labels
    index = label_index(ds, labels)
    assert (index >= 0).all() and len(set(index.tolist())) == 7  # Taiwanese: 7 posed emotions


def test_export_and_edit_through_the_cli(taiwanese: Path, tmp_path: Path, portraits: list[Path]) -> None:
    result = loop.start_run(_config(taiwanese, "stargan", steps=2), tmp_path / "run", log=lambda s: None)
    model = export_run(tmp_path / "run", tmp_path / "model")
    meta = json.loads((model / "config.json").read_text())
    assert meta["condition"]["kind"] == "labels" and meta["condition"]["interpolates"] is False
    assert meta["components"] == {"generator": "generator.safetensors"}
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
    # the edit stays on the face: hair above it and the background beside it are untouched
    assert changed[:150].mean() < 0.01 and changed[:, :120].mean() < 0.01 and changed[:, -120:].mean() < 0.01
    for args, message in ((["--emotion", "happy", "--intensity", "0.5"], "cannot interpolate"),
                          (["--au", "AU12=3"], "conditioned on expression labels")):
        res = runner.invoke(cli, ["edit", str(photo), "-o", str(tmp_path / "refused"), "--model", str(model), *args])
        # one refusal before any photo is read, not a failure per photo
        assert isinstance(res.exception, ConfigError) and message in str(res.exception), res.output


def test_confidence_penalty_raises_the_classifier_entropy() -> None:
    """Eq. 11 on a fixed batch: the same critic trained with beta > 0 ends less confident than
    with beta = 0, and the loss is CE - beta * H computed by hand."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 2])
    p = logits.softmax(1)
    h = -(p * p.log()).sum(1).mean()
    ce = torch.nn.functional.cross_entropy(logits, target)
    loss, entropy = confidence_penalised_ce(logits, target, 0.5)
    torch.testing.assert_close(entropy, h)
    torch.testing.assert_close(loss, ce - 0.5 * h)

    g = torch.Generator().manual_seed(0)
    maps = torch.rand(16, 1, 32, 32, generator=g)
    labels = torch.randint(0, 7, (16,), generator=g)
    config = get_family("stargan").make_config("tiny", image_size=32)
    from facexpr.models.stargan import build_critic

    entropies = {}
    for beta in (0.0, 1.0):
        torch.manual_seed(1)
        Dd = build_critic(config, in_channels=1)
        opt = torch.optim.Adam(Dd.parameters(), 1e-3)
        for _ in range(30):
            loss, entropy = confidence_penalised_ce(Dd(maps)[1], labels, beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
        entropies[beta] = float(confidence_penalised_ce(Dd(maps)[1], labels, 0.0)[1])
    assert entropies[1.0] > entropies[0.0] + 0.1, entropies


@pytest.mark.parametrize("family", ["stargan", "ganimation"])
def test_identity_term_can_be_enabled_by_any_recipe(taiwanese: Path, tmp_path: Path, family: str) -> None:
    """``--set id_weight=...`` adds the distance of dlib's descriptors (torch port) between each
    output and its input to the generator loss; 0 (the default) leaves the loss untouched."""
    loop.start_run(_config(taiwanese, family, steps=1, id_weight=1.0), tmp_path / "run", log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "run") if "g/total" in r]
    assert rows and 0.0 < rows[-1]["g/id_distance"] < 2.0 and math.isfinite(rows[-1]["g/total"])
