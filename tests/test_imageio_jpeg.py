"""save_image(like=loaded): an edited JPEG is written the way its source was, so the photo outside
the edit decodes as before; ICC and EXIF are kept with the orientation reset; PNG stays lossless."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from facexpr.imageio import (_ORIENTATION_METHODS, _exif_for_output, _orient, _planes_like, _source_planes,
                              load_image, save_image)

TARGET = 0.005  # share of pixels outside the edit that may change by more than 2 levels


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields with grain: something a JPEG encoder treats like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.dstack([128 + 70 * np.sin(x / (17 + 6 * c) + c) * np.cos(y / (29 - 5 * c) - c) for c in range(3)])
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def _edit(rgb: np.ndarray, margin: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """+20 on a face-sized square in the middle; the mask of pixels outside it grown by ``margin``."""
    h, w = rgb.shape[:2]
    s = min(300, h // 2, w // 2)
    y0, x0 = (h - s) // 2, (w - s) // 2
    edited = rgb.copy()
    edited[y0:y0 + s, x0:x0 + s] = np.clip(edited[y0:y0 + s, x0:x0 + s].astype(np.int16) + 20, 0, 255)
    outside = np.ones((h, w), bool)
    outside[max(0, y0 - margin):y0 + s + margin, max(0, x0 - margin):x0 + s + margin] = False
    return edited, outside


def _changed_share(out: Path, before: np.ndarray, outside: np.ndarray) -> float:
    after = load_image(out).rgb.astype(np.int16)
    assert after.shape == before.shape
    return float((np.abs(after - before).max(axis=2)[outside] > 2).mean())


def _icc(colour_space: str) -> bytes:
    image_cms = pytest.importorskip("PIL.ImageCms", reason="Pillow was built without LittleCMS")
    return image_cms.ImageCmsProfile(image_cms.createProfile(colour_space)).tobytes()


def _tables_per_component(path: Path) -> list[list[int]]:
    with Image.open(path) as im:
        return [list(im.quantization[t]) for _, _, _, t in im.layer]


def _transposed(table: list[int]) -> list[int]:
    return [table[(k % 8) * 8 + k // 8] for k in range(64)]


def _tiff_exif(order: str = "<", orientation: int = 6, thumbnail: bool = True) -> bytes:
    """A minimal EXIF block: IFD0 with Make and Orientation, optionally an IFD1 (thumbnail)."""
    e = order
    make = b"facexpr-test\x00"
    entries = 2
    ifd0 = 8
    ifd0_end = ifd0 + 2 + 12 * entries + 4
    make_off = ifd0_end
    ifd1 = make_off + len(make) + (len(make) % 2)
    body = (b"II" if e == "<" else b"MM") + struct.pack(e + "HI", 42, ifd0)
    body += struct.pack(e + "H", entries)
    body += struct.pack(e + "HHI", 0x010F, 2, len(make)) + struct.pack(e + "I", make_off)
    body += struct.pack(e + "HHI", 0x0112, 3, 1) + struct.pack(e + "HH", orientation, 0)
    body += struct.pack(e + "I", ifd1 if thumbnail else 0)
    body += make + b"\x00" * (len(make) % 2)
    if thumbnail:
        body += struct.pack(e + "H", 1) + struct.pack(e + "HHI", 0x0103, 3, 1) + struct.pack(e + "HH", 6, 0)
        body += struct.pack(e + "I", 0)
    return b"Exif\x00\x00" + body


def _next_ifd_after_ifd0(exif: bytes) -> int:
    body = exif[6:]
    e = "<" if body[:2] == b"II" else ">"
    ifd0 = struct.unpack_from(e + "I", body, 4)[0]
    n = struct.unpack_from(e + "H", body, ifd0)[0]
    return struct.unpack_from(e + "I", body, ifd0 + 2 + 12 * n)[0]


# --- real photos -----------------------------------------------------------------------------------


def _real_jpegs(portraits: list[Path], misc: Path) -> list[Path]:
    files = [p for p in portraits if p.suffix.lower() == ".jpg"][:4]
    files += [misc / "single_face.jpg", misc / "multi_face.jpg"]
    missing = [p for p in files if not p.exists()]
    if missing:
        pytest.skip(f"shared photos missing: {', '.join(map(str, missing))}")
    return files


def test_real_jpegs_unchanged_outside_the_edit(tmp_path: Path, portraits: list[Path], misc: Path) -> None:
    for src in _real_jpegs(portraits, misc):
        loaded = load_image(src)
        edited, outside = _edit(loaded.rgb)
        out = tmp_path / f"{src.stem}.jpg"
        save_image(out, edited, like=loaded)
        share = _changed_share(out, loaded.rgb, outside)
        assert share < TARGET, f"{src.name}: {share:.3%} of the pixels outside the edit changed"
        assert _tables_per_component(out) == _tables_per_component(src), src.name
        with Image.open(out) as o, Image.open(src) as s:
            assert JpegImagePlugin.get_sampling(o) == JpegImagePlugin.get_sampling(s)
            assert o.getexif().get(0x0112, 1) == 1
            assert bool(o.info.get("progressive")) == bool(s.info.get("progressive"))
        # the edit itself is written, not replaced by the source
        back = load_image(out).rgb.astype(np.int16)
        assert np.abs(back - edited).mean() < np.abs(back - loaded.rgb).mean()


def test_real_jpeg_old_writer_was_worse(tmp_path: Path, misc: Path) -> None:
    """The defaults (q95 4:4:4) re-encode everything; the measurement must be able to see that."""
    src = misc / "multi_face.jpg"
    if not src.exists():
        pytest.skip(f"{src} missing")
    loaded = load_image(src)
    edited, outside = _edit(loaded.rgb)
    save_image(tmp_path / "old.jpg", edited)
    save_image(tmp_path / "new.jpg", edited, like=loaded)
    assert _changed_share(tmp_path / "old.jpg", loaded.rgb, outside) > 0.02
    assert _changed_share(tmp_path / "new.jpg", loaded.rgb, outside) < TARGET
    assert (tmp_path / "new.jpg").stat().st_size < (tmp_path / "old.jpg").stat().st_size


# --- synthetic JPEGs --------------------------------------------------------------------------------


@pytest.mark.parametrize(("subsampling", "quality", "progressive"),
                         [(2, 75, False), (2, 95, True), (1, 92, False), (0, 90, False)])
def test_synthetic_jpeg_keeps_tables_subsampling_and_pixels(
    tmp_path: Path, subsampling: int, quality: int, progressive: bool
) -> None:
    src = tmp_path / "src.jpg"
    Image.fromarray(_photo(480, 642)).save(src, quality=quality, subsampling=subsampling, progressive=progressive)
    loaded = load_image(src)
    assert loaded.encoding is not None and loaded.encoding.format == "JPEG"
    assert loaded.encoding.subsampling == subsampling
    assert abs(loaded.encoding.quality - quality) <= 1
    edited, outside = _edit(loaded.rgb)
    out = tmp_path / "out.jpg"
    save_image(out, edited, like=loaded)
    assert _changed_share(out, loaded.rgb, outside) < TARGET
    assert _tables_per_component(out) == _tables_per_component(src)
    with Image.open(out) as o:
        assert JpegImagePlugin.get_sampling(o) == subsampling
        assert bool(o.info.get("progressive")) == progressive


def _planes_by_definition(arr: np.ndarray, loaded, subsampling: int) -> np.ndarray:
    """What ``_planes_like`` means, pixel by pixel over the whole photo: the source's luma where
    ``arr`` is the loaded pixel, the source's stored chroma in every cell without an edited pixel,
    ``arr`` converted elsewhere."""
    cy, cx = {0: (1, 1), 1: (1, 2), 2: (2, 2)}[subsampling]
    luma, chroma = _source_planes(loaded)
    h, w = arr.shape[:2]
    if chroma is None:
        chroma = np.full((-(-h // cy), -(-w // cx), 2), 128, np.uint8)
    touched = (arr != loaded.rgb).any(axis=2)
    out = np.asarray(Image.fromarray(arr, "RGB").convert("YCbCr")).copy()
    out[..., 0][~touched] = luma[~touched]
    cells = np.zeros((chroma.shape[0] * cy, chroma.shape[1] * cx), bool)
    cells[:h, :w] = touched
    cells = cells.reshape(chroma.shape[0], cy, chroma.shape[1], cx).any(axis=(1, 3))
    kept = ~np.repeat(np.repeat(cells, cy, axis=0), cx, axis=1)[:h, :w]
    out[..., 1:][kept] = np.repeat(np.repeat(chroma, cy, axis=0), cx, axis=1)[:h, :w][kept]
    return out


@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("shape", [(257, 131), (64, 65), (16, 17)])
def test_planes_from_the_edited_box_are_the_planes_by_definition(tmp_path: Path, subsampling: int,
                                                                 shape: tuple[int, int]) -> None:
    """The planes are worked out in the box around the edited pixels only; they must be what the
    definition gives over the whole photo: edits at the corners, single channels, scattered, none."""
    src = tmp_path / "src.jpg"
    Image.fromarray(_photo(*shape, seed=subsampling)).save(src, quality=90, subsampling=subsampling)
    loaded = load_image(src)
    h, w = shape
    edits = [loaded.rgb.copy() for _ in range(5)]
    edits[1][h // 3: h // 2 + 1, w // 4: w // 2 + 1] ^= 7  # a box at odd offsets
    edits[2][-1, -1, 2] ^= 1  # the last pixel, one channel, one level
    edits[3][0, 0, 0] ^= 1
    edits[3][h // 2, w - 1, 1] ^= 3  # scattered: the box spans them
    edits[4][1::5, 2::3] = 255 - edits[4][1::5, 2::3]
    for arr in edits:
        planes = _planes_like(arr, loaded, subsampling)
        assert planes is not None
        np.testing.assert_array_equal(np.asarray(planes), _planes_by_definition(arr, loaded, subsampling))


def test_unedited_jpeg_decodes_almost_identically(tmp_path: Path) -> None:
    src = tmp_path / "src.jpg"
    Image.fromarray(_photo(256, 320, seed=3)).save(src, quality=85)
    loaded = load_image(src)
    save_image(tmp_path / "out.jpg", loaded.rgb, like=loaded)
    back = load_image(tmp_path / "out.jpg").rgb.astype(np.int16)
    assert (np.abs(back - loaded.rgb).max(axis=2) > 2).mean() < 0.001


def test_rotated_jpeg_is_written_upright_with_metadata(tmp_path: Path) -> None:
    icc = _icc("sRGB")
    src = tmp_path / "rot.jpg"
    stored = _photo(384, 512, seed=1)  # multiples of 16: the block grid survives the rotation
    Image.fromarray(stored).save(src, quality=90, subsampling=2, exif=_tiff_exif("<", 6), icc_profile=icc)
    loaded = load_image(src)
    assert loaded.rgb.shape == (512, 384, 3) and loaded.encoding.orientation == 6
    edited, outside = _edit(loaded.rgb)
    out = tmp_path / "out.jpg"
    save_image(out, edited, like=loaded)
    with Image.open(out) as o:
        assert o.size == (384, 512)  # stored upright
        exif = o.getexif()
        assert exif.get(0x0112, 1) == 1
        assert exif.get(0x010F) == "facexpr-test"
        assert o.info.get("icc_profile") == icc
        assert _next_ifd_after_ifd0(o.info["exif"]) == 0  # no thumbnail of the unedited photo
    src_tables = _tables_per_component(src)
    assert _tables_per_component(out) == [_transposed(t) for t in src_tables]
    assert _changed_share(out, loaded.rgb, outside) < TARGET
    again = load_image(out)
    assert again.rgb.shape == loaded.rgb.shape and again.encoding.orientation == 1


def test_rotation_that_shifts_the_block_grid_writes_the_defaults(tmp_path: Path) -> None:
    """Orientation 3 on 385x513 px reverses a partial MCU on both axes: no block keeps its content,
    so the source's (coarser) tables would only add loss; a fresh q95 4:4:4 encoding is written."""
    src = tmp_path / "rot.jpg"
    Image.fromarray(_photo(385, 513, seed=7)).save(src, quality=85, subsampling=2, exif=_tiff_exif("<", 3))
    loaded = load_image(src)
    out = tmp_path / "out.jpg"
    save_image(out, _edit(loaded.rgb)[0], like=loaded)
    with Image.open(out) as o:
        assert JpegImagePlugin.get_sampling(o) == 0
        assert o.getexif().get(0x0112, 1) == 1
    assert _tables_per_component(out) != _tables_per_component(src)


