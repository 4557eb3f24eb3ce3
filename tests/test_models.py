"""Generator/critic shapes and ranges, the registry, and the model-folder round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from facexpr import models
from facexpr.errors import ConfigError
from facexpr.models import GeneratorOutput, from_pretrained, get_family, save_pretrained

FAMILIES = ["ganimation", "ganimation-adain"]


TORCH_THREADS = 1  # see conftest.torch_threads


def _inputs(b: int = 2, size: int = 32, labels: int = 17, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1, torch.rand(b, labels, generator=g)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size,upsample", [(32, "transpose"), (64, "transpose"), (32, "nearest")])
def test_generator_shapes_ranges_and_convention(name: str, size: int, upsample: str) -> None:
    family = get_family(name)
    torch.manual_seed(0)
    G = family.build_generator(family.make_config("tiny", image_size=size, upsample=upsample))
    x, cond = _inputs(size=size)
    out = G(x, cond)
    assert isinstance(out, GeneratorOutput)
    assert out.result.shape == (2, 3, size, size)
    assert out.colour.shape == (2, 3, size, size)
    assert out.attention.shape == (2, 1, size, size)
    assert out.flow is None and out.warped is None and out.texture is None
    assert out.attention.min() >= 0 and out.attention.max() <= 1
    assert out.colour.abs().max() <= 1 and out.result.abs().max() <= 1
    # the project convention: A = 1 keeps the source pixel
    expected = out.attention * x + (1 - out.attention) * out.colour
    torch.testing.assert_close(out.result, expected)
    # the condition matters
    out2 = G(x, 1 - cond)
    assert not torch.allclose(out.result, out2.result)


@pytest.mark.parametrize("labels", [1, 7, 52])
def test_adain_accepts_any_label_size(labels: int) -> None:
    family = get_family("ganimation-adain")
    G = family.build_generator(family.make_config("tiny", image_size=32, num_aus=labels))
    x, cond = _inputs(labels=labels)
    assert G(x, cond).result.shape == (2, 3, 32, 32)
    D = family.build_critic(family.make_config("tiny", image_size=32, num_aus=labels))
    assert D(x)[1].shape == (2, labels)


def test_concat_generator_rejects_wrong_label_size() -> None:
    family = get_family("ganimation")
    G = family.build_generator(family.make_config("tiny", image_size=32))
    x, cond = _inputs(labels=5)
    with pytest.raises(RuntimeError):
        G(x, cond)


@pytest.mark.parametrize("size,patch", [(32, 2), (64, 2), (128, 2), (48, 3)])
def test_critic_heads(size: int, patch: int) -> None:
    family = get_family("ganimation")
    D = family.build_critic(family.make_config("tiny", image_size=size))
    scores, aus = D(torch.zeros(3, 3, size, size))
    assert scores.shape == (3, 1, patch, patch)
    assert aus.shape == (3, 17)
    # PatchGAN without normalisation layers (WGAN-GP critics must not normalise over the batch)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in D.modules())


def test_paper_generator_size() -> None:
    """The paper preset is the reference architecture (8.5 M parameters at 17 AUs)."""
    G = get_family("ganimation").build_generator(get_family("ganimation").make_config("paper"))
    n = sum(p.numel() for p in G.parameters())
    assert 8.4e6 < n < 8.6e6
    small = get_family("ganimation").build_generator(get_family("ganimation").make_config("small"))
    assert sum(p.numel() for p in small.parameters()) < n / 4


def test_registry_errors() -> None:
    assert set(FAMILIES) <= set(models.family_names())
    with pytest.raises(ConfigError, match="unknown model"):
        get_family("nope")
    with pytest.raises(ConfigError, match="unknown preset"):
        get_family("ganimation").make_config("huge")
    with pytest.raises(ConfigError, match="unknown GANimationConfig field"):
        get_family("ganimation").make_config(widht=3)
    with pytest.raises(ValueError, match="upsample"):
        get_family("ganimation").build_generator(get_family("ganimation").make_config(upsample="bilinear"))
    with pytest.raises(ConfigError, match="not a valid int"):
        get_family("ganimation").make_config(width="wide")
    assert get_family("ganimation").make_config(width="16").width == 16


@pytest.mark.parametrize("name", FAMILIES)
def test_save_from_pretrained_round_trip(tmp_path, name: str) -> None:
    family = get_family(name)
    torch.manual_seed(1)
    G = family.build_generator(family.make_config("tiny", image_size=32)).eval()
    x, cond = _inputs()
    folder = save_pretrained(G, tmp_path / "m", model_card="# card\n", training={"step": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "config.json", "generator.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["family"] == name and meta["image_size"] == 32 and meta["condition"]["network_input"] == "aus / 5"
    assert meta["components"] == {"generator": "generator.safetensors"}
    assert meta["au_names"][0] == "AU01" and len(meta["au_names"]) == 17
    assert "attention * source" in meta["output_convention"]
    G2 = from_pretrained(folder, device="cpu")
    assert type(G2) is type(G) and not G2.training
    with torch.no_grad():
        torch.testing.assert_close(G2(x, cond).result, G(x, cond).result, rtol=0, atol=0)
    # fp16: half the bytes, outputs close
    folder16 = save_pretrained(G, tmp_path / "m16", fp16=True)
    assert all(t.dtype == torch.float16 for t in load_file(folder16 / "generator.safetensors").values())
    G3 = from_pretrained(folder16)
    with torch.no_grad():
        torch.testing.assert_close(G3(x, cond).result, G(x, cond).result, rtol=0, atol=5e-3)
    with pytest.raises(Exception, match="already exists"):
        save_pretrained(G, folder)


def test_from_pretrained_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a facexpr model folder"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "facexpr-model", "family": "nope"}))
    with pytest.raises(ConfigError, match="unknown model"):
        from_pretrained(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_forward() -> None:
    family = get_family("ganimation")
    G = family.build_generator(family.make_config("tiny", image_size=32)).cuda()
    x, cond = _inputs()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = G(x.cuda(), cond.cuda())
    assert torch.isfinite(out.result.float()).all()


def test_model_folders_are_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """The folder writers (model, geometry, depth net) go through atomic_folder: a failure while
    writing leaves the earlier folder as it was and no temporary folder behind; a finished write
    replaces it, with the usual permissions."""
    import os

    from facexpr.atomic import atomic_folder
    from facexpr.errors import OutputError

    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "config.json").write_text("new")
            raise RuntimeError("interrupted")
    assert (target / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_folder(target) as tmp:
        (tmp / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((target / "config.json").stat().st_mode & 0o777) == 0o666 & ~umask
    # the swap itself failing after the old folder was moved aside puts the old folder back
    real_replace = os.replace

    def failing_swap(src, dst):
        if Path(dst) == target and not str(src).endswith(".old"):  # the new folder moving in
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    os.replace = failing_swap
    try:
        with pytest.raises(OutputError, match="Input/output error"):
            with atomic_folder(target) as tmp:
                (tmp / "config.json").write_text("newer")
    finally:
        os.replace = real_replace
    assert (target / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # a real writer failing half-way (disk full while writing the weights) keeps the earlier model
    family = get_family("ganimation")
    G = family.build_generator(family.make_config("tiny", image_size=32))
    model_dir = save_pretrained(G, tmp_path / "g")
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    import safetensors.torch  # save_pretrained imports its writer from here when it runs

    calls = []

    def full_disk(*args, **kwargs):
        calls.append(args)
        raise OSError(28, "No space left on device")

    original, safetensors.torch.save_file = safetensors.torch.save_file, full_disk
    try:
        with pytest.raises(OutputError, match="No space left"):
            save_pretrained(G, model_dir, overwrite=True)
    finally:
        safetensors.torch.save_file = original
    assert calls and {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "model"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write the depth-net folder"):
        with atomic_folder(blocker / "sub", "depth-net folder"):
            pass
