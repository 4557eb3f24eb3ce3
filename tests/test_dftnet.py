"""The ``dftnet`` family (flow + texture generator): shapes and ranges, identity at
initialisation, the flow convention shared with the editor, gradients through the warp, a tiny
training run on real prepared faces, exact resume, export, and a full-resolution edit."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from facexpr.cli import cli
from facexpr.models import GeneratorOutput, from_pretrained, get_family
from facexpr.models.base import FLOW_OUTPUT_CONVENTION
from facexpr.models.dftnet import DFTNetConfig, DFTNetGenerator, identity_grid, warp
from facexpr.training import checkpoint as ckpt
from facexpr.training import loop
from facexpr.training.config import TrainConfig, apply_overrides, make_config
from facexpr.training.export import export_run
from facexpr.training.recipe_dftnet import render_flow_grid
from facexpr.training.reporting import read_metrics
from facexpr.training.synthetic import make_synthetic_prepared

from helpers import states_equal


TORCH_THREADS = 1  # see conftest.torch_threads


def _inputs(b: int = 2, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1, torch.rand(b, 17, generator=g)


def _tiny_generator(size: int = 32, seed: int = 0, **overrides: object) -> DFTNetGenerator:
    torch.manual_seed(seed)
    return get_family("dftnet").build_generator(get_family("dftnet").make_config("tiny", image_size=size, **overrides))


# -- the generator ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_ranges_and_convention(size: int) -> None:
    family = get_family("dftnet")
    assert family.output_convention == FLOW_OUTPUT_CONVENTION
    G = _tiny_generator(size)
    # move the flow away from the identity so the convention is checked on a real warp
    with torch.no_grad():
        G.flow_head.weight.normal_(0, 0.05)
    x, cond = _inputs(size=size)
    out = G(x, cond)
    assert isinstance(out, GeneratorOutput)
    for name in ("result", "warped", "texture", "colour"):
        assert getattr(out, name).shape == (2, 3, size, size), name
        assert getattr(out, name).abs().max() <= 1, name
    assert out.attention.shape == (2, 1, size, size)
    assert 0 <= out.attention.min() and out.attention.max() <= 1
    assert out.flow.shape == (2, 2, size, size)
    offset = out.flow - identity_grid(size, size)
    assert offset.abs().max() <= G.config.flow_range + 1e-6
    assert offset.abs().max() > 1e-3
    torch.testing.assert_close(out.extras["offset"], offset)
    torch.testing.assert_close(out.warped, warp(x, out.flow))
    torch.testing.assert_close(out.result, out.attention * out.warped + (1 - out.attention) * out.texture)
    # the condition matters
    other = G(x, 1 - cond)
    assert (other.result - out.result).abs().max() > 1e-4


def test_untrained_model_is_near_identity() -> None:
    G = _tiny_generator(32)
    x, cond = _inputs()
    with torch.no_grad():
        out = G(x, cond)
    assert torch.equal(out.extras["offset"], torch.zeros_like(out.extras["offset"]))
    torch.testing.assert_close(out.flow, identity_grid(32, 32).expand(2, -1, -1, -1))
    torch.testing.assert_close(out.warped, x, rtol=0, atol=1e-6)
    assert out.attention.mean() > 0.9
    assert (out.result - x).abs().mean() < 0.1


def test_flow_convention_matches_the_editor() -> None:
    """Absolute positions, x then y, align_corners=False: the editor's cv2 warp of the same
    flow gives the same image, and an offset of 2/W in x shifts the image by one pixel."""
    import cv2

    from facexpr.pipeline.editor import flow_offset, warp_with_flow

    s = 32
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    yy, xx = np.mgrid[0:s, 0:s] / s
    offset = 0.08 * np.stack([np.sin(3 * yy), np.cos(2 * xx)])[None].astype(np.float32)
    flow = identity_grid(s, s) + torch.from_numpy(offset)
    ours = warp(x, flow)[0].permute(1, 2, 0).numpy()
    theirs = warp_with_flow(img.astype(np.float32), flow_offset(flow[0].permute(1, 2, 0).numpy()),
                            interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, theirs, atol=0.05)
    shift = identity_grid(s, s)
    shift[:, 0] += 2 / s
    moved = warp(x, shift)[0]
    assert torch.equal(moved[:, :, :-1], x[0, :, :, 1:])


def test_low_resolution_flow_warps_a_high_resolution_crop() -> None:
    """The flow is resolution-free: sampling a 4x crop with the upsampled positions equals
    upsampling the low-resolution warp, up to interpolation error on a smooth image."""
    s, big = 32, 128
    yy, xx = np.mgrid[0:big, 0:big] / big
    hi = torch.from_numpy(np.stack([np.sin(4 * xx), np.cos(3 * yy), xx * yy])[None].astype(np.float32))
    lo = torch.nn.functional.interpolate(hi, size=s, mode="area")
    flow = identity_grid(s, s) + 0.1 * torch.sin(identity_grid(s, s).flip(1) * 3)
    flow_big = torch.nn.functional.interpolate(flow, size=big, mode="bilinear", align_corners=False)
    sharp = warp(hi, flow_big)
    blurry = torch.nn.functional.interpolate(warp(lo, flow), size=big, mode="bilinear", align_corners=False)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (sharp - blurry)[inner].abs().mean() < 0.02


def test_gradient_reaches_the_flow_decoder_through_the_warp() -> None:
    G = _tiny_generator(32)
    x, cond = _inputs()
    target = torch.roll(x, 1, dims=-1)
    (G(x, cond).result - target).abs().mean().backward()
    # at initialisation the zero flow head receives gradient through grid_sample ...
    assert G.flow_head.weight.grad.abs().sum() > 0
    assert G.attention_head.weight.grad.abs().sum() > 0
    assert G.texture_head[0].weight.grad.abs().sum() > 0
    # ... and once it is non-zero, so does the whole flow decoder and the shared encoder
    G.zero_grad(set_to_none=True)
    with torch.no_grad():
        G.flow_head.weight.normal_(0, 0.02)
    out = G(x, cond)
    (out.warped - target).abs().mean().backward()
    for name, p in G.flow_decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert G.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in G.texture_head.parameters())  # warped depends on flow only


def test_presets_and_overrides() -> None:
    family = get_family("dftnet")
    paper = family.make_config("paper")
    assert (paper.width, paper.downs, paper.image_size, paper.num_aus) == (64, 2, 128, 17)
    c = TrainConfig(model="dftnet")
    r = c.resolved_recipe_config()  # the loss weights are the recipe's, with the papers' values
    assert (r.lambda_adv, r.lambda_attention_l1, r.lambda_flow_tv) == (1.0, 1.0, 1e-4)
    assert (r.lambda_gp, r.lambda_cond, r.lambda_cycle, r.critic_steps) == (10.0, 4000.0, 10.0, 5)
    c2 = apply_overrides(c, ["lambda_flow_tv=1e-3", "lambda_attention_l1=0.5", "lambda_adv=2", "flow_range=0.1",
                             "lambda_cycle=5"])
    r2 = c2.resolved_recipe_config()
    assert (r2.lambda_flow_tv, r2.lambda_attention_l1, r2.lambda_adv) == (1e-3, 0.5, 2.0)
    assert c2.resolved_model_config().flow_range == 0.1 and r2.lambda_cycle == 5.0
    with pytest.raises(ValueError, match="divisible"):
        DFTNetGenerator(DFTNetConfig(image_size=36, downs=3))


# -- training on real prepared faces ------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(request, tmp_path_factory) -> Path:
    """~30 real LFW photos prepared at 32 px by ``facexpr.data.prepare``; synthetic crops when
    the shared data (or MediaPipe) is absent, so the engine is still exercised."""
    tmp = tmp_path_factory.mktemp("dftdata")
    try:
        shared = request.getfixturevalue("shared_data")
        pytest.importorskip("mediapipe")
    except pytest.skip.Exception:
        return make_synthetic_prepared(tmp / "syn", n=40, size=32, identities=10)
    from facexpr.data.prepare import prepare

    lfw = shared / "lfw"
    with open(lfw / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    manifest = tmp / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows[:33])
    out = tmp / "lfw"
    prepare(lfw, out, sizes=(32,), manifest=manifest, workers=1, progress=False)
    return out


def _tiny(data: Path, **kw: object) -> TrainConfig:
    base: dict = dict(model="dftnet", preset="tiny", data=[str(data)], batch=4, steps=20, workers=0, progress=False,
                      log_every=1, sample_every=1000, checkpoint_every=1000, sample_faces=4)
    base.update(kw)
    return make_config(**base)


@pytest.fixture(scope="module")
def trained_run(prepared: Path, tmp_path_factory):
    run = tmp_path_factory.mktemp("dftruns") / "d"
    result = loop.start_run(_tiny(prepared, sample_every=10, checkpoint_every=10), run, log=lambda s: None)
    return result


def test_tiny_run_trains_with_finite_moving_losses(trained_run) -> None:
    result = trained_run
    assert result.step == 20 and not result.interrupted
    rows = [r for r in read_metrics(result.run_dir) if "g/total" in r]
    assert [r["step"] for r in rows] == list(range(1, 21))
    for key in ("d/total", "d/gp", "d/au_mse", "g/total", "g/adv", "g/au_mse", "g/cycle_l1", "g/texture_share",
                "g/flow_tv", "g/flow_px"):
        values = [r[key] for r in rows]
        assert all(math.isfinite(v) for v in values), key
        assert np.std(values) > 0, f"{key} does not move"
    assert rows[-1]["g/flow_px"] > 0  # the flow left the identity
    doc = json.loads((result.run_dir / "config.json").read_text())
    assert doc["family"] == "dftnet" and doc["model_config"]["width"] == 8
    grids = sorted((result.run_dir / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step-0000010.png", "step-0000020.png"]
    # the loop draws this family's grid: source | (warped | texture | A | result) x 4 targets
    w, h = Image.open(grids[-1]).size
    assert w == 32 * (1 + 4 * 4) and (h - 14) % 32 == 0 and h > 14 + 32
    # the flow-family grid: source | (warped | texture | A | result) per target
    x, cond = _inputs(b=3)
    grid = render_flow_grid(result.generator, x, [("a", cond * 5), ("b", (1 - cond) * 5)])
    assert grid.shape == (14 + 3 * 32, 32 * (1 + 4 * 2), 3) and grid.dtype == np.uint8


def test_resume_gives_identical_weights(prepared: Path, tmp_path: Path) -> None:
    cfg = _tiny(prepared, steps=4, critic_steps=3)
    full = loop.start_run(cfg, tmp_path / "full", log=lambda s: None)
    part = loop.start_run(cfg, tmp_path / "part", stop_after_steps=2, log=lambda s: None)
    assert part.interrupted and part.step == 2
    resumed = loop.resume_run(tmp_path / "part", log=lambda s: None)
    assert resumed.step == 4 and not resumed.interrupted
    wa = load_file(ckpt.latest_checkpoint(tmp_path / "full") / "weights.safetensors")
    wb = load_file(ckpt.latest_checkpoint(tmp_path / "part") / "weights.safetensors")
    assert any(k.startswith("D/") for k in wa) and states_equal(wa, wb)
    assert states_equal(full.raw_generator.state_dict(), resumed.raw_generator.state_dict())


def test_cli_train_dry_run_accepts_dftnet_options(prepared: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["train", "--model", "dftnet", "--data", str(prepared), "--out", str(tmp_path / "x"),
                                   "--preset", "small", "--batch", "4", "--steps", "3",
                                   "--set", "lambda_flow_tv=0.001", "--set", "flow_range=0.2", "--dry-run"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["family"] == "dftnet"
    assert doc["recipe_config"]["lambda_flow_tv"] == 0.001 and doc["model_config"]["flow_range"] == 0.2
    assert doc["model_config"]["width"] == 32  # from the small preset
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def model_folder(trained_run, tmp_path_factory) -> Path:
    return export_run(trained_run.run_dir, tmp_path_factory.mktemp("dftmodel") / "dftnet-tiny")


def test_export_round_trip(trained_run, model_folder: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["export", str(trained_run.run_dir), str(tmp_path / "viacli"), "--fp16"])
    assert res.exit_code == 0, res.output
    assert from_pretrained(tmp_path / "viacli").config == trained_run.generator.config
    G = from_pretrained(model_folder)
    assert type(G).__name__ == "DFTNetGenerator" and not G.training
    meta = json.loads((model_folder / "config.json").read_text())
    assert meta["family"] == "dftnet" and meta["output_convention"] == FLOW_OUTPUT_CONVENTION
    x, cond = _inputs()
    with torch.no_grad():
        a, b = G(x, cond), trained_run.generator(x, cond)
    for name in ("result", "flow", "attention", "texture"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_onnx_export_matches_torch(model_folder: Path, tmp_path: Path) -> None:
    """grid_sample and the bilinear upsampling export (opset 17), so the editor's onnxruntime
    backend works for this family too."""
    pytest.importorskip("onnxruntime")
    from facexpr.pipeline.runner import OnnxRunner, TorchRunner, export_onnx

    G = from_pretrained(model_folder)
    path = export_onnx(G, tmp_path / "generator.onnx")
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    aus = (rng.random((2, 17)) * 5).astype(np.float32)
    a, b = TorchRunner(G)(crops, aus), OnnxRunner(path, 32)(crops, aus)
    assert {"flow", "warped", "texture", "attention", "result"} <= set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4, err_msg=name)


def test_editor_edits_a_1024_portrait_with_a_dftnet_model(model_folder: Path, portraits: list[Path]) -> None:
    """The pipeline needs nothing family-specific: same size out, pixels outside the paste mask
    untouched, the face changed, and the detail kept (the full-resolution crop is warped)."""
    from facexpr.face.align import align_face, paste_back
    from facexpr.face.detect import FaceAnalyzer
    from facexpr.imageio import load_image
    from facexpr.pipeline.editor import Editor
    from facexpr.pipeline.targets import EmotionTarget

    img = load_image(portraits[0]).rgb
    with Editor.from_pretrained(str(model_folder), backend="torch") as editor:
        result = editor.edit(img, EmotionTarget("happy", 1.0), details=True)
    assert result.image.shape == img.shape == (1024, 1024, 3)
    assert len(result.faces) == 1
    face = result.faces[0]
    assert face.work_size > 32  # composed at the face's own resolution, not the model's
    # every pixel the paste mask does not reach (mapped back to the photo, grown by 3 px for
    # interpolation) is byte-identical; faces fill these portraits, so this is the real test
    h, w = img.shape[:2]
    reach = cv2.warpAffine(face.mask.astype(np.float32), face.matrix, (w, h),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    keep = cv2.dilate((reach > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) == 0
    assert keep.mean() > 0.3
    assert np.array_equal(result.image[keep], img[keep])
    x0, y0, x1, y1 = face.box
    changed = (result.image != img).any(-1)
    assert changed.sum() > 500
    inner = (slice(int(y0 + 0.2 * (y1 - y0)), int(y1 - 0.1 * (y1 - y0))),
             slice(int(x0 + 0.15 * (x1 - x0)), int(x1 - 0.15 * (x1 - x0))))

    def sharpness(rgb: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())

    # The floor is the pipeline's own resampling (align to the working crop, paste back), which
    # any family pays; a 32 px model whose pixels came from its texture would be ~25x upsampled
    # mush far below it. The warp of the full-resolution crop keeps the edit at that floor.
    with FaceAnalyzer() as analyzer:
        landmarks = analyzer.analyze(img)[0].landmarks
    aligned = align_face(img, landmarks, face.work_size)
    floor = paste_back(img, aligned.crop, aligned.matrix, np.ones((face.work_size,) * 2, np.float32))
    assert sharpness(result.image[inner]) > 0.8 * sharpness(floor[inner])