def test_422_turned_by_90_degrees_is_written_444_with_the_luma_table(tmp_path: Path) -> None:
    src = tmp_path / "rot.jpg"
    Image.fromarray(_photo(384, 512, seed=8)).save(src, quality=92, subsampling=1, exif=_tiff_exif(">", 8))
    loaded = load_image(src)
    assert loaded.encoding.subsampling == -1  # upright it would be 4:4:0, which Pillow cannot write
    out = tmp_path / "out.jpg"
    save_image(out, _edit(loaded.rgb)[0], like=loaded)
    luma = _transposed(_tables_per_component(src)[0])
    with Image.open(out) as o:
        assert JpegImagePlugin.get_sampling(o) == 0 and o.getexif().get(0x0112, 1) == 1
    assert _tables_per_component(out) == [luma, luma, luma]


def test_greyscale_jpeg_source(tmp_path: Path) -> None:
    src = tmp_path / "grey.jpg"
    Image.fromarray(_photo(300, 400, seed=2)[..., 1]).save(src, quality=88)
    loaded = load_image(src)
    edited, outside = _edit(loaded.rgb)
    edited[140:160, 190:210, 0] = 255  # the edit may bring colour into a grey photo
    out = tmp_path / "out.jpg"
    save_image(out, edited, like=loaded)
    with Image.open(out) as o, Image.open(src) as s:
        assert o.mode == "RGB"
        assert o.quantization[0] == s.quantization[0]
    assert _changed_share(out, loaded.rgb, outside) < TARGET


