"""CycleGAN between two expressions: translators and routing, the image pool, the losses, and a
real run through the training contract (exact resume with the pools, export, `facexpr edit`)."""

from __future__ import annotations

import warnings

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from facexpr.cli import cli
from facexpr.errors import ConfigError, DatasetError
from facexpr.models import from_pretrained, get_family
from facexpr.models.cyclegan import CycleGANGenerator, PatchGANCritic, ResnetGenerator
from facexpr.training import checkpoint as ckpt
from facexpr.training import loop
from facexpr.training.config import make_config, validate
from facexpr.training.export import export_run
from facexpr.training.recipe_cyclegan import (
    ImagePool,
    UnpairedImages,
    gan_loss,
    mouth_box,
    mouth_focus,
    pool_generator,
)
from facexpr.training.reporting import read_metrics

from helpers import states_equal

REPO = Path(__file__).resolve().parents[1]


TORCH_THREADS = 1  # see conftest.torch_threads


@pytest.fixture(scope="module")
def taiwanese(taiwanese_6x7: Path) -> Path:
    return taiwanese_6x7


def tiny(data: Path, **kw):
    base = dict(model="cyclegan", preset="tiny", data=[str(data)], size=32, batch=2, steps=4, workers=0,
                progress=False, log_every=1, sample_every=1000, checkpoint_every=1000, sample_faces=2)
    base.update(kw)
    return make_config(**base)


# -- networks -----------------------------------------------------------------------------------


