"""The training engine: tiny runs on real (LFW) and synthetic prepared data, exact resume,
checkpoint format and crash safety, Ctrl-C, CLI validation, export."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from facexpr.cli import cli
from facexpr.errors import ConfigError, DatasetError
from facexpr.models import from_pretrained
from facexpr.training import checkpoint as ckpt
from facexpr.training import loop
from facexpr.training.config import TrainConfig, apply_overrides, make_config
from facexpr.training.data import ExpressionPairs, ResumableSampler
from facexpr.training.export import data_terms, export_run
from facexpr.training.reporting import read_metrics
from facexpr.training.synthetic import make_synthetic_prepared

from helpers import states_equal

REPO = Path(__file__).resolve().parents[1]


TORCH_THREADS = 1  # see conftest.torch_threads


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return make_synthetic_prepared(tmp_path_factory.mktemp("syn") / "syn", n=40, size=32, identities=10)


@pytest.fixture(scope="session")
def lfw_prepared(tmp_path_factory, shared_data: Path) -> Path:
    """~40 real LFW photos prepared at 32 px by ``facexpr.data.prepare`` (skips without data)."""
    pytest.importorskip("mediapipe")
    from facexpr.data.prepare import prepare

    lfw = shared_data / "lfw"
    tmp = tmp_path_factory.mktemp("lfw")
    with open(lfw / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    manifest = tmp / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows[:45])
    out = tmp / "lfw"
    prepare(lfw, out, sizes=(32,), manifest=manifest, workers=1, progress=False)
    return out


def tiny(data: Path, **kw) -> TrainConfig:
    base = dict(model="ganimation", preset="tiny", data=[str(data)], batch=8, steps=4, workers=0, progress=False,
                log_every=1, sample_every=1000, checkpoint_every=1000, sample_faces=4)
    base.update(kw)
    return make_config(**base)


@pytest.fixture(scope="module")
def trained_run(request, tmp_path_factory, synthetic_data: Path):
    """One ganimation run of 24 generator steps on real faces (synthetic if the data is absent)."""
    try:
        data = request.getfixturevalue("lfw_prepared")
    except pytest.skip.Exception:
        data = synthetic_data
    run = tmp_path_factory.mktemp("runs") / "g"
    result = loop.start_run(tiny(data, steps=24, sample_every=12, checkpoint_every=8), run, log=lambda s: None)
    return data, result


def test_tiny_run_trains_with_finite_moving_losses(trained_run) -> None:
    data, result = trained_run
    run = result.run_dir
    assert result.step == 24 and not result.interrupted
    rows = [r for r in read_metrics(run) if "g/total" in r]
    assert [r["step"] for r in rows] == list(range(1, 25))
    for key in ("d/total", "d/gp", "d/au_mse", "g/total", "g/adv", "g/au_mse", "g/cycle_l1", "g/attention_reg"):
        values = [r[key] for r in rows]
        assert all(math.isfinite(v) for v in values), key
        assert np.std(values) > 0, f"{key} does not move"
    # the critic learns to read AUs off real faces
    assert np.mean([r["d/au_mse"] for r in rows[-6:]]) < np.mean([r["d/au_mse"] for r in rows[:6]])
    assert rows[-1]["lr_factor"] < rows[0]["lr_factor"] == 1.0  # linear decay at the end
    # run folder
    doc = json.loads((run / "config.json").read_text())
    assert doc["model_config"]["width"] == 8 and doc["schedule"]["total_steps"] == 24
    assert doc["data"]["train"] + doc["data"]["val"] == doc["data"]["total"]
    assert (run / "loss_curves.png").stat().st_size > 1000
    grids = sorted((run / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step-0000012.png", "step-0000024.png"]
    w, h = Image.open(grids[-1]).size
    assert w == 32 * (1 + 3 * 4) and (h - 14) % 32 == 0 and h > 14 + 32
    assert any("val/au_mae" in r for r in read_metrics(run))


def test_adain_family_trains(synthetic_data: Path, tmp_path: Path) -> None:
    res = loop.start_run(tiny(synthetic_data, model="ganimation-adain", steps=6), tmp_path / "a", log=lambda s: None)
    rows = [r for r in read_metrics(tmp_path / "a") if "g/total" in r]
    assert len(rows) == 6 and all(math.isfinite(r["g/total"]) for r in rows)
    assert res.generator.family == "ganimation-adain"


def test_resume_is_bit_identical(synthetic_data: Path, tmp_path: Path) -> None:
    """Stop mid-epoch, resume (with DataLoader workers this time): same weights, same optimiser
    state and same metrics as one uninterrupted run."""
    cfg = tiny(synthetic_data, steps=4, critic_steps=3, model="ganimation-adain")
    full = loop.start_run(cfg, tmp_path / "full", log=lambda s: None)
    part = loop.start_run(cfg, tmp_path / "part", stop_after_steps=1, log=lambda s: None)
    assert part.interrupted and part.step == 1 and part.iteration == 3
    ipe = json.loads((tmp_path / "part" / "config.json").read_text())["schedule"]["iterations_per_epoch"]
    assert part.iteration % ipe != 0, "the interruption should fall mid-epoch"
    resumed = loop.resume_run(tmp_path / "part", overrides={"workers": 2}, log=lambda s: None)
    assert resumed.step == 4 and not resumed.interrupted
    assert states_equal(full.generator.state_dict(), resumed.generator.state_dict())
    assert states_equal(full.raw_generator.state_dict(), resumed.raw_generator.state_dict())
    wa = load_file(ckpt.latest_checkpoint(tmp_path / "full") / "optimizers.safetensors")
    wb = load_file(ckpt.latest_checkpoint(tmp_path / "part") / "optimizers.safetensors")
    assert states_equal(wa, wb)
    ma = [r for r in read_metrics(tmp_path / "full") if "g/total" in r]
    mb = [r for r in read_metrics(tmp_path / "part") if "g/total" in r]
    key = ("d/total", "g/total", "g/cycle_l1")
    assert [[r[k] for k in key] for r in ma] == [[r[k] for k in key] for r in mb]
    # extending a finished run continues to the new total
    more = loop.resume_run(tmp_path / "full", steps=5, log=lambda s: None)
    assert more.step == 5
    with pytest.raises(ConfigError, match="cannot change"):
        loop.resume_run(tmp_path / "full", overrides={"lr_g": 1.0})


def test_checkpoints_are_safetensors_and_json_without_pickle(trained_run, monkeypatch) -> None:
    _, result = trained_run
    run = result.run_dir
    banned = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}
    assert not [p for p in run.rglob("*") if p.suffix in banned]
    folders = ckpt.list_checkpoints(run)
    assert 1 <= len(folders) <= 2  # keep_checkpoints = 2
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == [
            "optimizers.safetensors", "rng.safetensors", "state.json", "weights.safetensors"]
        weights = load_file(folder / "weights.safetensors")
        assert any(k.startswith("G_ema/") for k in weights) and any(k.startswith("D/") for k in weights)
        state = json.loads((folder / "state.json").read_text())
        assert {"step", "iteration", "optimizers", "rng"} <= set(state)

    def no_pickle(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    family = TrainConfig().family()
    cfg = tiny(Path("."), size=32)
    mcfg = cfg.resolved_model_config()
    mods = {"G": family.build_generator(mcfg), "D": family.build_critic(mcfg), "G_ema": family.build_generator(mcfg)}
    opts = {"G": torch.optim.Adam(mods["G"].parameters()), "D": torch.optim.Adam(mods["D"].parameters())}
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run), mods, opts, restore_rng_state=False)
    assert state["step"] == 24
    assert states_equal(mods["G_ema"].state_dict(), result.generator.state_dict())


def test_checkpoint_survives_a_kill_mid_write(synthetic_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    loop.start_run(tiny(synthetic_data, steps=2, checkpoint_every=1), run, log=lambda s: None)
    good = ckpt.latest_checkpoint(run)
    root = run / ckpt.DIRNAME
    # a write killed before its rename, and one killed before its state.json
    (root / ".it-00000099.abc").mkdir()
    (root / ".it-00000099.abc" / "weights.safetensors").write_bytes(b"\0" * 10)
    (root / "it-00000100").mkdir()
    (root / "it-00000100" / "weights.safetensors").write_bytes(b"\0" * 10)
    assert ckpt.latest_checkpoint(run) == good
    (root / ckpt.LATEST).write_text("{trunc")  # torn pointer: fall back to the newest complete one
    assert ckpt.latest_checkpoint(run) == good
    resumed = loop.resume_run(run, steps=3, log=lambda s: None)
    assert resumed.step == 3
    assert not list(root.glob(".it-*"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(synthetic_data: Path, tmp_path: Path, signum: int) -> None:
    run = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "facexpr.cli", "train", "--model", "ganimation", "--preset", "tiny",
           "--data", str(synthetic_data), "--out", str(run), "--batch", "8", "--steps", "100000",
           "--workers", "1", "--checkpoint-every", "100000", "--sample-every", "100000", "--no-progress",
           "--set", "log_every=1"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() or not read_metrics(run):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.time() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "interrupted: checkpoint saved" in out and "--resume" in out
    state = ckpt.read_checkpoint_state(ckpt.latest_checkpoint(run))
    assert state["step"] >= 1
    resumed = loop.resume_run(run, steps=state["step"] + 1, log=lambda s: None)
    assert resumed.step == state["step"] + 1


def test_cli_validates_before_work(synthetic_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def call(*args: str):
        return runner.invoke(cli, ["train", *args], catch_exceptions=True)

    res = call("--model", "nope", "--data", str(synthetic_data), "--out", str(tmp_path / "x"))
    assert isinstance(res.exception, ConfigError) and "unknown model" in str(res.exception)
    res = call("--model", "ganimation", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert isinstance(res.exception, DatasetError)
    res = call("--model", "ganimation", "--data", str(synthetic_data), "--out", str(tmp_path / "x"),
               "--set", "lambda_cycel=5")
    assert isinstance(res.exception, ConfigError) and "lambda_cycle" in str(res.exception)
    res = call("--model", "ganimation", "--data", str(synthetic_data), "--out", str(tmp_path / "x"),
               "--set", "batch=many")
    assert isinstance(res.exception, ConfigError)
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "f").write_text("x")
    res = call("--model", "ganimation", "--data", str(synthetic_data), "--out", str(tmp_path / "exists"))
    assert isinstance(res.exception, ConfigError) and "--resume" in str(res.exception)
    res = call("--resume", str(tmp_path / "exists"), "--model", "ganimation")
    assert res.exit_code != 0 and "only --steps" in res.output
    assert not (tmp_path / "x").exists()
    res = call("--model", "ganimation-adain", "--data", str(synthetic_data), "--out", str(tmp_path / "x"),
               "--preset", "small", "--batch", "4", "--steps", "7", "--set", "lambda_cycle=5", "--set", "width=16",
               "--dry-run")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["recipe_config"]["lambda_cycle"] == 5.0 and doc["model_config"]["width"] == 16
    assert doc["model_config"]["res_blocks"] == 4  # from the small preset
    assert doc["data"]["total"] == 40 and doc["data"]["train"] + doc["data"]["val"] == 40
    assert doc["schedule"]["total_steps"] == 7
    assert not (tmp_path / "x").exists()


def test_paper_defaults() -> None:
    c = TrainConfig()
    r = c.resolved_recipe_config()
    assert (r.lr_g, r.lr_d, r.beta1, r.beta2, c.batch, r.critic_steps) == (1e-4, 1e-4, 0.5, 0.999, 25, 5)
    assert (r.lambda_gp, r.lambda_cond, r.lambda_cycle, r.lambda_attention_mean, r.lambda_attention_tv) == (
        10.0, 4000.0, 10.0, 0.1, 1e-5)
    assert c.epochs == 30 and c.decay_fraction == pytest.approx(1 / 3)
    c2 = apply_overrides(c, ["lambda_cycle=5", "flip=false", "res_blocks=2"])
    assert c2.resolved_recipe_config().lambda_cycle == 5.0 and c2.flip is False
    assert c2.resolved_model_config().res_blocks == 2
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(c, ["lambda_cycle"])
    with pytest.raises(ConfigError, match="dedicated option"):
        apply_overrides(c, ["image_size=64"])
    from facexpr.training.config import validate

    with pytest.raises(ConfigError, match="upsample"):
        validate(apply_overrides(TrainConfig(data=["x"]), ["upsample=bilinear"]))
    with pytest.raises(ConfigError, match="divisible"):
        validate(TrainConfig(data=["x"], size=30))


def test_lr_schedule() -> None:
    assert loop.lr_factor(0, 300, 1 / 3) == 1.0
    assert loop.lr_factor(199, 300, 1 / 3) == 1.0
    assert loop.lr_factor(250, 300, 1 / 3) == pytest.approx(0.5)
    assert loop.lr_factor(299, 300, 1 / 3) == pytest.approx(0.01)
    assert loop.lr_factor(10, 300, 0.0) == 1.0


def test_dataset_flip_targets_and_sampler(synthetic_data: Path) -> None:
    from facexpr.data.dataset import PreparedDataset

    prepared = PreparedDataset(synthetic_data)
    idx = np.arange(len(prepared))
    ds = ExpressionPairs(prepared, idx, 32, seed=3, flip=True, target_noise=0.0)
    flipped = 0
    for pos in range(len(ds)):
        item = ds[(0, pos)]
        assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() <= item["image"].max() <= 1
        # flipping keeps the AU label (our AUs are bilateral)
        assert torch.equal(item["aus"], torch.from_numpy(prepared.aus[pos]))
        # without noise the target is another sample's real AU vector
        matches = np.flatnonzero((prepared.aus == item["target_aus"].numpy()).all(1))
        assert len(matches) and pos not in matches.tolist()
        raw = torch.from_numpy(prepared.image(pos).copy()).permute(2, 0, 1).float() / 127.5 - 1
        flipped += int(torch.allclose(item["image"], raw.flip(-1)) and not torch.allclose(item["image"], raw))
    assert 5 < flipped < len(ds) - 5
    # deterministic per key, different across epochs
    assert torch.equal(ds[(2, 5)]["image"], ds[(2, 5)]["image"])
    assert any(not torch.equal(ds[(0, p)]["target_aus"], ds[(1, p)]["target_aus"]) for p in range(5))
    # the sampler can start mid-epoch, and two ranks partition an epoch
    s = ResumableSampler(ds, 1, 0, seed=1)
    s.set_epoch(4)
    full = list(s)
    s.set_start(10)
    assert list(s) == full[10:] and len(s) == len(full) - 10
    r0, r1 = ResumableSampler(ds, 2, 0, seed=1), ResumableSampler(ds, 2, 1, seed=1)
    assert sorted(p for _, p in [*r0, *r1]) == list(range(len(ds)))


def test_export_round_trip(trained_run, tmp_path: Path) -> None:
    data, result = trained_run
    out = export_run(result.run_dir, tmp_path / "model")
    G = from_pretrained(out)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    cond = torch.rand(2, 17)
    with torch.no_grad():
        torch.testing.assert_close(G(x, cond).result, result.generator(x, cond).result, rtol=0, atol=0)
    card = (out / "MODEL_CARD.md").read_text()
    assert "Steps: 24 of 24" in card and "research use" in card and "lambda_cycle 10" in card
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["step"] == 24 and meta["training"]["split"]["train"] > 0
    if data.name == "lfw":
        assert "Labeled Faces in the Wild" in card
    out16 = export_run(result.run_dir, tmp_path / "m16", fp16=True)
    assert (out16 / "generator.safetensors").stat().st_size < 0.6 * (out / "generator.safetensors").stat().st_size
    runner = CliRunner()
    res = runner.invoke(cli, ["export", str(result.run_dir), str(tmp_path / "m3")])
    assert res.exit_code == 0 and (tmp_path / "m3" / "MODEL_CARD.md").exists()


def test_data_terms_name_the_licences() -> None:
    terms = data_terms([{"name": "utkface"}, {"name": "lfw"}, {"name": "taiwanese"}, {"name": "mine"}])
    assert "non-commercial" in terms[0][2]
    assert "research" in terms[1][2]
    assert "academic" in terms[2][2]
    assert "unknown" in terms[3][2]


def _train_cmd(run: Path, data: Path | None, steps: int) -> list[str]:
    if data is None:  # resume
        return [sys.executable, "-m", "facexpr.cli", "train", "--resume", str(run), "--steps", str(steps),
                "--no-progress"]
    return [sys.executable, "-m", "facexpr.cli", "train", "--model", "ganimation", "--preset", "tiny",
            "--data", str(data), "--out", str(run), "--batch", "8", "--steps", str(steps), "--workers", "0",
            "--checkpoint-every", "1", "--sample-every", "100000", "--no-progress", "--set", "log_every=1"]


@pytest.mark.slow
def test_sigkill_at_ten_random_moments_resumes_bit_identically(synthetic_data: Path, tmp_path: Path) -> None:
    """SIGKILL a training process 10 times at random moments (checkpoints are written every step,
    so kills land inside checkpoint writes too); every resume continues from the newest complete
    checkpoint, loses at most one checkpoint interval, and the run ends bit-identical to one that
    was never interrupted."""
    steps = 60
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = subprocess.run(_train_cmd(ref, synthetic_data, steps), env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rng = np.random.default_rng(0)
    kills = 0
    while kills < 10:
        first = not run.exists()
        proc = subprocess.Popen(_train_cmd(run, synthetic_data if first else None, steps), env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = len(read_metrics(run)) if (run / "metrics.jsonl").exists() else 0
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:  # until it has trained a little
            if (run / "metrics.jsonl").exists() and len(read_metrics(run)) > start:
                break
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.6)))
        if proc.poll() is not None:
            break  # finished before the kill: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills += 1
        latest = ckpt.latest_checkpoint(run)
        if latest is not None:
            saved = ckpt.read_checkpoint_state(latest)["step"]
            logged = max((r.get("step", 0) for r in read_metrics(run) if "g/total" in r), default=0)
            assert saved >= logged - 1, (saved, logged)  # at most one checkpoint interval lost
    print(f"{kills} SIGKILLs, then a final resume")
    assert kills >= 8, f"only {kills} kills landed before the run finished"
    final = subprocess.run(_train_cmd(run, None, steps), env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stdout + final.stderr
    a = load_file(ckpt.latest_checkpoint(ref) / "weights.safetensors")
    b = load_file(ckpt.latest_checkpoint(run) / "weights.safetensors")
    assert ckpt.read_checkpoint_state(ckpt.latest_checkpoint(run))["step"] == steps
    assert states_equal(a, b)