def test_source_changed_after_loading_still_writes_its_tables(tmp_path: Path) -> None:
    src = tmp_path / "src.jpg"
    Image.fromarray(_photo(200, 240, seed=4)).save(src, quality=80)
    loaded = load_image(src)
    Image.fromarray(_photo(100, 100, seed=5)).save(src, quality=30)  # replaced meanwhile
    edited, _ = _edit(loaded.rgb)
    out = tmp_path / "out.jpg"
    save_image(out, edited, like=loaded)
    back = load_image(out).rgb.astype(np.int16)
    assert back.shape == edited.shape and np.abs(back - edited).mean() < 3
    assert _tables_per_component(out)[0] == list(loaded.encoding.qtables[0])


def test_rgb_stored_jpeg_stays_rgb_stored(tmp_path: Path) -> None:
    """A JPEG stored as R, G, B (Adobe transform 0) is written that way, without a YCbCr trip."""
    src = tmp_path / "rgb.jpg"
    Image.fromarray(_photo(200, 240, seed=9)).save(src, quality=90, keep_rgb=True)
    loaded = load_image(src)
    assert loaded.encoding.adobe_transform == 0
    edited, outside = _edit(loaded.rgb)
    out = tmp_path / "out.jpg"
    save_image(out, edited, like=loaded)
    with Image.open(out) as o:
        assert o.info.get("adobe_transform") == 0
    assert _changed_share(out, loaded.rgb, outside) < TARGET


