"""The self-attention GAN editor (seed 002): the attention block, the networks, seed 002's
cross-entropy losses against a hand computation, and a real run through the training contract
(exact resume, export, `facexpr edit`)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from facexpr.cli import cli
from facexpr.errors import ConfigError
from facexpr.models import EMOTION_LABELS, from_pretrained, get_family
from facexpr.models.sagan import SAGANCritic, SAGANGenerator, SelfAttention
from facexpr.training import checkpoint as ckpt
from facexpr.training import loop
from facexpr.training.config import make_config, read_run_config, validate
from facexpr.training.export import export_run
from facexpr.training.recipe_sagan import ce_critic_loss, ce_generator_loss
from facexpr.training.recipe_stargan import LabelSamples
from facexpr.training.reporting import read_metrics

from helpers import states_equal


TORCH_THREADS = 1  # see conftest.torch_threads


@pytest.fixture(scope="module")
def taiwanese(taiwanese_6x7: Path) -> Path:
    return taiwanese_6x7


def tiny(data: Path, **kw):
    base = dict(model="sagan", preset="tiny", data=[str(data)], size=32, batch=2, steps=4, workers=0,
                progress=False, log_every=1, sample_every=1000, checkpoint_every=1000, sample_faces=2)
    base.update(kw)
    return make_config(**base)


# -- the self-attention block ---------------------------------------------------------------------


def test_self_attention_starts_as_the_exact_identity() -> None:
    torch.manual_seed(0)
    block = SelfAttention(32)
    assert block.query.out_channels == block.key.out_channels == 4 and block.value.out_channels == 32
    assert all(m.kernel_size == (1, 1) for m in (block.query, block.key, block.value))
    assert block.gamma.item() == 0.0
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(block(x), x)
    beta = block.attention_map(x)
    assert beta.shape == (2, 64, 64)
    torch.testing.assert_close(beta.sum(-1), torch.ones(2, 64))
    # opened, the output at each position is a beta-weighted mix of the values everywhere
    with torch.no_grad():
        block.gamma.fill_(0.5)
    v = block.value(x).flatten(2)
    expected = x + 0.5 * torch.einsum("bcj,bij->bci", v, beta).view_as(x)
    torch.testing.assert_close(block(x), expected)
    # and it has the gradient that lets training open it
    block.gamma.data.zero_()
    block(x).pow(2).sum().backward()
    assert block.gamma.grad is not None and float(block.gamma.grad.abs()) > 0


def test_networks_place_attention_at_the_configured_scales() -> None:
    family = get_family("sagan")
    cfg = family.make_config("tiny", image_size=32)
    G, D = SAGANGenerator(cfg), SAGANCritic(cfg)
    blocks_g = [m for m in G.modules() if isinstance(m, SelfAttention)]
    blocks_d = [m for m in D.modules() if isinstance(m, SelfAttention)]
    assert len(blocks_g) == len(blocks_d) == 2 and all(b.gamma.item() == 0 for b in blocks_g + blocks_d)
    seen: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1])) for b in blocks_g + blocks_d]
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    onehot = torch.eye(7)[[1, 3, 6]]
    out = G(x, onehot)
    assert out.result.shape == (3, 3, 32, 32) and out.result.abs().max() <= 1 and out.attention is None
    assert D(x).shape == (3, 8)  # 7 classes + "generated"
    assert sorted(seen) == [8, 8, 16, 16]  # 32 / 4 and 32 / 2 in both networks
    for h in hooks:
        h.remove()
    # spectral normalisation on every conv, the attention's too
    assert all(hasattr(m, "parametrizations") for m in G.modules() if isinstance(m, torch.nn.Conv2d))
    assert hasattr(blocks_d[0].query, "parametrizations")
    plain = SAGANGenerator(family.make_config("tiny", image_size=32, spectral_norm=False, attention=""))
    assert not [m for m in plain.modules() if isinstance(m, SelfAttention)]
    assert family.condition(cfg).labels == EMOTION_LABELS and not family.condition(cfg).interpolates


@pytest.mark.parametrize("overrides,match", [
    ({"attention": "3"}, "powers of two"),
    ({"attention": "x"}, "scales like"),
    ({"labels": "happy"}, "at least two"),
    ({"loss": "hinge"}, "loss must be one of ce, wgan"),
])
def test_bad_options_are_refused_before_work(overrides: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(tiny(tmp_path, **overrides))


# -- seed 002's losses ----------------------------------------------------------------------------


def test_ce_losses_match_a_hand_computation() -> None:
    """K = 2 expressions + "generated": logits of 2 real and 2 translated faces."""
    real = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    real_y = torch.tensor([0, 1])
    fake = torch.tensor([[0.0, 1.0, 3.0], [1.0, 1.0, 1.0]])
    target = torch.tensor([1, 0])

    def nll(logits: list[float], k: int) -> float:
        return -math.log(math.exp(logits[k]) / sum(math.exp(v) for v in logits))

    # critic: the real faces' own classes, "generated" (index 2) for both translations
    real_term = (nll([2.0, 0.0, -1.0], 0) + nll([0.5, 1.5, 0.0], 1)) / 2
    fake_term = (nll([0.0, 1.0, 3.0], 2) + nll([1.0, 1.0, 1.0], 2)) / 2
    assert math.isclose(float(ce_critic_loss(real, real_y, fake)), real_term + fake_term, rel_tol=1e-6)
    # by hand: log(e^2 + 1 + e^-1) - 2 = 0.1699, log(e^.5 + e^1.5 + 1) - 1.5 = 0.4644,
    # log(1 + e + e^3) - 3 = 0.1700, log 3 = 1.0986
    assert math.isclose(real_term + fake_term, (0.1699 + 0.4644) / 2 + (0.1700 + 1.0986) / 2, abs_tol=1e-3)
    # generator: the target classes on the translations
    g = (nll([0.0, 1.0, 3.0], 1) + nll([1.0, 1.0, 1.0], 0)) / 2
    assert math.isclose(float(ce_generator_loss(fake, target)), g, rel_tol=1e-6)
    assert math.isclose(g, (2.1700 + 1.0986) / 2, abs_tol=1e-3)  # log(1 + e + e^3) - 1 = 2.1700
    # the game: a critic that calls every translation "generated" costs the generator most
    sure = torch.tensor([[0.0, 0.0, 9.0], [0.0, 0.0, 9.0]])
    fooled = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0]])
    assert ce_generator_loss(sure, target) > 8 and ce_generator_loss(fooled, target) < 0.01
    assert ce_critic_loss(real, real_y, sure) < ce_critic_loss(real, real_y, fooled)


# -- real data through the contract -----------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, taiwanese: Path):
    root = tmp_path_factory.mktemp("sagan")
    cfg = tiny(taiwanese, sample_every=2)
    full = loop.start_run(cfg, root / "full", log=lambda s: None)
    part = loop.start_run(cfg, root / "part", stop_after_steps=2, log=lambda s: None)
    assert part.interrupted and part.step == 2
    resumed = loop.resume_run(root / "part", log=lambda s: None)
    return root, full, resumed


def test_run_trains_and_resumes_bit_identically(runs) -> None:
    root, full, resumed = runs
    assert full.step == resumed.step == 4
    for name in ("G", "D"):  # spectral-norm power-iteration vectors included
        sd = full.modules[name].state_dict()
        assert any(k.endswith("_u") for k in sd)
        assert states_equal(sd, resumed.modules[name].state_dict()), name
    oa = load_file(ckpt.latest_checkpoint(root / "full") / "optimizers.safetensors")
    ob = load_file(ckpt.latest_checkpoint(root / "part") / "optimizers.safetensors")
    assert states_equal(oa, ob)
    keys = ("d/total", "g/total", "g/ce", "g/rec_l1")
    ma = [[r[k] for k in keys] for r in read_metrics(root / "full") if "g/total" in r]
    mb = [[r[k] for k in keys] for r in read_metrics(root / "part") if "g/total" in r]
    assert ma == mb and len(ma) == 4 and all(math.isfinite(v) for row in ma for v in row)
    # training opens the attention gates
    gammas = [m.gamma.item() for m in full.modules["G"].modules() if isinstance(m, SelfAttention)]
    assert all(g != 0 for g in gammas)
    val = [r for r in read_metrics(root / "full") if "val/rec_l1" in r]
    assert [r["step"] for r in val] == [2, 4] and "val/fake_caught" in val[-1]
    w, h = Image.open(root / "full" / "samples" / "step-0000004.png").size
    assert w == 32 * 8 and (h - 14) % 32 == 0  # source + 7 expressions


def test_samples_do_not_change_the_training_state(runs) -> None:
    """The sample grid runs the networks in eval mode: no spectral-norm power iteration."""
    root, full, _ = runs
    recipe = loop.make_recipe(read_run_config(root / "full"))
    recipe.bind(full.modules)
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in full.modules.items()}
    samples = LabelSamples(torch.rand(2, 3, 32, 32) * 2 - 1, torch.eye(7)[[0, 1]])
    grid, val = recipe.report(samples, contextlib.nullcontext)
    assert grid.shape == (14 + 2 * 32, 8 * 32, 3) and 0 <= val["cls_acc_fake"] <= 1
    assert all(states_equal(before[n], m.state_dict()) for n, m in full.modules.items())
    assert all(m.training for m in full.modules.values())


def test_wasserstein_variant_trains(taiwanese: Path, tmp_path: Path) -> None:
    loop.start_run(tiny(taiwanese, steps=2, loss="wgan", critic_steps=2), tmp_path / "w", log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "w") if "g/total" in r]
    assert len(rows) == 2 and rows[-1]["iteration"] == 4
    assert all(math.isfinite(r[k]) for r in rows for k in ("d/wasserstein", "d/gp", "d/cls", "g/adv"))


def test_export_and_edit_through_the_cli(runs, shared_data: Path, tmp_path: Path) -> None:
    root, full, _ = runs
    model = export_run(root / "full", tmp_path / "model")
    meta = json.loads((model / "config.json").read_text())
    assert meta["family"] == "sagan" and meta["condition"]["labels"] == list(EMOTION_LABELS)
    G = from_pretrained(model)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    onehot = torch.eye(7)[[1, 4]]
    with torch.no_grad():
        torch.testing.assert_close(G(x, onehot).result, full.generator.eval()(x, onehot).result, rtol=0, atol=0)

    # the ONNX graph (what `facexpr edit` runs on CPU when the folder has one) computes the same
    ort = pytest.importorskip("onnxruntime")
    from facexpr.pipeline.runner import export_onnx

    session = ort.InferenceSession(str(export_onnx(G, tmp_path / "g.onnx")))
    onnx_out = session.run(None, {"image": x.numpy(), "labels": onehot.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, G(x, onehot).result.numpy(), atol=1e-4)

    photo = shared_data / "inputs" / "misc" / "single_face.jpg"
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["edit", str(photo), "-o", str(out), "--model", str(model), "--emotion", "happy",
                                   "--format", "png"])
    assert res.exit_code == 0, res.output
    edited = np.asarray(Image.open(out / "single_face.png").convert("RGB"))
    before = np.asarray(Image.open(photo).convert("RGB"))
    assert edited.shape == before.shape and (edited != before).any()
