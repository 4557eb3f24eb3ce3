"""A corpus of bad and unusual inputs, run through every command as a new user would.

Every case is generated here, in a temporary folder (nothing from the shared data is copied into
the repository). Each asserts: the exit status (non-zero when something failed), a message that
names the file or option at fault, no Python traceback (the command ends with a clean exit, a
click usage error or a facexpr error, exactly what ``facexpr.cli.main`` turns into ``error: ...``),
and that no input and no pre-existing output changed (hashes before and after).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facexpr.cli import cli
from facexpr.errors import FacexprError

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "facexpr" / "weights"
GAN = "ganimation-adain-cpu128"


# ---------------------------------------------------------------------------------------------
# running a command the way `facexpr` does


@dataclass
class Outcome:
    code: int
    output: str
    exception: BaseException | None


def run_cli(*args: str | Path) -> Outcome:
    """Run ``facexpr ARGS`` in-process with the same exception handling as ``facexpr.cli.main``."""
    result = CliRunner().invoke(cli, [str(a) for a in args], standalone_mode=False, catch_exceptions=True)
    exc = result.exception
    text = result.output
    code = 0
    if isinstance(exc, SystemExit):
        code = int(exc.code or 0)
        exc = None
    elif isinstance(exc, click.ClickException):
        code, text = exc.exit_code, text + "\nerror: " + exc.format_message()
        exc = None
    elif isinstance(exc, FacexprError):
        code, text = 1, text + f"\nerror: {exc}"
        exc = None
    elif exc is not None:  # what main() would show as a traceback
        import traceback

        text += "\n" + "".join(traceback.format_exception(exc))
        code = 1
    return Outcome(code, text, exc)


def tree_hash(*paths: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for root in paths:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
        elif root.is_dir():
            for f in sorted(root.rglob("*")):
                if f.is_file() and not f.is_symlink():
                    out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def check(outcome: Outcome, *, fails: bool, names: tuple[str, ...] = ()) -> None:
    assert outcome.exception is None, outcome.output
    assert "Traceback" not in outcome.output, outcome.output
    if fails:
        assert outcome.code != 0, outcome.output
    else:
        assert outcome.code == 0, outcome.output
    for n in names:
        assert n.lower() in outcome.output.lower(), (n, outcome.output)


# ---------------------------------------------------------------------------------------------
# the image corpus


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height (the pixel data is tiny and wrong)."""
    data = _png_bytes(np.zeros((8, 8, 3), np.uint8))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def _exif_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=90)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _make(kind: str, folder: Path) -> Path:
    """Write one corpus file; returns its path."""
    rgb = _noise(48, 64)
    if kind == "empty.jpg":
        data = b""
    elif kind == "truncated.png":
        data = _png_bytes(_noise(64, 64))[:200]
    elif kind == "truncated.jpg":
        buf = io.BytesIO()
        Image.fromarray(_noise(64, 64)).save(buf, format="JPEG")
        data = buf.getvalue()[:300]
    elif kind == "text_named.jpg":
        data = b"this is not a photo\n" * 20
    elif kind == "html_named.png":
        data = b"<html><body>404 not found</body></html>"
    elif kind == "bomb.png":
        data = _bomb_png(100_000, 100_000)
    elif kind == "bomb_150mp.png":
        data = _bomb_png(15_000, 10_000)
    elif kind == "zero_width_header.png":
        data = _bomb_png(0, 10)
    elif kind == "thin_1x5000.png":
        data = _png_bytes(np.zeros((1, 5000, 3), np.uint8))
    elif kind == "tall_5000x1.png":
        data = _png_bytes(np.zeros((5000, 1, 3), np.uint8))
    elif kind == "dot_1x1.png":
        data = _png_bytes(np.zeros((1, 1, 3), np.uint8))
    elif kind == "tiny_2x2.png":
        data = _png_bytes(np.zeros((2, 2, 3), np.uint8))
    elif kind == "strip_20x900.png":
        data = _png_bytes(np.zeros((20, 900, 3), np.uint8))
    else:
        data = None
    if data is not None:
        path = folder / kind
        path.write_bytes(data)
        return path
    path = folder / kind
    if kind == "png_named.jpg":
        path.write_bytes(_png_bytes(rgb))
    elif kind == "jpeg_named.png":
        Image.fromarray(rgb).save(path, format="JPEG")
    elif kind == "grey16.png":
        Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21).save(path)
    elif kind == "cmyk.jpg":
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG")
    elif kind == "palette.png":
        Image.fromarray(rgb).convert("P").save(path)
    elif kind == "palette_transparent.png":
        im = Image.fromarray(rgb).convert("P")
        im.info["transparency"] = 0
        im.save(path, transparency=0)
    elif kind == "grey.png":
        Image.fromarray(rgb[..., 0]).save(path)
    elif kind == "grey_alpha.png":
        Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), "LA").save(path)
    elif kind == "rgba.png":
        Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA").save(path)
    elif kind == "bilevel.png":
        Image.fromarray(rgb[..., 0] > 127).save(path)
    elif kind == "float.tif":
        Image.fromarray(rgb[..., 0].astype(np.float32) / 255.0, "F").save(path)
    elif kind == "bitmap.bmp":
        Image.fromarray(rgb).save(path)
    elif kind == "lossless.webp":
        Image.fromarray(rgb).save(path, lossless=True)
    elif kind == "animated.gif":
        frames = [Image.fromarray(_noise(48, 64, s)) for s in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind.startswith("exif"):
        orientation = int(kind[4])
        path.write_bytes(_exif_jpeg(rgb, orientation))
    elif kind == "progressive.jpg":
        Image.fromarray(rgb).save(path, format="JPEG", progressive=True)
    elif kind == "big_noise.png":
        Image.fromarray(_noise(300, 400)).save(path)
    else:
        raise AssertionError(kind)
    return path


#: Files that cannot be read at all: every command refuses them with a message naming the file.
UNREADABLE = ["empty.jpg", "truncated.png", "truncated.jpg", "text_named.jpg", "html_named.png", "bomb.png",
              "bomb_150mp.png", "zero_width_header.png"]
#: Files too small or elongated for any face: a clear per-file error.
NO_ROOM = ["thin_1x5000.png", "tall_5000x1.png", "dot_1x1.png", "tiny_2x2.png", "strip_20x900.png"]
#: Readable images of every mode (noise: no face); they must be read, not crash.
READABLE = ["png_named.jpg", "jpeg_named.png", "grey16.png", "cmyk.jpg", "palette.png", "palette_transparent.png",
            "grey.png", "grey_alpha.png", "rgba.png", "bilevel.png", "float.tif", "bitmap.bmp", "lossless.webp",
            "animated.gif", "progressive.jpg", "big_noise.png"] + [f"exif{k}.jpg" for k in range(1, 9)]
ALL = UNREADABLE + NO_ROOM + READABLE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for kind in ALL:
        _make(kind, folder)
    return folder


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("noise") / "noise.png"
    Image.fromarray(_noise(64, 64, 7)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# analyze: one file at a time


@pytest.mark.parametrize("kind", UNREADABLE + NO_ROOM)
def test_analyze_refuses(kind: str, corpus: Path) -> None:
    before = tree_hash(corpus)
    out = run_cli("analyze", corpus / kind)
    check(out, fails=True, names=(kind,))
    assert tree_hash(corpus) == before


@pytest.mark.parametrize("kind", READABLE)
def test_analyze_reads(kind: str, corpus: Path) -> None:
    before = tree_hash(corpus)
    out = run_cli("analyze", corpus / kind)
    check(out, fails=False, names=(kind, "0 face(s)"))
    if kind in ("exif5.jpg", "exif6.jpg", "exif7.jpg", "exif8.jpg"):
        assert "48x64" in out.output  # stored 64x48, shown upright (rotated by the EXIF tag)
    elif kind.startswith("exif"):
        assert "64x48" in out.output
    if kind == "animated.gif":
        assert "3 frames" in out.output and "only the first" in out.output
    assert tree_hash(corpus) == before


def test_analyze_exits_nonzero_when_one_file_fails(corpus: Path, noise_png: Path) -> None:
    out = run_cli("analyze", noise_png, corpus / "thin_1x5000.png", "--json")
    check(out, fails=True, names=("thin_1x5000.png", "too small", "1 of 2"))


# ---------------------------------------------------------------------------------------------
# edit: the whole corpus as one folder batch (one model load); every file is reported on its own


@pytest.fixture(scope="module")
def edit_batch(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, Path]:
    out_dir = tmp_path_factory.mktemp("edited") / "out"
    before = tree_hash(corpus)
    outcome = run_cli("edit", corpus, "-o", out_dir, "--emotion", "happy")
    assert tree_hash(corpus) == before
    return outcome, out_dir


_FOLDER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@pytest.mark.parametrize("kind", [k for k in ALL if Path(k).suffix in _FOLDER_SUFFIXES])
def test_edit_batch_reports_each_file(kind: str, edit_batch: tuple[Outcome, Path]) -> None:
    outcome, out_dir = edit_batch
    check(outcome, fails=True)  # noise has no face: every file failed, the batch went on to the end
    lines = [line for line in outcome.output.splitlines() if line.startswith("failed") and f"{kind}:" in line]
    assert len(lines) == 1, outcome.output
    if kind in NO_ROOM:
        assert "too small or too extreme an aspect ratio" in lines[0]
    elif kind in UNREADABLE:
        assert "no face" not in lines[0]
    else:
        assert "no face found" in lines[0]
    assert not any(f.is_file() and not f.name.startswith(".") for f in out_dir.rglob("*"))  # nothing half-written


@pytest.mark.parametrize("kind", ["thin_1x5000.png", "tall_5000x1.png", "dot_1x1.png", "tiny_2x2.png"])
def test_edit_single_extreme_image(kind: str, corpus: Path, tmp_path: Path) -> None:
    out = run_cli("edit", corpus / kind, "-o", tmp_path / "out", "--emotion", "happy")
    check(out, fails=True, names=(kind, "too small or too extreme an aspect ratio"))


@pytest.mark.parametrize("kind", ["thin_1x5000.png", "dot_1x1.png", "empty.jpg", "truncated.png"])
def test_animate_bad_image(kind: str, corpus: Path, tmp_path: Path) -> None:
    out = run_cli("animate", corpus / kind, "-o", tmp_path / "a.gif", "--emotion", "happy")
    check(out, fails=True, names=(kind,))
    assert not (tmp_path / "a.gif").exists()


# ---------------------------------------------------------------------------------------------
# options: out of range, wrong type, nan/inf, refused before any model is loaded


EDIT_OPTIONS = [
    ["--emotion", "happy", "--intensity", v] for v in ("nan", "inf", "-inf", "-0.1", "1.5", "abc", "")
] + [
    ["--emotion", "ecstatic"], ["--emotion", ""], [], ["--emotion", "happy", "--au", "AU12=3"],
    ["--au", "AU12=nan"], ["--au", "AU12=inf"], ["--au", "AU12=-inf"], ["--au", "AU12=6"], ["--au", "AU12=-1"],
    ["--au", "AU99=1"], ["--au", "AU12"], ["--au", "=3"], ["--au", "AU12=three"], ["--au", "AU12+=nan"],
    ["--au", "AU12*=2"], ["--au", ""], ["--like", "missing_reference.jpg"],
    ["--emotion", "happy", "--device", "banana"], ["--emotion", "happy", "--device", "cuda:x"],
    ["--emotion", "happy", "--device", ""], ["--emotion", "happy", "--backend", "tensorrt"],
    ["--emotion", "happy", "--format", "gif"], ["--emotion", "happy", "--model", "no-such-model"],
    ["--emotion", "happy", "--faces", "banana"], ["--emotion", "happy", "--faces", "-1"],
]


@pytest.mark.parametrize("opts", EDIT_OPTIONS, ids=lambda o: " ".join(o) or "no-target")
def test_edit_bad_option(opts: list[str], noise_png: Path, tmp_path: Path) -> None:
    before = tree_hash(noise_png)
    out = run_cli("edit", noise_png, "-o", tmp_path / "out", *opts)
    check(out, fails=True)
    text = out.output.lower()
    named = [o.lstrip("-") for o in opts if o.startswith("--")] + ["target", "au", "emotion", "no face"]
    assert any(n and n in text for n in named), out.output
    assert tree_hash(noise_png) == before
    assert not any(f.is_file() for f in (tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else True


ANIMATE_OPTIONS = [["--frames", v] for v in ("0", "1", "601", "abc", "nan", "2.5")] + [
    ["--fps", v] for v in ("0", "nan", "inf", "-inf", "61", "abc")
] + [["--intensity", "nan"], ["--faces", "x"], ["--device", "banana"]]


@pytest.mark.parametrize("opts", ANIMATE_OPTIONS, ids=lambda o: " ".join(o))
def test_animate_bad_option(opts: list[str], noise_png: Path, tmp_path: Path) -> None:
    out = run_cli("animate", noise_png, "-o", tmp_path / "a.gif", "--emotion", "happy", *opts)
    check(out, fails=True)
    assert opts[0].lstrip("-") in out.output.lower() or "no face" in out.output.lower(), out.output
    assert not (tmp_path / "a.gif").exists()


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a", "a.webm"])
def test_animate_wrong_output_suffix(name: str, noise_png: Path, tmp_path: Path) -> None:
    out = run_cli("animate", noise_png, "-o", tmp_path / name, "--emotion", "happy")
    check(out, fails=True, names=(name, ".gif"))


ANALYZE_OPTIONS = [["--size", v] for v in ("0", "15", "2049", "nan", "abc")] + [
    ["--max-faces", v] for v in ("0", "101", "inf")
] + [["--fallback", "yolo"]]


@pytest.mark.parametrize("opts", ANALYZE_OPTIONS, ids=lambda o: " ".join(o))
def test_analyze_bad_option(opts: list[str], noise_png: Path) -> None:
    out = run_cli("analyze", noise_png, *opts)
    check(out, fails=True, names=(opts[0],))


@pytest.mark.parametrize("opset", ["3", "8", "21", "99", "-1", "abc", "nan"])
def test_export_onnx_bad_opset(opset: str, tmp_path: Path) -> None:
    out = run_cli("export-onnx", GAN, tmp_path / "g.onnx", "--opset", opset)
    check(out, fails=True, names=("--opset",))
    assert "graph(" not in out.output and "%" not in out.output  # no torch IR dump
    assert not (tmp_path / "g.onnx").exists()


def test_export_onnx_geometry_and_existing(tmp_path: Path) -> None:
    check(run_cli("export-onnx", "geometry-v1", tmp_path / "g.onnx"), fails=True, names=("geometry",))
    existing = tmp_path / "e.onnx"
    existing.write_bytes(b"mine")
    check(run_cli("export-onnx", GAN, existing), fails=True, names=("e.onnx", "--force"))
    assert existing.read_bytes() == b"mine"


PREPARE_OPTIONS = [["--size", v] for v in ("0", "8", "100000", "nan", "abc")] + [
    ["--workers", v] for v in ("0", "-2", "abc")
] + [["--limit", v] for v in ("0", "-1", "x")] + [["--min-face", v] for v in ("nan", "inf", "-1", "1", "x")]


@pytest.mark.parametrize("opts", PREPARE_OPTIONS, ids=lambda o: " ".join(o))
def test_prepare_bad_option(opts: list[str], corpus: Path, tmp_path: Path) -> None:
    before = tree_hash(corpus)
    out = run_cli("prepare", corpus, tmp_path / "prep", *opts)
    check(out, fails=True, names=(opts[0],))
    assert tree_hash(corpus) == before


EVALUATE_OPTIONS = [["--intensity", v] for v in ("nan", "inf", "2", "-1")] + [
    ["--val-fraction", v] for v in ("0", "1", "nan", "inf")
] + [["--per-face", "0"], ["--limit", "0"], ["--samples", "65"], ["--seed", "x"], ["--skip", "everything"],
     ["--device", "banana"], ["--device", "gpu"]]


@pytest.mark.parametrize("opts", EVALUATE_OPTIONS, ids=lambda o: " ".join(o))
def test_evaluate_bad_option(opts: list[str], tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    out = run_cli("evaluate", "--data", tmp_path / "data", "--out", tmp_path / "eval", *opts)
    check(out, fails=True, names=(opts[0],))


TRAIN_OPTIONS = [["--epochs", v] for v in ("nan", "inf")] + [["--device", "banana"], ["--steps", "abc"],
                                                              ["--steps", "nan"]]


@pytest.mark.parametrize("opts", TRAIN_OPTIONS, ids=lambda o: " ".join(o))
def test_train_bad_option(opts: list[str], tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    out = run_cli("train", "--model", "ganimation", "--data", tmp_path / "data", "--out", tmp_path / "run", *opts)
    check(out, fails=True, names=(opts[0],))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# paths


def test_edit_paths(noise_png: Path, corpus: Path, tmp_path: Path) -> None:
    # missing input
    check(run_cli("edit", tmp_path / "nope.jpg", "-o", tmp_path / "o", "--emotion", "happy"),
          fails=True, names=("nope.jpg",))
    # output inside the input folder
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(noise_png, src / "a.png")
    check(run_cli("edit", src, "-o", src / "edited", "--emotion", "happy"), fails=True, names=("inside",))
    check(run_cli("edit", src, "-o", src, "--emotion", "happy"), fails=True, names=("input folder",))
    # output is the input file
    check(run_cli("edit", src / "a.png", "-o", src / "a.png", "--emotion", "happy"), fails=True,
          names=("a.png",))
    # a file where the output folder is expected
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"keep me")
    check(run_cli("edit", src, "-o", blocker, "--emotion", "happy"), fails=True, names=("blocker",))
    assert blocker.read_bytes() == b"keep me"
    # -o with an image suffix that is not a writable photo format: no folder called out.gif
    for name in ("out.gif", "out.tiff", "out.mp4", "out.heic"):
        check(run_cli("edit", src / "a.png", "-o", tmp_path / name, "--emotion", "happy"), fails=True,
              names=(name,))
        assert not (tmp_path / name).exists()
    # -o names one file but a folder is given
    check(run_cli("edit", src, "-o", tmp_path / "one.png", "--emotion", "happy"), fails=True, names=("one.png",))
    assert not (tmp_path / "one.png").exists()


def test_edit_symlinks_and_hardlinks(noise_png: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "dangling.png").symlink_to(tmp_path / "missing.png")
    (src / "link.png").symlink_to(noise_png)
    os.link(noise_png, src / "hard.png")
    before = tree_hash(noise_png)
    out = run_cli("edit", src, "-o", tmp_path / "out", "--emotion", "happy")
    check(out, fails=True, names=("dangling.png", "link.png", "hard.png"))
    assert tree_hash(noise_png) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_edit_unwritable_output(noise_png: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = run_cli("edit", noise_png, "-o", locked / "sub", "--emotion", "happy")
        check(out, fails=True, names=("locked",))
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("cmd", [
    ["reenact", "{missing}", "--driving", "{video}", "-o", "{out}/r.mp4"],
    ["reenact", "{photo}", "--driving", "{missing_video}", "-o", "{out}/r.mp4"],
    ["reenact", "{photo}", "--driving", "{broken_video}", "-o", "{out}/r.mp4"],
    ["reenact", "{photo}", "--driving", "{photo}", "-o", "{out}/r.mp4"],
    ["reenact", "{photo}", "--driving", "{broken_video}", "-o", "{out}/r.gif"],
    ["reenact", "{photo}", "--driving", "{broken_video}", "-o", "{existing}"],
    ["edit", "{broken_video}", "-o", "{out}/e.mp4", "--emotion", "happy"],
    ["edit", "{broken_video}", "-o", "{out}/e.gif", "--emotion", "happy"],
    ["edit", "{broken_video}", "{photo}", "-o", "{out}/e.mp4", "--emotion", "happy"],
    ["edit", "{missing_video}", "-o", "{out}/e.mp4", "--emotion", "happy"],
])
def test_video_refusals(cmd: list[str], noise_png: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"mine")
    (tmp_path / "out").mkdir()
    values = {"missing": tmp_path / "no.jpg", "video": broken, "missing_video": tmp_path / "no.mp4",
              "broken_video": broken, "photo": noise_png, "out": tmp_path / "out", "existing": existing}
    args = [a.format(**values) for a in cmd]
    before = tree_hash(noise_png, broken, existing)
    out = run_cli(*args)
    check(out, fails=True)
    assert any(Path(a).name in out.output for a in args if "/" in a), out.output
    assert tree_hash(noise_png, broken, existing) == before
    assert not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# models


def _model_copy(tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / f"model_{damage}"
    shutil.copytree(SHIPPED / GAN, folder)
    (folder / "generator.onnx").unlink()
    weights, config = folder / "generator.safetensors", folder / "config.json"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "empty-weights":
        weights.write_bytes(b"")
    elif damage == "pickle":
        import pickle

        weights.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif damage == "garbage-config":
        config.write_text("{not json", encoding="utf-8")
    elif damage == "config-list":
        config.write_text("[1, 2]", encoding="utf-8")
    elif damage == "wrong-family":
        doc = json.loads(config.read_text(encoding="utf-8"))
        doc["family"] = "stylegan9"
        config.write_text(json.dumps(doc), encoding="utf-8")
    elif damage == "other-family":
        doc = json.loads(config.read_text(encoding="utf-8"))
        doc["family"] = "dftnet"
        config.write_text(json.dumps(doc), encoding="utf-8")
    elif damage == "bad-config-value":
        doc = json.loads(config.read_text(encoding="utf-8"))
        doc["config"]["image_size"] = "big"
        config.write_text(json.dumps(doc), encoding="utf-8")
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "no-config":
        config.unlink()
    return folder


MODEL_DAMAGE = ["truncated", "empty-weights", "pickle", "garbage-config", "config-list", "wrong-family",
                "other-family", "bad-config-value", "no-weights", "no-config"]


@pytest.mark.parametrize("damage", MODEL_DAMAGE)
def test_damaged_model_edit(damage: str, noise_png: Path, tmp_path: Path) -> None:
    model = _model_copy(tmp_path, damage)
    before = tree_hash(model)
    out = run_cli("edit", noise_png, "-o", tmp_path / "out", "--emotion", "happy", "--model", model)
    check(out, fails=True, names=(model.name,))
    assert tree_hash(model) == before


@pytest.mark.parametrize("damage", ["truncated", "pickle", "garbage-config", "wrong-family"])
def test_damaged_model_export_onnx(damage: str, tmp_path: Path) -> None:
    model = _model_copy(tmp_path, damage)
    out = run_cli("export-onnx", model, tmp_path / "g.onnx")
    check(out, fails=True, names=(model.name,))
    assert not (tmp_path / "g.onnx").exists()


# ---------------------------------------------------------------------------------------------
# runs and export: --overwrite never removes a run, an input or anything not a model folder


def _fake_run(folder: Path) -> Path:
    (folder / "checkpoints" / "step-00000010").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000010" / "state.json").write_text('{"step": 10}', encoding="utf-8")
    (folder / "checkpoints" / "latest.json").write_text('{"name": "step-00000010"}', encoding="utf-8")
    (folder / "config.json").write_text('{"family": "ganimation"}', encoding="utf-8")
    (folder / "metrics.jsonl").write_text('{"step": 10}\n', encoding="utf-8")
    return folder


@pytest.mark.parametrize("where", ["run", "parent", "inside"])
def test_export_never_removes_the_run(where: str, tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "runs" / "a1")
    out_dir = {"run": run, "parent": run.parent, "inside": run / "model"}[where]
    before = tree_hash(tmp_path)
    out = run_cli("export", run, out_dir, "--overwrite")
    check(out, fails=True, names=(str(run), "nothing was removed"))
    assert tree_hash(tmp_path) == before


@pytest.mark.parametrize("content", ["run", "photos", "file", "foreign-config"])
def test_save_pretrained_overwrite_refuses_non_model_folders(content: str, tmp_path: Path) -> None:
    from facexpr.models import get_family, save_pretrained

    family = get_family("ganimation")
    generator = family.build_generator(family.make_config("tiny"))
    target = tmp_path / "target"
    if content == "run":
        _fake_run(target)
    elif content == "photos":
        target.mkdir()
        (target / "holiday.jpg").write_bytes(b"precious")
    elif content == "file":
        target.write_bytes(b"precious")
    else:
        target.mkdir()
        (target / "config.json").write_text('{"format": "something-else"}', encoding="utf-8")
    before = tree_hash(target)
    with pytest.raises(FacexprError, match="target"):
        save_pretrained(generator, target, overwrite=True)
    assert tree_hash(target) == before


def test_save_pretrained_overwrite_replaces_a_model_folder(tmp_path: Path) -> None:
    from facexpr.models import get_family, save_pretrained

    family = get_family("ganimation")
    generator = family.build_generator(family.make_config("tiny"))
    save_pretrained(generator, tmp_path / "m")
    save_pretrained(generator, tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["MODEL_CARD.md", "config.json", "generator.safetensors"]


def test_export_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "notrun").mkdir()
    check(run_cli("export", tmp_path / "notrun", tmp_path / "m"), fails=True, names=("notrun",))
    run = _fake_run(tmp_path / "run")
    (run / "checkpoints" / "latest.json").write_text("garbage", encoding="utf-8")
    shutil.rmtree(run / "checkpoints" / "step-00000010")
    check(run_cli("export", run, tmp_path / "m"), fails=True, names=("checkpoint",))


# ---------------------------------------------------------------------------------------------
# datasets


@pytest.mark.parametrize("damage", ["missing", "empty-folder", "garbage-labels", "garbage-meta", "a-file"])
def test_evaluate_bad_dataset(damage: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    if damage != "missing" and damage != "a-file":
        data.mkdir()
    if damage == "garbage-labels":
        (data / "labels.csv").write_bytes(b"\xff\xfe\x00garbage,,,\n1,2\n")
    elif damage == "garbage-meta":
        (data / "labels.csv").write_text("file,source\n", encoding="utf-8")
        (data / "dataset.json").write_text("{", encoding="utf-8")
    elif damage == "a-file":
        data.write_bytes(b"x")
    before = tree_hash(data)
    out = run_cli("evaluate", "--data", data, "--out", tmp_path / "eval", "--device", "cpu")
    check(out, fails=True, names=("data",))
    assert tree_hash(data) == before


@pytest.mark.parametrize("src", ["missing", "empty-folder", "a-file"])
def test_prepare_bad_source(src: str, tmp_path: Path) -> None:
    path = tmp_path / "src"
    if src == "empty-folder":
        path.mkdir()
    elif src == "a-file":
        path.write_bytes(b"x")
    out = run_cli("prepare", path, tmp_path / "prep", "--workers", "1", "--quiet")
    check(out, fails=True, names=("src",))


def test_prepare_output_inside_input(corpus: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(corpus, src)
    before = tree_hash(src)
    out = run_cli("prepare", src, src / "prep", "--workers", "1", "--quiet")
    check(out, fails=True, names=("prep",))
    assert tree_hash(src) == before


# ---------------------------------------------------------------------------------------------
# concurrency and existing outputs


def test_second_writer_into_a_folder_is_refused(noise_png: Path, tmp_path: Path) -> None:
    from facexpr.pipeline.batch import output_lock

    out_dir = tmp_path / "out"
    with output_lock(out_dir):  # another `facexpr edit` is writing there
        out = run_cli("edit", noise_png, "-o", out_dir, "--emotion", "happy")
    check(out, fails=True, names=("another `facexpr edit`", str(out_dir)))
    # the lock is released (and its file removed) when the holder ends
    assert not any(out_dir.iterdir())
    with output_lock(out_dir):
        pass


def test_exclusive_publish_never_replaces(tmp_path: Path) -> None:
    from facexpr.errors import OutputExistsError
    from facexpr.imageio import save_image

    target = tmp_path / "a.png"
    target.write_bytes(b"written by the other run")
    with pytest.raises(OutputExistsError, match="a.png"):
        save_image(target, _noise(8, 8), replace=False)
    assert target.read_bytes() == b"written by the other run"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left


def test_two_processes_race_for_one_output(tmp_path: Path) -> None:
    """Two processes publish the same file name exclusively at once: exactly one wins."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    target = tmp_path / "race.png"
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_writer, args=(str(target), seed, barrier, results)) for seed in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes[0] == "exists" and outcomes[1].startswith("wrote"), outcomes
    winner = int(outcomes[1].split()[1])
    assert np.array_equal(np.asarray(Image.open(target)), _noise(8, 8, winner))


def _race_writer(path: str, seed: int, barrier, results) -> None:  # type: ignore[no-untyped-def]
    from facexpr.errors import OutputExistsError
    from facexpr.imageio import save_image

    barrier.wait()
    try:
        save_image(path, _noise(8, 8, seed), replace=False)
        results.put(f"wrote {seed}")
    except OutputExistsError:
        results.put("exists")


def test_compare_file_is_not_replaced(noise_png: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    existing = out_dir / "noise_compare.png"
    existing.write_bytes(b"an earlier comparison")
    out = run_cli("edit", noise_png, "-o", out_dir, "--emotion", "happy", "--compare")
    check(out, fails=False, names=("noise_compare.png", "--force", "1 skipped"))
    assert existing.read_bytes() == b"an earlier comparison"
    assert not (out_dir / "noise.png").exists()


# ---------------------------------------------------------------------------------------------
# real photos (shared data, read only)


@pytest.mark.parametrize("model", ["default", GAN])
def test_greyscale_photo_stays_grey(model: str, misc: Path, tmp_path: Path) -> None:
    small = tmp_path / "grey.png"
    with Image.open(misc / "single_face.jpg") as im:
        grey = im.convert("L")
        grey.thumbnail((512, 512))
        grey.save(small)
    out = run_cli("edit", small, "-o", tmp_path / "out.png", "--emotion", "happy", "--model", model)
    check(out, fails=False, names=("1 edited",))
    rgb = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(int)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    before = np.asarray(Image.open(small).convert("RGB")).astype(int)
    assert np.abs(rgb - before).max() > 0  # the face was edited


def test_animated_gif_edit_says_only_first_frame(misc: Path, tmp_path: Path) -> None:
    with Image.open(misc / "single_face.jpg") as im:
        im = im.convert("RGB")
        im.thumbnail((256, 256))
        im.save(tmp_path / "anim.gif", save_all=True, append_images=[im.rotate(3), im.rotate(-3)], duration=100)
    out = run_cli("edit", tmp_path / "anim.gif", "-o", tmp_path / "out", "--emotion", "happy")
    check(out, fails=False, names=("anim.gif", "3 frames", "only the first frame"))


# ---------------------------------------------------------------------------------------------
# faces people actually photograph: small in a big photo, crowds, the border, profiles, tiny, 100 MP
#
# Real CelebA-HQ portraits (../shared/data, never copied here) pasted into generated canvases:
# the tests know where every face is, so they can check that each one was edited and that nothing
# outside the faces changed. The background is smooth colour noise (texture for the detector to
# be fooled by, unlike a flat fill).

#: Face size (landmark box, px) of a CelebA-HQ 1024 px portrait's face over the portrait's side.
PORTRAIT_FACE = 0.6


def _canvas(h: int, w: int, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (max(h // 64, 2), max(w // 64, 2), 3), dtype=np.uint8)
    bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return np.clip(bg + rng.normal(0, 6, (h, w, 1)), 0, 255).astype(np.uint8)


def _paste(canvas: np.ndarray, portrait: Path, face_px: float, cx: int, cy: int) -> tuple[int, int, int, int]:
    """Paste a portrait so its face is about ``face_px`` px, centred at (cx, cy); its square."""
    import cv2

    from facexpr.imageio import load_image

    side = int(round(face_px / PORTRAIT_FACE))
    small = cv2.resize(load_image(portrait).rgb, (side, side), interpolation=cv2.INTER_AREA)
    x0, y0 = cx - side // 2, cy - side // 2
    canvas[y0:y0 + side, x0:x0 + side] = small
    return x0, y0, x0 + side, y0 + side


def _changed(a: Path | np.ndarray, b: Path) -> np.ndarray:
    """HxW bool: pixels of PNG ``b`` that differ from ``a``."""
    before = np.asarray(Image.open(a).convert("RGB")) if isinstance(a, Path) else a
    return np.any(before != np.asarray(Image.open(b).convert("RGB")), axis=2)


def _inside(shape: tuple[int, ...], squares: list[tuple[int, int, int, int]], grow: int = 0) -> np.ndarray:
    m = np.zeros(shape[:2], bool)
    for x0, y0, x1, y1 in squares:
        m[max(y0 - grow, 0):y1 + grow, max(x0 - grow, 0):x1 + grow] = True
    return m


@pytest.fixture
def face_portraits(shared_data: Path) -> list[Path]:
    found = sorted((shared_data / "inputs" / "portraits_1024").glob("*.jpg"))
    if len(found) < 12:
        pytest.skip(f"the CelebA-HQ portraits are not at {shared_data}/inputs/portraits_1024 (set FACEXPR_SHARED_DATA)")
    return found


@pytest.mark.parametrize("face_px", [120, 60, 44])
def test_small_face_in_a_large_photo_is_edited(face_px: int, face_portraits: list[Path], tmp_path: Path) -> None:
    """A 44-120 px face in a 3000 px photo: found (it used to be "no face found"), edited, and no
    pixel outside its portrait changes."""
    canvas = _canvas(3000, 3000, face_px)
    square = _paste(canvas, face_portraits[face_px % 12], face_px, 1900, 1300)
    src = tmp_path / "big.png"
    Image.fromarray(canvas).save(src)
    out = tmp_path / "out.png"
    r = run_cli("edit", src, "-o", out, "--emotion", "happy")
    check(r, fails=False, names=("1 edited",))
    changed = _changed(canvas, out)
    assert changed[_inside(changed.shape, [square])].sum() > face_px ** 2 // 40, "the face was not edited"
    assert not changed[~_inside(changed.shape, [square])].any(), "pixels outside the face changed"


def test_group_photo_every_face_found_and_edited(face_portraits: list[Path], tmp_path: Path) -> None:
    """12 people of 70-220 px: analyze finds all 12 (editable, in the same order twice), edit changes
    every one of them with its own target and nothing between them; --faces 0,2 edits only 0 and 2."""
    canvas = _canvas(1800, 2800, 3)
    sizes = [120, 160, 220, 90, 70, 140]
    squares = [_paste(canvas, face_portraits[k], sizes[k % 6], 380 + (k % 4) * 680, 330 + (k // 4) * 570)
               for k in range(12)]
    src = tmp_path / "group.png"
    Image.fromarray(canvas).save(src)

    reports = []
    for _ in range(2):
        r = run_cli("analyze", src, "--json")
        check(r, fails=False)
        reports.append(json.loads(r.output[r.output.index("{"):]))
    faces = reports[0]["faces"]
    assert len(faces) == 12 and all(f["editable"] for f in faces), faces
    assert [f["box"] for f in faces] == [f["box"] for f in reports[1]["faces"]], "face order is not stable"
    sizes_found = [f["size"] for f in faces]
    assert sizes_found == sorted(sizes_found, reverse=True), "faces are not largest first"
    for sq in squares:  # every pasted face is one of them
        assert any(sq[0] <= (f["box"][0] + f["box"][2]) / 2 <= sq[2] and sq[1] <= (f["box"][1] + f["box"][3]) / 2 <= sq[3]
                   for f in faces), sq

    out = tmp_path / "out.png"
    check(run_cli("edit", src, "-o", out, "--emotion", "happy"), fails=False, names=("1 edited",))
    changed = _changed(canvas, out)
    for sq in squares:
        x0, y0, x1, y1 = sq
        assert changed[y0:y1, x0:x1].sum() > (x1 - x0) ** 2 // 200, f"face at {sq} was not edited"
    # Each face's own region: its landmark box and the warp's rings around it (a smile moves the
    # cheeks and the jaw line, which can reach just past the pasted portrait's bottom edge).
    own = _face_regions(changed.shape, faces)
    assert not changed[~own].any(), "pixels between the faces changed"

    out2 = tmp_path / "two.png"
    check(run_cli("edit", src, "-o", out2, "--emotion", "happy", "--faces", "0,2"), fails=False)
    changed = _changed(canvas, out2)
    picked = _face_regions(changed.shape, [faces[0], faces[2]])
    assert changed[picked].any() and not changed[~picked].any(), "--faces 0,2 changed other faces"


def _face_regions(shape: tuple[int, ...], faces: list[dict]) -> np.ndarray:
    """HxW bool: each analysed face's landmark box grown by a third of its size on every side."""
    m = np.zeros(shape[:2], bool)
    for f in faces:
        x0, y0, x1, y1 = f["box"]
        g = f["size"] / 3
        m[max(int(y0 - g), 0):int(y1 + g) + 1, max(int(x0 - g), 0):int(x1 + g) + 1] = True
    return m


def test_each_face_of_a_group_gets_its_own_target(face_portraits: list[Path]) -> None:
    """An emotion is relative to each face's own expression: each face's target is computed from
    its own AUs (12 different sources, 12 different targets), not copied from face 0."""
    from facexpr.face.aus import aus_from_blendshapes
    from facexpr.pipeline.editor import Editor
    from facexpr.pipeline.targets import EmotionTarget

    canvas = _canvas(1400, 2400, 5)
    for k in range(12):
        _paste(canvas, face_portraits[k], 110, 250 + (k % 6) * 380, 350 + (k // 6) * 650)
    target = EmotionTarget("happy", 0.6)
    with Editor.from_pretrained("default") as editor:
        result = editor.edit_array(canvas, target)
        found = editor.faces(canvas)
    assert len(result.faces) == 12 and not result.refused
    assert sorted(e.index for e in result.faces) == list(range(12))
    for e in result.faces:
        own = aus_from_blendshapes(found[e.index].blendshapes, found[e.index].landmarks)
        np.testing.assert_allclose(e.source_aus, own, atol=1e-6)
        np.testing.assert_allclose(e.target_aus, target.aus_for(own), atol=1e-6)
    assert len({tuple(np.round(e.target_aus, 3)) for e in result.faces}) == 12


@pytest.mark.parametrize("edge", ["top", "left"])
def test_face_cut_by_the_border_is_reported_and_the_other_edited(edge: str, face_portraits: list[Path],
                                                                 tmp_path: Path) -> None:
    """A portrait shifted out of the photo: that face is named as cut by the edge and left
    untouched; the whole face beside it is edited; analyze says the same."""
    import cv2

    from facexpr.imageio import load_image

    canvas = _canvas(1000, 1600, 1)
    centre = _paste(canvas, face_portraits[3], 300, 1000, 600 if edge == "top" else 500)
    side = int(300 / PORTRAIT_FACE)
    cut_face = cv2.resize(load_image(face_portraits[0]).rgb, (side, side), interpolation=cv2.INTER_AREA)
    cut = int(side * (0.5 if edge == "top" else 0.35))
    if edge == "top":
        canvas[0:side - cut, 200:200 + side] = cut_face[cut:]
        region = (200, 0, 200 + side, side - cut)
    else:
        canvas[250:250 + side, 0:side - cut] = cut_face[:, cut:]
        region = (0, 250, side - cut, 250 + side)
    src = tmp_path / "border.png"
    Image.fromarray(canvas).save(src)
    out = tmp_path / "out.png"
    r = run_cli("edit", src, "-o", out, "--emotion", "happy")
    check(r, fails=False, names=("is cut by the photo's edge", "the other faces were edited", "1 edited"))
    changed = _changed(canvas, out)
    x0, y0, x1, y1 = region
    assert not changed[y0:y1, x0:x1].any(), "the cut face was edited"
    x0, y0, x1, y1 = centre
    assert changed[y0:y1, x0:x1].any(), "the whole face was not edited"
    a = run_cli("analyze", src)
    check(a, fails=False, names=("1 would not be edited", "not editable: face", "cut by the photo's edge"))


@pytest.mark.parametrize("edge,face_px", [("left", 300), ("right", 300), ("right", 90)])
def test_face_cut_in_half_by_the_left_or_right_edge_is_found_and_refused(
        edge: str, face_px: int, face_portraits: list[Path], tmp_path: Path) -> None:
    """A real portrait whose face is cut in half by the left or the right edge (BlazeFace does not
    see half a face against a hard edge): analyze finds it and names it as cut by the photo's edge,
    edit says so and leaves it as it is while the whole face beside it is edited."""
    import cv2

    from facexpr.imageio import load_image

    canvas = _canvas(1000, 1600, 2)
    whole = _paste(canvas, face_portraits[3], 300, 800, 500)
    side = int(face_px / PORTRAIT_FACE)
    portrait = cv2.resize(load_image(face_portraits[7]).rgb, (side, side), interpolation=cv2.INTER_AREA)
    y0 = 500 - side // 2
    if edge == "left":  # the portrait's face is centred in it: its centre column lands on the edge
        canvas[y0:y0 + side, 0:side - side // 2] = portrait[:, side // 2:]
        region = (0, y0, side - side // 2, y0 + side)
    else:
        canvas[y0:y0 + side, 1600 - side // 2:] = portrait[:, :side // 2]
        region = (1600 - side // 2, y0, 1600, y0 + side)
    src = tmp_path / f"half-{edge}.png"
    Image.fromarray(canvas).save(src)

    r = run_cli("analyze", src, "--json")
    check(r, fails=False)
    faces = json.loads(r.output[r.output.index("{"):])["faces"]
    x0, y0_, x1, y1 = region
    cut = [f for f in faces if x0 - face_px / 2 <= (f["box"][0] + f["box"][2]) / 2 <= x1 + face_px / 2
           and y0_ <= (f["box"][1] + f["box"][3]) / 2 <= y1]
    assert len(cut) == 1, faces
    assert not cut[0]["editable"] and "cut by the photo's edge" in cut[0]["refused"], cut[0]

    out = tmp_path / "out.png"
    r = run_cli("edit", src, "-o", out, "--emotion", "happy")
    check(r, fails=False, names=("is cut by the photo's edge", "the other faces were edited", "1 edited"))
    changed = _changed(canvas, out)
    assert not changed[y0_:y1, x0:x1].any(), "the cut face was edited"
    x0, y0_, x1, y1 = whole
    assert changed[y0_:y1, x0:x1].any(), "the whole face was not edited"


def _profile(shared: Path) -> np.ndarray:
    path = shared / "lfw" / "images" / "Colin_Powell_0071.jpg"
    if not path.is_file():
        pytest.skip(f"the LFW profile photo {path} is not there (set FACEXPR_SHARED_DATA)")
    from facexpr.imageio import load_image

    return load_image(path).rgb


def test_profile_is_reported_and_the_frontal_face_edited(face_portraits: list[Path], shared_data: Path,
                                                        tmp_path: Path) -> None:
    """A real LFW face turned ~55 degrees beside a frontal one: the profile is named as turned too far
    and left as it is (no fold), the frontal face is edited."""
    canvas = _canvas(300, 500, 2)
    frontal = _paste(canvas, face_portraits[5], 120, 120, 150)
    canvas[75:225, 295:445] = _profile(shared_data)
    src = tmp_path / "pair.png"
    Image.fromarray(canvas).save(src)
    out = tmp_path / "out.png"
    r = run_cli("edit", src, "-o", out, "--emotion", "surprised")
    check(r, fails=False, names=("is turned too far to edit (yaw", "1 edited"))
    changed = _changed(canvas, out)
    assert not changed[75:225, 295:445].any(), "the profile was edited"
    x0, y0, x1, y1 = frontal
    assert changed[y0:y1, x0:x1].any(), "the frontal face was not edited"


def test_only_a_profile_picked_fails_with_its_reason(face_portraits: list[Path], shared_data: Path,
                                                     tmp_path: Path) -> None:
    """--faces naming only the profile: nothing can be edited, the photo fails with the reason and
    no output is written."""
    canvas = _canvas(300, 500, 2)
    _paste(canvas, face_portraits[5], 120, 120, 150)
    canvas[75:225, 295:445] = _profile(shared_data)
    src = tmp_path / "profile.png"
    Image.fromarray(canvas).save(src)
    out = tmp_path / "out.png"
    r = run_cli("edit", src, "-o", out, "--emotion", "happy", "--faces", "1")
    check(r, fails=True, names=("profile.png", "no face in the photo can be edited", "face 1 is turned too far"))
    assert not out.exists()


@pytest.mark.parametrize("layout", ["beside-a-big-face", "alone"])
def test_tiny_face_is_reported(layout: str, face_portraits: list[Path], tmp_path: Path) -> None:
    """A ~34 px face is found but not edited (too few pixels to move), with its size in the message."""
    if layout == "alone":
        canvas = _canvas(240, 240, 3)
        _paste(canvas, face_portraits[4], 36, 120, 120)
    else:
        canvas = _canvas(600, 900, 3)
        big = _paste(canvas, face_portraits[4], 250, 300, 300)
        _paste(canvas, face_portraits[5], 34, 750, 300)
    src = tmp_path / "tiny.png"
    Image.fromarray(canvas).save(src)
    out = tmp_path / "out.png"
    r = run_cli("edit", src, "-o", out, "--emotion", "happy")
    if layout == "alone":
        check(r, fails=True, names=("tiny.png", "face 0 is too small to edit", "at least 40 px"))
        assert not out.exists()
    else:
        check(r, fails=False, names=("face 1 is too small to edit", "1 edited"))
        changed = _changed(canvas, out)
        assert not changed[:, 650:].any(), "the tiny face was edited"
        x0, y0, x1, y1 = big
        assert changed[y0:y1, x0:x1].any()


def test_face_in_a_100_megapixel_photo_at_the_limit(face_portraits: list[Path], tmp_path: Path) -> None:
    """10000 x 10000 px, exactly the 100 MP limit, one 300 px face: found, edited, written whole."""
    canvas = np.full((10_000, 10_000, 3), 150, np.uint8)
    canvas[::7] = 140  # some structure, cheap to build
    square = _paste(canvas, face_portraits[6], 300, 6000, 4000)
    src = tmp_path / "huge.jpg"
    Image.fromarray(canvas).save(src, quality=85)
    del canvas
    out = tmp_path / "out.jpg"
    r = run_cli("edit", src, "-o", out, "--emotion", "happy")
    check(r, fails=False, names=("1 edited",))
    with Image.open(out) as im:
        assert im.size == (10_000, 10_000)
        x0, y0, x1, y1 = square
        after = np.asarray(im.crop((x0, y0, x1, y1)).convert("RGB"))
    with Image.open(src) as im:
        before = np.asarray(im.crop((x0, y0, x1, y1)).convert("RGB"))
    assert np.abs(after.astype(int) - before.astype(int)).max() > 20, "the face was not edited"


# ---------------------------------------------------------------------------------------------
# damaged training checkpoints: `export` and `train --resume` refuse them by name, change nothing


@pytest.fixture(scope="module")
def tiny_run(taiwanese_6x7: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real two-step GANimation run (tiny preset, 64 px) with one checkpoint."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    out = run_cli("train", "--model", "ganimation", "--preset", "tiny", "--data", taiwanese_6x7, "--size", "64",
                  "--batch", "4", "--steps", "2", "--workers", "0", "--out", run, "--no-progress")
    check(out, fails=False)
    return run


def _latest(run: Path) -> Path:
    from facexpr.training.checkpoint import latest_checkpoint

    found = latest_checkpoint(run)
    assert found is not None
    return found


CHECKPOINT_DAMAGE = ["weights-truncated", "optimizers-truncated", "rng-truncated", "weights-pickle",
                     "weights-empty", "state-garbage", "state-list"]


def _damage_checkpoint(run: Path, damage: str) -> str:
    """Damage the run's newest checkpoint in place; returns the file name a message should give."""
    ckpt = _latest(run)
    name = damage.split("-")[0]
    target = ckpt / (f"{name}.safetensors" if name != "state" else "state.json")
    if damage.endswith("truncated"):
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif damage == "weights-pickle":
        import pickle

        target.write_bytes(pickle.dumps({"G": [1, 2, 3]}))
    elif damage == "weights-empty":
        target.write_bytes(b"")
    elif damage == "state-garbage":
        target.write_text("{not json", encoding="utf-8")
    elif damage == "state-list":
        target.write_text("[1, 2, 3]\n", encoding="utf-8")
    return ckpt.name


@pytest.mark.parametrize("command", ["export", "resume"])
@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_damaged_checkpoint(damage: str, command: str, tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    named = _damage_checkpoint(run, damage)
    before = tree_hash(run)
    if command == "export" and damage.startswith(("optimizers", "rng")):
        # an export reads only the weights: a damaged optimiser or RNG state does not matter to it
        check(run_cli("export", run, tmp_path / "model"), fails=False)
        assert (tmp_path / "model" / "config.json").is_file()
    elif command == "export":
        out = run_cli("export", run, tmp_path / "model")
        check(out, fails=True, names=(named,))
        assert not (tmp_path / "model").exists()
    else:
        out = run_cli("train", "--resume", run, "--steps", "3", "--workers", "0", "--no-progress")
        check(out, fails=True, names=(named,))
    assert tree_hash(run) == before  # the run is left exactly as it was


def test_unreadable_latest_pointer_falls_back_to_the_newest_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    """latest.json is only a pointer: garbage there costs nothing, the newest complete checkpoint is used."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "checkpoints" / "latest.json").write_text("\x00garbage", encoding="utf-8")
    check(run_cli("export", run, tmp_path / "model"), fails=False)
    assert (tmp_path / "model" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------
# manifests: every malformed CSV is refused by name, or its rows are rejected one by one


MANIFEST_FAILS = {
    "empty": (b"", "file' column"),
    "header-only": (b"file,identity\n", "lists no photos"),
    "no-file-column": (b"path,identity\na.png,x\n", "path, identity"),
    "semicolons": (b"file;identity\na.png;x\n", "comma-separated"),
    "tabs": (b"file\tidentity\na.png\tx\n", "comma-separated"),
    "only-blank-paths": (b"file,identity\n\n  ,x\n,y\n", "lists no photos"),
    "latin-1": ("file,identity\nr\xe9sum\xe9.png,x\n".encode("latin-1"), "cannot read"),
    "huge-field": (b"file\n" + b"a" * 200_000 + b".png\n", "field limit"),
    "missing-photos": (b"file\nnope1.png\n/nowhere/nope2.jpg\n", "rejects.csv"),
    "outside-the-source": (b"file\n../../../../etc/hostname\n", "rejects.csv"),
    "nul-byte-in-a-name": (b"file,identity\na.png\x00,x\n", "rejects.csv"),
    "quoted-newline-in-a-name": (b'file,identity\n"a\n.png",x\n', "rejects.csv"),
    "text-file-as-photo": (b"file\nnotes.txt\n", "rejects.csv"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_FAILS))
def test_prepare_bad_manifest(case: str, noise_png: Path, tmp_path: Path) -> None:
    data, wording = MANIFEST_FAILS[case]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(noise_png, src / "a.png")
    (src / "notes.txt").write_text("not a photo\n", encoding="utf-8")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(data)
    before = tree_hash(src, manifest)
    out = run_cli("prepare", src, tmp_path / "prep", "--manifest", manifest, "--size", "64", "--workers", "1",
                  "--quiet")
    check(out, fails=True, names=(wording,))
    assert tree_hash(src, manifest) == before


@pytest.mark.parametrize("case", ["duplicates-and-ragged-rows", "bom-and-unicode"])
def test_prepare_odd_but_valid_manifest(case: str, misc: Path, tmp_path: Path) -> None:
    """A UTF-8 BOM, non-ASCII names, a row listed twice, short rows and blank paths are all fine."""
    src = tmp_path / "src"
    src.mkdir()
    name = "foto-\u00fc.jpg" if case == "bom-and-unicode" else "a.jpg"
    shutil.copy(misc / "single_face.jpg", src / name)
    if case == "bom-and-unicode":
        text = f"\ufefffile,identity\n{name},\u4eba\n"
    else:
        text = f"file,identity,expression\n{name}\n{name},p1\n,p2,happy\n"
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(text.encode("utf-8"))
    out = run_cli("prepare", src, tmp_path / "prep", "--manifest", manifest, "--size", "64", "--workers", "1",
                  "--quiet")
    check(out, fails=False, names=("1 kept of 1",))
    labels = (tmp_path / "prep" / "labels.csv").read_text(encoding="utf-8").splitlines()
    assert len(labels) == 2  # the header and one photo, listed once
    if case == "bom-and-unicode":
        assert "\u4eba" in labels[1]