def test_cmyk_jpeg_source_gets_the_defaults(tmp_path: Path) -> None:
    src = tmp_path / "cmyk.jpg"
    Image.fromarray(_photo(120, 160)).convert("CMYK").save(src, quality=90)
    loaded = load_image(src)
    out = tmp_path / "out.jpg"
    save_image(out, loaded.rgb, like=loaded)
    with Image.open(out) as o:
        assert o.mode == "RGB" and JpegImagePlugin.get_sampling(o) == 0


def test_non_rgb_icc_profile_is_not_attached(tmp_path: Path) -> None:
    lab = _icc("LAB")
    src = tmp_path / "src.jpg"
    Image.fromarray(_photo(64, 64)).save(src, quality=90, icc_profile=lab)
    loaded = load_image(src)
    save_image(tmp_path / "out.jpg", loaded.rgb, like=loaded)
    with Image.open(tmp_path / "out.jpg") as o:
        assert "icc_profile" not in o.info


def test_png_source_and_output(tmp_path: Path) -> None:
    src = tmp_path / "src.png"
    Image.fromarray(_photo(120, 160)).save(src)
    loaded = load_image(src)
    edited, _ = _edit(loaded.rgb)
    save_image(tmp_path / "out.png", edited, like=loaded)
    np.testing.assert_array_equal(load_image(tmp_path / "out.png").rgb, edited)  # lossless
    # a PNG source gives no tables: a JPEG output gets the defaults (q95, 4:4:4)
    save_image(tmp_path / "out.jpg", edited, like=loaded)
    with Image.open(tmp_path / "out.jpg") as o:
        assert JpegImagePlugin.get_sampling(o) == 0