def test_resnet_generator_and_patchgan_follow_the_paper() -> None:
    family = get_family("cyclegan")
    cfg = family.make_config("paper", image_size=256)
    G = ResnetGenerator(cfg)
    convs = [m for m in G.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    # c7s1-64, d128, d256, 9 x R256 (2 convs), u128, u64, c7s1-3
    assert [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs[:3]] == [
        (3, 64, 7, 1), (64, 128, 3, 2), (128, 256, 3, 2)]
    assert len(convs) == 3 + 18 + 3
    assert [(m.in_channels, m.out_channels) for m in convs[-3:]] == [(256, 128), (128, 64), (64, 3)]
    norms = [m for m in G.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and not any(m.affine for m in norms)
    D = PatchGANCritic(cfg)
    # the 70x70 receptive field: 4x4 kernels, strides 2, 2, 2, 1, 1
    rf, jump = 1, 1
    layers = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    for m in layers:
        rf += (m.kernel_size[0] - 1) * jump
        jump *= m.stride[0]
    assert rf == 70 and [m.out_channels for m in layers] == [64, 128, 256, 512, 1]
    assert D(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_generator_routes_each_face_into_its_target_domain() -> None:
    family = get_family("cyclegan")
    torch.manual_seed(0)
    G = family.build_generator(family.make_config("tiny", image_size=32)).eval()
    assert set(family.component_modules(G)) == {"G_AB", "G_BA"}
    cond = family.condition(G.config)
    assert cond.kind == "labels" and cond.labels == ("neutral", "happy") and not cond.interpolates
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    onehot = torch.tensor([cond.one_hot("happy"), cond.one_hot("neutral"), cond.one_hot("happy")])
    with torch.no_grad():
        out = G(x, onehot).result
        torch.testing.assert_close(out[[0, 2]], G.G_AB(x[[0, 2]]), rtol=0, atol=0)
        torch.testing.assert_close(out[[1]], G.G_BA(x[[1]]), rtol=0, atol=0)
        # per-image normalisation: a face's result does not depend on its batch neighbours
        torch.testing.assert_close(out[1:2], G(x[1:2], onehot[1:2]).result, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        G(x, torch.zeros(3, 7))


def test_runs_default_to_the_papers_batch_and_decay_and_given_values_win(taiwanese: Path) -> None:
    """A cyclegan run trains at batch 1 with the rate decaying over the second half, as in the
    paper, unless the user says otherwise; other families keep the generic defaults."""
    assert (make_config(model="cyclegan").batch, make_config(model="cyclegan").decay_fraction) == (1, 0.5)
    assert make_config(model="cyclegan", batch=4).batch == 4
    assert make_config(model="cyclegan", decay_fraction=0.2).decay_fraction == 0.2
    assert make_config(model="stargan").batch == 25
    res = CliRunner().invoke(cli, ["train", "--model", "cyclegan", "--data", str(taiwanese), "--dry-run"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert (doc["train"]["batch"], doc["train"]["decay_fraction"]) == (1, 0.5)
    res = CliRunner().invoke(cli, ["train", "--model", "cyclegan", "--data", str(taiwanese), "--dry-run", "--batch",
                                   "2", "--set", "decay_fraction=0.25"])
    doc = json.loads(res.output[res.output.index("{"):])
    assert (doc["train"]["batch"], doc["train"]["decay_fraction"]) == (2, 0.25)

    from facexpr.training.recipe_cyclegan import CycleGANRecipe
    from facexpr.training.recipes import _check

    class Wrong(CycleGANRecipe):
        run_defaults = {"batch_size": 1}

    with pytest.raises(TypeError, match="batch_size"):
        _check(get_family("cyclegan"), Wrong, {"batch", "decay_fraction"})


@pytest.mark.parametrize("overrides,match", [
    ({"domain_b": "neutral"}, "two different expressions"),
    ({"domain_a": "joyful"}, "unknown emotion"),
    ({"domain_b": "surprise"}, "canonical name 'surprised'"),
    ({"size": 20}, "at least 32"),
    ({"gan_loss": "hinge"}, "gan_loss must be one of lsgan, log"),
    ({"pool_size": -1}, "pool_size must be >= 0"),
])
def test_bad_options_are_refused_before_work(overrides: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(tiny(tmp_path, **overrides))


def test_gan_losses_match_a_hand_computation() -> None:
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    assert math.isclose(float(gan_loss(logits, True, "lsgan")), (0.25 + 4 + 1 + 1) / 4, rel_tol=1e-6)
    assert math.isclose(float(gan_loss(logits, False, "lsgan")), (0.25 + 1 + 4 + 0) / 4, rel_tol=1e-6)

    def softplus(v: float) -> float:
        return math.log1p(math.exp(v))

    vals = [0.5, -1.0, 2.0, 0.0]
    assert math.isclose(float(gan_loss(logits, True, "log")), sum(softplus(-v) for v in vals) / 4, rel_tol=1e-6)
    assert math.isclose(float(gan_loss(logits, False, "log")), sum(softplus(v) for v in vals) / 4, rel_tol=1e-6)


# -- the image pool -----------------------------------------------------------------------------


def test_mouth_focus_measures_how_much_of_the_change_is_at_the_mouth() -> None:
    """1 for a change spread evenly (or none), 1 / area share for one confined to the mouth box,
    below 1 for a change that spares the mouth; the box sits between the mouth corners."""
    from facexpr.face.align import template_pixels

    src = torch.zeros(2, 3, 64, 64)
    x0, y0, x1, y1 = mouth_box(64)
    corners = template_pixels(64)[[61, 291]]
    assert x0 < corners[:, 0].min() < corners[:, 0].max() < x1 and y0 < corners[:, 1].mean() < y1
    share = (x1 - x0) * (y1 - y0) / 64**2
    assert 0.05 < share < 0.12
    mouth = src.clone()
    mouth[..., y0:y1, x0:x1] = 0.5
    eyes = src.clone()
    eyes[..., 10:25, :] = 0.5
    assert mouth_focus(src, src) == 1.0 and mouth_focus(src, src - 0.3) == pytest.approx(1.0)
    assert mouth_focus(src, mouth) == pytest.approx(1 / share)
    assert mouth_focus(src, eyes) == 0.0


def test_image_pool_follows_the_history_rule_and_lives_in_its_state_dict() -> None:
    pool = ImagePool(3, 8)
    imgs = [torch.full((2, 3, 8, 8), float(i)) for i in range(6)]
    shown = [pool.query(x, pool_generator(0, it, 0)) for it, x in enumerate(imgs[:2])]
    # while filling, every new image is stored and shown
    assert torch.equal(shown[0], imgs[0]) and int(pool.count) == 3
    assert torch.equal(pool.images[:2], imgs[0]) and torch.equal(pool.images[2], imgs[1][0])
    assert torch.equal(shown[1][0], imgs[1][0])
    shown += [pool.query(x, pool_generator(0, it, 0)) for it, x in enumerate(imgs[2:], start=2)]
    # once full, a face is either itself or an older one (which the new face replaces)
    for it in range(2, 6):
        for face in shown[it]:
            assert float(face[0, 0, 0]) <= it
    assert any(float(f[0, 0, 0]) < it for it in range(2, 6) for f in shown[it]), "the history is never shown"
    # the buffers are the state: a copy loaded from the state dict continues identically
    twin = ImagePool(3, 8)
    twin.load_state_dict(pool.state_dict())
    nxt = torch.full((2, 3, 8, 8), 9.0)
    assert torch.equal(pool.query(nxt, pool_generator(0, 6, 0)), twin.query(nxt, pool_generator(0, 6, 0)))
    assert torch.equal(pool.images, twin.images)
    assert set(pool.state_dict()) == {"images", "count"} and not list(pool.parameters())
    assert torch.equal(ImagePool(0, 8).query(nxt, pool_generator(0, 0, 0)), nxt)


# -- real data through the contract -----------------------------------------------------------------


def test_unpaired_items_and_refusal_of_one_sided_data(taiwanese: Path, tmp_path: Path) -> None:
    from facexpr.data.dataset import PreparedDataset

    ds = PreparedDataset(taiwanese)
    rows = np.arange(len(ds))
    items = UnpairedImages(ds, rows, ("neutral", "happy"), 32, seed=3)
    assert len(items) == 12  # 6 neutral + 6 happy
    a = items[(1, 5)]
    assert a["image_a"].shape == a["image_b"].shape == (3, 32, 32)
    assert all(torch.equal(a[k], items[(1, 5)][k]) for k in a)  # keyed by (seed, epoch, position)
    labels = np.asarray(ds.expressions)
    for pos in range(len(items)):
        own = int(items.rows[pos])
        side = "image_a" if labels[own] == "neutral" else "image_b"
        it = items[(0, pos)]
        assert int(it["index"]) == own and it[side].shape == (3, 32, 32)
    # fewer than two faces of a domain: refused with what to do, before any network is built
    with pytest.raises(DatasetError, match=r"needs at least 2 of each.*0 contempt.*domain_a"):
        loop.start_run(tiny(taiwanese, domain_b="contempt"), tmp_path / "r", log=lambda s: None)
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, taiwanese: Path):
    """A 4-step run, and the same run stopped after 2 steps and resumed to 4."""
    root = tmp_path_factory.mktemp("cyclegan")
    cfg = tiny(taiwanese, sample_every=2)
    full = loop.start_run(cfg, root / "full", log=lambda s: None)
    part = loop.start_run(cfg, root / "part", stop_after_steps=2, log=lambda s: None)
    assert part.interrupted and part.step == 2
    resumed = loop.resume_run(root / "part", log=lambda s: None)
    return root, full, resumed


def test_run_trains_and_resumes_bit_identically_with_its_pools(runs) -> None:
    root, full, resumed = runs
    assert full.step == resumed.step == 4 and not resumed.interrupted
    assert set(full.modules) == {"G_AB", "G_BA", "D_A", "D_B", "pool_A", "pool_B"}
    for name in full.modules:
        assert states_equal(full.modules[name].state_dict(), resumed.modules[name].state_dict()), name
    pool = full.modules["pool_B"]
    assert int(pool.count) == 4 * 2 and pool.images[:8].abs().sum() > 0  # 4 steps x batch 2 stored
    wa = load_file(ckpt.latest_checkpoint(root / "full") / "weights.safetensors")
    assert "pool_A/images" in wa and "pool_B/count" in wa  # the checkpoint holds the history
    oa = load_file(ckpt.latest_checkpoint(root / "full") / "optimizers.safetensors")
    ob = load_file(ckpt.latest_checkpoint(root / "part") / "optimizers.safetensors")
    assert states_equal(oa, ob)
    keys = ("g/total", "g/cycle_a", "g/identity_b", "d/total", "d/fake_b")
    ma = [[r[k] for k in keys] for r in read_metrics(root / "full") if "g/total" in r]
    mb = [[r[k] for k in keys] for r in read_metrics(root / "part") if "g/total" in r]
    assert ma == mb and len(ma) == 4 and all(math.isfinite(v) for row in ma for v in row)
    val = [r for r in read_metrics(root / "full") if "val/cycle_l1" in r]
    assert [r["step"] for r in val] == [2, 4] and all(0 < r["val/cycle_l1_a"] < 2 for r in val)
    grid = Image.open(root / "full" / "samples" / "step-0000004.png")
    assert grid.size[0] == 3 * 32 and grid.size[1] == 2 * (14 + 32)  # a band per domain, one face each


def test_log_loss_variant_trains(taiwanese: Path, tmp_path: Path) -> None:
    res = loop.start_run(tiny(taiwanese, steps=2, gan_loss="log", pool_size=0, lambda_identity=0),
                         tmp_path / "r", log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "r") if "g/total" in r]
    assert len(rows) == 2 and all(math.isfinite(r["g/total"]) and math.isfinite(r["d/total"]) for r in rows)
    assert "g/identity_a" not in rows[0]
    assert int(res.modules["pool_A"].count) == 0


def test_export_and_edit_through_the_cli(runs, shared_data: Path, tmp_path: Path) -> None:
    root, full, _ = runs
    model = export_run(root / "full", tmp_path / "model")
    assert sorted(p.name for p in model.iterdir()) == ["G_AB.safetensors", "G_BA.safetensors", "MODEL_CARD.md",
                                                      "config.json"]
    meta = json.loads((model / "config.json").read_text())
    assert meta["family"] == "cyclegan"
    assert meta["condition"] == {"kind": "labels", "labels": ["neutral", "happy"], "interpolates": False}
    assert "G_AB (from the run network G_AB)" in (model / "MODEL_CARD.md").read_text()
    G = from_pretrained(model)
    assert isinstance(G, CycleGANGenerator)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    to_happy = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    with torch.no_grad():
        torch.testing.assert_close(G(x, to_happy).result, full.generator(x, to_happy).result, rtol=0, atol=0)
        torch.testing.assert_close(G(x, to_happy).result, full.modules["G_AB"](x), rtol=0, atol=0)
        torch.testing.assert_close(G(x, 1 - to_happy).result, full.modules["G_BA"](x), rtol=0, atol=0)

    # the ONNX graph (what `facexpr edit` runs on CPU when the folder has one) computes the same
    ort = pytest.importorskip("onnxruntime")
    from facexpr.pipeline.runner import export_onnx

    mixed = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # one face to each domain: the graph routes too
    with warnings.catch_warnings(record=True) as caught:  # the exporter's own narration stays quiet
        warnings.simplefilter("always")
        exported = export_onnx(G, tmp_path / "g.onnx")
    noisy = [str(w.message)[:80] for w in caught
             if "onnx" in w.filename or "onnx" in str(w.message).lower()
             or issubclass(w.category, torch.jit.TracerWarning)]
    assert not noisy, noisy
    session = ort.InferenceSession(str(exported))
    onnx_out = session.run(None, {"image": x.numpy(), "labels": mixed.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, G(x, mixed).result.numpy(), atol=1e-4)

    photo = shared_data / "inputs" / "misc" / "single_face.jpg"
    runner = CliRunner()
    for emotion in ("happy", "neutral"):
        out = tmp_path / f"out-{emotion}"
        res = runner.invoke(cli, ["edit", str(photo), "-o", str(out), "--model", str(model), "--emotion", emotion,
                                  "--format", "png"])
        assert res.exit_code == 0, res.output
        edited = np.asarray(Image.open(out / "single_face.png").convert("RGB"))
        before = np.asarray(Image.open(photo).convert("RGB"))
        assert edited.shape == before.shape and (edited != before).any()
    res = runner.invoke(cli, ["edit", str(photo), "-o", str(tmp_path / "out-sad"), "--model", str(model),
                              "--emotion", "sad"])
    assert res.exit_code != 0
    assert "knows the expressions neutral, happy; 'sad' is not one of them" in res.output + str(res.exception)
    assert not (tmp_path / "out-sad" / "single_face.jpg").exists()


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from facexpr.training import loop
    from facexpr.training.config import make_config

    data, run, out = sys.argv[1:4]
    cfg = make_config(model="cyclegan", preset="tiny", data=[data], size=32, batch=4, steps=3, workers=0,
                      progress=False, log_every=1, sample_every=1000, checkpoint_every=1000, sample_faces=1,
                      pool_size=5)
    res = loop.start_run(cfg, run, log=lambda s: None)
    tensors = {f"{n}/{k}": v.contiguous() for n, m in res.modules.items() for k, v in m.state_dict().items()}
    save_file(tensors, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))
    """
)


def test_two_ranks_share_one_pool_and_match_one_process(taiwanese: Path, tmp_path: Path) -> None:
    """2 ranks x 2 faces: identical replicas (pools included) and what 1 process x 4 faces does."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACEXPR_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(taiwanese), str(tmp_path / "run"), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert states_equal(r0, r1), "replicas diverged"
    single = loop.start_run(tiny(taiwanese, batch=4, steps=3, pool_size=5, sample_faces=1), tmp_path / "single",
                            log=lambda s: None)
    assert int(r0["pool_A/count"]) == int(single.modules["pool_A"].count) == 5
    for name, module in single.modules.items():
        for k, v in module.state_dict().items():
            torch.testing.assert_close(r0[f"{name}/{k}"], v, rtol=1e-3, atol=1e-4, msg=f"{name}/{k}")
