"""load_image / save_image: every mode becomes uint8 RGB, bad files raise ImageReadError naming the
file, writes are atomic."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facexpr.errors import ImageReadError, OutputError
from facexpr.imageio import load_image, save_image


def _gradient(h: int = 40, w: int = 60) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 4 % 256, y * 6 % 256, (x + y) * 2 % 256]).astype(np.uint8)


# --- decoding modes -------------------------------------------------------------------------------


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    rgb = _gradient()
    save_image(tmp_path / "a.png", rgb)
    img = load_image(tmp_path / "a.png")
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (40, 60, 3)
    assert img.alpha is None
    np.testing.assert_array_equal(img.rgb, rgb)
    assert img.path == tmp_path / "a.png"


def test_rgba_keeps_alpha_separately(tmp_path: Path) -> None:
    rgb = _gradient()
    alpha = np.tile(np.arange(60, dtype=np.uint8) * 4, (40, 1))
    save_image(tmp_path / "a.png", rgb, alpha=alpha)
    img = load_image(tmp_path / "a.png")
    assert img.rgb.shape == (40, 60, 3)
    np.testing.assert_array_equal(img.alpha, alpha)
    np.testing.assert_array_equal(img.rgb, rgb)


def test_la_p_and_1bit_modes(tmp_path: Path) -> None:
    grey = np.tile(np.arange(50, dtype=np.uint8) * 5, (20, 1))
    Image.fromarray(np.dstack([grey, 255 - grey]), "LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert img.rgb.shape == (20, 50, 3) and img.alpha is not None
    np.testing.assert_array_equal(img.rgb[..., 0], grey)
    np.testing.assert_array_equal(img.alpha, 255 - grey)

    pal = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    img = load_image(tmp_path / "p.png")
    assert img.rgb.shape == (40, 60, 3) and img.rgb.dtype == np.uint8

    Image.fromarray(grey > 100).save(tmp_path / "bits.png")
    img = load_image(tmp_path / "bits.png")
    assert set(np.unique(img.rgb)) <= {0, 255}


def test_16bit_png_becomes_uint8(tmp_path: Path) -> None:
    ramp = (np.tile(np.arange(64, dtype=np.uint16), (8, 1)) * 1024).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # mode I;16
    img = load_image(tmp_path / "deep.png")
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (8, 64, 3)
    np.testing.assert_array_equal(img.rgb[0, :, 0], (ramp[0] >> 8).astype(np.uint8))


def test_exif_orientation_applied(tmp_path: Path) -> None:
    rgb = _gradient(30, 50)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "rot.jpg")
    assert img.rgb.shape == (50, 30, 3)


def test_real_rgba_and_greyscale(misc: Path) -> None:
    rgba = load_image(misc / "Image_with_alpha.png")
    assert rgba.alpha is not None and rgba.alpha.shape == rgba.rgb.shape[:2]
    grey = load_image(misc / "BWPictureHuman.jpg")
    assert grey.rgb.shape == (1912, 2560, 3) and grey.alpha is None
    np.testing.assert_array_equal(grey.rgb[..., 0], grey.rgb[..., 2])


# --- bad inputs -----------------------------------------------------------------------------------


def _raises_naming(path: Path, *words: str) -> str:
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    msg = str(info.value)
    assert path.name in msg
    for w in words:
        assert w in msg.lower()
    return msg


def test_missing_empty_and_text_files(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "nope.jpg", "not found")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _raises_naming(tmp_path / "empty.jpg", "empty")
    (tmp_path / "notes.jpg").write_text("these are not pixels\n" * 20)
    _raises_naming(tmp_path / "notes.jpg", "not a supported image")
    _raises_naming(tmp_path, "folder")


def test_truncated_jpeg_raises(tmp_path: Path, portraits: list[Path]) -> None:
    data = portraits[0].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    _raises_naming(cut, "truncated")


def test_truncated_synthetic_jpeg_raises(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(tmp_path / "n.jpg", quality=90)
    data = (tmp_path / "n.jpg").read_bytes()
    (tmp_path / "n.jpg").write_bytes(data[: int(len(data) * 0.6)])
    _raises_naming(tmp_path / "n.jpg", "truncated")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` (1-bit grey) with one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_huge_header_rejected_before_decoding(tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 20_000, 20_000)  # 400 MP claimed, 100 bytes on disk
    msg = _raises_naming(huge, "downscale")
    assert "400 MP" in msg
    medium = tmp_path / "medium.png"
    _png_header_only(medium, 12_000, 10_000)  # 120 MP: above our limit, below PIL's refusal
    msg = _raises_naming(medium, "downscale")
    assert "12000x10000" in msg and "100 MP" in msg
    small = tmp_path / "small.png"
    save_image(small, _gradient())
    with pytest.raises(ImageReadError, match="small.png"):
        load_image(small, max_pixels=1000)


# --- saving ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_save_formats(tmp_path: Path, suffix: str) -> None:
    rgb = _gradient()
    out = tmp_path / f"x{suffix}"
    save_image(out, rgb, quality=95)
    back = load_image(out).rgb
    assert back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb).mean() < 6
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left


def test_saved_file_has_normal_permissions(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    save_image(out, _gradient())
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="x.gifx"):
        save_image(tmp_path / "x.gifx", _gradient())


def test_save_to_unwritable_folder_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    target = blocker / "out.png"
    with pytest.raises(OutputError, match="out.png"):
        save_image(target, _gradient())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]

    if os.geteuid() != 0:  # permission bits do not stop root
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(OutputError, match="out.png"):
                save_image(ro / "out.png", _gradient())
            assert list(ro.iterdir()) == []
        finally:
            ro.chmod(0o700)


def test_disk_full_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.png"
    save_image(target, _gradient())
    before = target.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="out.png"):
        save_image(target, 255 - _gradient())
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