def test_jpeg_source_to_png_output_is_lossless(tmp_path: Path) -> None:
    src = tmp_path / "src.jpg"
    Image.fromarray(_photo(120, 160)).save(src, quality=80)
    loaded = load_image(src)
    edited, _ = _edit(loaded.rgb)
    save_image(tmp_path / "out.png", edited, like=loaded)
    np.testing.assert_array_equal(load_image(tmp_path / "out.png").rgb, edited)


# --- helpers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pil(orientation: int) -> None:
    a = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    method = _ORIENTATION_METHODS.get(orientation)
    want = a if method is None else np.asarray(Image.fromarray(a).transpose(method))
    np.testing.assert_array_equal(_orient(a, orientation), want)


@pytest.mark.parametrize("order", ["<", ">"])
def test_exif_orientation_reset_in_place(order: str) -> None:
    raw = _tiff_exif(order, orientation=8)
    out = _exif_for_output(raw)
    assert out is not None and len(out) == len(raw)
    exif = Image.Exif()
    exif.load(out)
    assert exif[0x0112] == 1 and exif[0x010F] == "facexpr-test"
    assert _next_ifd_after_ifd0(out) == 0
    assert _exif_for_output(b"Exif\x00\x00garbage") is None
    assert _exif_for_output(None) is None


def test_run_batch_writes_jpeg_like_its_source(tmp_path: Path) -> None:
    from facexpr.pipeline.batch import plan_jobs, run_batch

    src_dir = tmp_path / "in"
    src_dir.mkdir()
    Image.fromarray(_photo(400, 480, seed=6)).save(src_dir / "a.jpg", quality=82, subsampling=2)

    class StubEditor:
        def edit_array(self, arr, target, faces="all"):  # type: ignore[no-untyped-def]
            edited, _ = _edit(arr[..., :3])
            return SimpleNamespace(image=edited, refused=[])

    jobs = plan_jobs([src_dir], tmp_path / "out")
    report = run_batch(StubEditor(), jobs, target=None)  # type: ignore[arg-type]
    assert report.ok and report.edited == [tmp_path / "out" / "a.jpg"]
    loaded = load_image(src_dir / "a.jpg")
    _, outside = _edit(loaded.rgb)
    assert _changed_share(tmp_path / "out" / "a.jpg", loaded.rgb, outside) < TARGET
    assert _tables_per_component(tmp_path / "out" / "a.jpg") == _tables_per_component(src_dir / "a.jpg")
