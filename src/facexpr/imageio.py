"""Reading and writing photos the same way everywhere.

Every image that enters facexpr goes through :func:`load_image`, so EXIF rotation, palettes,
greyscale, 16-bit and alpha channels are handled once, and a bad file always becomes an
:class:`~facexpr.errors.ImageReadError` that names the file and says what to do. Every image that
leaves goes through :func:`save_image`, which writes atomically so an interrupted run never leaves a
half-written photo that a later run would mistake for a finished one.

An edited JPEG is written "like" its source (``save_image(..., like=loaded)``): same quantisation
tables and chroma subsampling, the source's own decoded Y/Cb/Cr planes wherever the pixels were not
edited, and the source's ICC profile and EXIF (orientation reset to 1, since the pixels are stored
upright, and without the EXIF thumbnail, which would show the unedited photo). The JPEG encoder then
reproduces almost exactly the source's DCT coefficients outside the edit, so the rest of the photo
decodes as before instead of losing another generation of quality.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facexpr.atomic import atomic_open
from facexpr.errors import ImageReadError, OutputError, OutputExistsError

DEFAULT_MAX_PIXELS = 100_000_000

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


#: EXIF orientation -> the transpose ``ImageOps.exif_transpose`` applies (stored -> upright).
_ORIENTATION_METHODS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Which stored axes (rows, columns) each orientation reverses.
_ORIENTATION_FLIPS = {1: (False, False), 2: (False, True), 3: (True, True), 4: (True, False),
                      5: (False, False), 6: (True, False), 7: (True, True), 8: (False, True)}
#: Pillow's ``subsampling`` codes by the chroma sampling factors (horizontal, vertical divisor).
_SUBSAMPLING_CODES = {(1, 1): 0, (2, 1): 1, (2, 2): 2}

#: libjpeg's standard luminance table (Annex K), natural order, for the quality estimate.
_STD_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


@dataclass(frozen=True)
class SourceEncoding:
    """How a photo file was encoded, so that an edited copy can be written the same way.

    Everything is given for the upright image that :func:`load_image` returns: for a file with an
    EXIF orientation of 5..8 the quantisation tables are transposed and the chroma subsampling
    turned accordingly. ``exif`` is ready to write: Orientation 1 and no thumbnail.
    """

    format: str  # PIL's name: "JPEG", "PNG", "WEBP", ...
    mode: str  # PIL mode of the file: "RGB", "L", "CMYK", "RGBA", ...
    orientation: int = 1  # the EXIF orientation the loader applied (1 = none)
    #: JPEG: one table per component in component order (Y, Cb, Cr; a repeated table is given
    #: once, as Pillow's encoder expects), 64 values each in natural (row-major) order.
    qtables: tuple[tuple[int, ...], ...] | None = None
    #: JPEG: Pillow's code, 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0; -1 = none Pillow can write.
    subsampling: int | None = None
    #: JPEG: (horizontal, vertical) chroma divisor of the stored file, e.g. (2, 2) for 4:2:0.
    chroma_divisor: tuple[int, int] | None = None
    #: JPEG: (width, height) in px of one MCU of the stored file (the block grid's period).
    mcu: tuple[int, int] | None = None
    quality: int | None = None  # JPEG: libjpeg quality whose tables are closest to the file's
    progressive: bool = False
    adobe_transform: int | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None  # "Exif\0\0" + TIFF, Orientation 1, no IFD1 (thumbnail)
    dpi: tuple[float, float] | None = None
    stamp: tuple[int, int] | None = None  # (size, mtime_ns) of the file when it was read


@dataclass
class LoadedImage:
    """A decoded photo: ``rgb`` uint8 HxWx3, ``alpha`` uint8 HxW or None, and where it came from.

    ``encoding`` records how the file was encoded (see :class:`SourceEncoding`); pass the whole
    object as ``save_image(..., like=loaded)`` to write an edited JPEG the way its source was.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    path: Path
    encoding: SourceEncoding | None = None
    #: Frames in the file (an animated GIF/WebP/PNG has several; only the first is decoded).
    frames: int = 1

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit / int32 / float array to uint8 (16-bit data keeps its top 8 bits)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        hi = float(np.nanmax(arr)) if arr.size else 1.0
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    # Integer modes ("I;16", "I"): PIL gives 16-bit PNG greyscale as int32 with values 0..65535.
    hi = int(arr.max()) if arr.size else 0
    if hi > 255:
        return (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _decode(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert any PIL mode to (uint8 RGB, uint8 alpha or None)."""
    mode = img.mode
    if mode == "P":
        has_alpha = "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode in ("RGBa", "La"):  # premultiplied: undo before splitting
            img = img.convert("RGBA" if mode == "RGBa" else "LA")
        rgba = img.convert("RGBA")
        arr = np.asarray(rgba)
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3])
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        grey = _to_uint8(np.asarray(img))
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)), None
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8)), None
    # L, 1, CMYK, YCbCr, LAB, HSV ...
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8)), None


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the loader's EXIF transpose to a numpy plane (axes 0, 1), like ``exif_transpose``."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return arr if op is None else np.ascontiguousarray(op(arr))


#: libjpeg's standard luminance table scaled for each quality 1..100, (100, 64).
_QUALITY_SCALES = np.array([5000 // q if q < 50 else 200 - 2 * q for q in range(1, 101)], np.int64)
_QUALITY_TABLES = np.clip((np.asarray(_STD_LUMA, np.int64)[None, :] * _QUALITY_SCALES[:, None] + 50) // 100, 1, 32767)


def _estimate_quality(luma: tuple[int, ...]) -> int:
    """The libjpeg quality (1..100) whose scaled standard table is closest to ``luma``."""
    return int(np.argmin(np.abs(_QUALITY_TABLES - np.asarray(luma, np.int64)).sum(axis=1))) + 1  # the first best


def _exif_for_output(raw: bytes | None) -> bytes | None:
    """The EXIF block to write with upright pixels: Orientation set to 1, the thumbnail unlinked.

    Patched in place rather than rebuilt, so maker notes and offsets stay valid. IFD1 (the
    thumbnail) is unlinked because it shows the unedited photo in its stored orientation. Returns
    None (write no EXIF) when the block cannot be parsed, so a stale orientation is never written.
    """
    if not raw:
        return None
    body = bytearray(raw[6:] if raw.startswith(b"Exif\x00\x00") else raw)
    if len(body) < 8 or body[:2] not in (b"II", b"MM"):
        return None
    e = "<" if body[:2] == b"II" else ">"
    try:
        if struct.unpack_from(e + "H", body, 2)[0] != 42:
            return None
        ifd0 = struct.unpack_from(e + "I", body, 4)[0]
        count = struct.unpack_from(e + "H", body, ifd0)[0]
        end = ifd0 + 2 + 12 * count
        if end + 4 > len(body):
            return None
        for k in range(count):
            entry = ifd0 + 2 + 12 * k
            tag, kind, n = struct.unpack_from(e + "HHI", body, entry)
            if tag == 0x0112:
                if kind != 3 or n != 1:
                    return None
                struct.pack_into(e + "H", body, entry + 8, 1)
        struct.pack_into(e + "I", body, end, 0)
    except struct.error:
        return None
    out = b"Exif\x00\x00" + bytes(body)
    return out if len(out) <= 65533 else None  # one APP1 segment at most


def _rgb_icc(icc: bytes | None) -> bytes | None:
    """``icc`` if it describes RGB data (a CMYK or grey profile must not tag our RGB output)."""
    return icc if icc and len(icc) >= 20 and icc[16:20] == b"RGB " else None


def _source_encoding(img: Image.Image, stamp: tuple[int, int]) -> SourceEncoding:
    """What :func:`save_image` needs to write like ``img`` (decoded, not yet turned upright).

    Never raises: a file whose metadata cannot be understood is still a photo to edit, it just
    gets a bare record (and so the default encoding when saved).
    """
    try:
        return _read_source_encoding(img, stamp)
    except Exception:
        return SourceEncoding(format=str(img.format), mode=img.mode, stamp=stamp)


def _read_source_encoding(img: Image.Image, stamp: tuple[int, int]) -> SourceEncoding:
    try:
        orientation = int(img.getexif().get(0x0112, 1))
    except Exception:  # a damaged EXIF block: exif_transpose will not rotate either
        orientation = 1
    if orientation not in _ORIENTATION_FLIPS:
        orientation = 1
    transposed = orientation >= 5
    info = img.info
    dpi = info.get("dpi")
    try:
        dpi = (float(dpi[0]), float(dpi[1])) if dpi else None
        if dpi and transposed:
            dpi = (dpi[1], dpi[0])
    except (TypeError, ValueError, IndexError):
        dpi = None
    raw_exif = info.get("exif")
    common = dict(format=str(img.format), mode=img.mode, orientation=orientation,
                  icc_profile=info.get("icc_profile") or None,
                  exif=_exif_for_output(raw_exif if isinstance(raw_exif, bytes) else None),
                  dpi=dpi, stamp=stamp)
    if img.format != "JPEG" or not getattr(img, "quantization", None):
        return SourceEncoding(**common)  # type: ignore[arg-type]
    layers = list(getattr(img, "layer", []))  # (component id, h, v, table id)
    quant = img.quantization
    try:
        ids = [int(t) for _, _, _, t in layers]
        while len(ids) > 1 and ids[-1] == ids[-2]:
            ids.pop()  # Pillow's encoder gives the last table to every remaining component
        tables = [tuple(int(v) for v in quant[i]) for i in ids]
    except (KeyError, ValueError, TypeError):
        return SourceEncoding(**common)  # type: ignore[arg-type]
    if not tables or len(tables) > 4 or any(len(t) != 64 for t in tables):
        return SourceEncoding(**common)  # type: ignore[arg-type]
    quality = _estimate_quality(tables[0])
    if transposed:
        tables = [tuple(t[(k % 8) * 8 + k // 8] for k in range(64)) for t in tables]
    divisor = None
    subsampling = -1
    if len(layers) == 1:
        mcu = (8, 8)  # a single component is not interleaved: its MCU is one block
    else:
        mcu = (8 * max(int(c[1]) for c in layers), 8 * max(int(c[2]) for c in layers))
    if len(layers) == 3 and layers[1][1:3] == (1, 1) and layers[2][1:3] == (1, 1):
        divisor = (int(layers[0][1]), int(layers[0][2]))
        shown = divisor[::-1] if transposed else divisor
        subsampling = _SUBSAMPLING_CODES.get(shown, -1)
    return SourceEncoding(
        **common,  # type: ignore[arg-type]
        qtables=tuple(tables),
        subsampling=subsampling,
        chroma_divisor=divisor,
        mcu=mcu,
        quality=quality,
        progressive=bool(info.get("progressive") or info.get("progression")),
        adobe_transform=info.get("adobe_transform"),
    )


def _pil_limit() -> float:
    """Pixel count from which PIL refuses to open a file (twice its warning threshold)."""
    limit = Image.MAX_IMAGE_PIXELS
    return float("inf") if limit is None else 2.0 * limit


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode a photo into uint8 RGB (+ alpha), with its EXIF orientation applied.

    The pixel count is checked from the header before decoding, so a hostile or accidental
    gigapixel file costs nothing. (PIL's own guard refuses files above ~179 MP whatever
    ``max_pixels`` says; that limit is PIL's process-wide ``Image.MAX_IMAGE_PIXELS``.) Truncated files raise instead of being padded with grey, because
    a half-grey face would silently poison a dataset or an edit.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a folder, not an image file")
    try:
        st = p.stat()
        size = st.st_size
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot be read ({exc}); check its permissions") from exc
    if size == 0:
        raise ImageReadError(f"{p}: the file is empty (0 bytes); re-export or re-download it")
    try:
        with warnings.catch_warnings():
            # PIL warns from ~89 MP (we apply our own limit below) and refuses from ~179 MP
            # (DecompressionBombError, handled here) while reading the header only.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size_txt = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "its pixel count"
        raise ImageReadError(
            f"{p}: {size_txt} is larger than the {min(max_pixels, _pil_limit()) / 1e6:.0f} MP limit; "
            "downscale it (e.g. to 4000 px on the long side) and try again"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(
            f"{p}: not a supported image (JPEG, PNG, WebP, BMP, TIFF); convert it to JPEG or PNG"
        ) from exc
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot be opened ({exc}); check the file and its permissions") from exc
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageReadError(
                f"{p}: {w}x{h} = {w * h / 1e6:.0f} MP is larger than the {max_pixels / 1e6:.0f} MP limit; "
                "downscale it (e.g. to 4000 px on the long side) and try again"
            )
        if w == 0 or h == 0:
            raise ImageReadError(f"{p}: has no pixels ({w}x{h}); re-export it")
        try:
            img.load()  # LOAD_TRUNCATED_IMAGES is False by default, so truncation raises here
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            encoding = _source_encoding(img, (size, st.st_mtime_ns))  # before the EXIF transpose
            ImageOps.exif_transpose(img, in_place=True)  # (not in place, an upright photo was copied whole)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(
                f"{p}: the image data is damaged or truncated ({exc}); re-export or re-download it"
            ) from exc
        rgb, alpha = _decode(img)
    return LoadedImage(rgb=rgb, alpha=alpha, path=p, encoding=encoding, frames=n_frames)


def _invert_h2v1(up: np.ndarray, half_width: int) -> np.ndarray:
    """The stored half-width chroma plane behind libjpeg's horizontal "fancy" upsampling.

    libjpeg decodes 4:2:2 chroma by interpolating each stored sample 3:1 with its neighbour;
    re-encoding that plane box-averages it, which blurs chroma by [1 6 1]/8 every generation.
    Inverting the interpolation (a few Jacobi steps: the averaged response is >= 1/2 at every
    frequency) recovers the stored samples to within rounding, so re-encoding them reproduces the
    source's coefficients. (4:2:0 needs no estimate: libjpeg decodes it at native size when asked
    for half size.)
    """
    h, w = up.shape
    full = up.astype(np.float32)
    if w < 2 * half_width:  # odd width: libjpeg replicated the last column before cropping
        full = np.concatenate([full, full[:, -1:]], axis=1)
    target = (full[:, 0::2] + full[:, 1::2]) / 2

    def averaged_upsample(c: np.ndarray) -> np.ndarray:
        left = np.concatenate([c[:, :1], c[:, :-1]], axis=1)
        right = np.concatenate([c[:, 1:], c[:, -1:]], axis=1)
        even = (3 * c + left) / 4 - 0.125  # (3c + left + 1) >> 2 on average
        odd = (3 * c + right) / 4 + 0.125  # (3c + right + 2) >> 2 on average
        even[:, 0] = c[:, 0]
        odd[:, -1] = c[:, -1]
        return (even + odd) / 2

    c = target.copy()
    for _ in range(10):
        c += target - averaged_upsample(c)
    return np.clip(np.rint(c), 0, 255).astype(np.uint8)


def _source_planes(like: LoadedImage) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The source JPEG's decoded luma (upright, full size) and chroma at its stored resolution.

    None when the file changed since it was loaded or cannot be decoded that way. The chroma is
    None for a greyscale JPEG.
    """
    enc = like.encoding
    assert enc is not None
    st = like.path.stat()
    if (st.st_size, st.st_mtime_ns) != enc.stamp:
        return None
    with Image.open(like.path) as im:
        if im.format != "JPEG" or im.mode != enc.mode:
            return None
        w, h = im.size
        if enc.mode == "L":
            im.load()
            return _orient(np.asarray(im), enc.orientation), None
        im.draft("YCbCr", None)  # no colour conversion: libjpeg's own Y, Cb, Cr
        im.load()
        if im.mode != "YCbCr" or im.size != (w, h):
            return None
        if enc.chroma_divisor == (2, 2):  # (the chroma comes from a second decode below)
            ycc = np.asarray(im.getchannel(0))[..., None]
        else:
            ycc = np.asarray(im)
    luma = ycc[..., 0]
    if enc.chroma_divisor == (1, 1):
        chroma = ycc[..., 1:]
    elif enc.chroma_divisor == (2, 2):
        if w < 2 or h < 2:
            return None
        with Image.open(like.path) as im:
            im.draft("YCbCr", (w // 2, h // 2))  # 1/2 scale: chroma comes out at its stored size
            im.load()
            if im.mode != "YCbCr" or im.size != ((w + 1) // 2, (h + 1) // 2):
                return None
            chroma = np.asarray(im)[..., 1:]
    elif enc.chroma_divisor == (2, 1):
        chroma = np.dstack([_invert_h2v1(ycc[..., k], (w + 1) // 2) for k in (1, 2)])
    else:
        return None
    return _orient(luma, enc.orientation), _orient(chroma, enc.orientation)


def _planes_like(arr: np.ndarray, like: LoadedImage, subsampling: int) -> Image.Image | None:
    """A YCbCr image that makes the JPEG encoder reproduce the source outside the edited pixels.

    Pixels equal to ``like.rgb`` get the source's decoded luma; chroma cells (of the output
    subsampling) without an edited pixel get the source's stored chroma sample, repeated, so the
    encoder's averaging returns it unchanged. Edited pixels and cells are converted from ``arr``.
    Feeding the encoder libjpeg's own planes instead of RGB avoids the colour round trip and the
    chroma blur of re-subsampling; with the same tables, the DCT coefficients of untouched blocks
    then come out almost exactly as in the source.
    """
    enc = like.encoding
    assert enc is not None
    if enc.mode not in ("RGB", "L") or enc.adobe_transform == 0 or like.rgb.shape != arr.shape:
        return None
    cy, cx = {0: (1, 1), 1: (1, 2), 2: (2, 2)}[subsampling]
    if enc.mode == "RGB":
        if enc.chroma_divisor is None:
            return None
        dh, dv = enc.chroma_divisor
        stored = (dv, dh) if enc.orientation < 5 else (dh, dv)  # (rows, cols) divisor, upright
        if stored != (cy, cx):
            return None
        rows_flipped, cols_flipped = _ORIENTATION_FLIPS[enc.orientation]
        hs, ws = (arr.shape[0], arr.shape[1]) if enc.orientation < 5 else (arr.shape[1], arr.shape[0])
        if (rows_flipped and hs % dv) or (cols_flipped and ws % dh):
            return None  # flipping an odd edge shifts the chroma cells: no stored sample to reuse
    planes = _source_planes(like)
    if planes is None:
        return None
    luma, chroma = planes
    h, w = arr.shape[:2]
    ch, cw = -(-h // cy), -(-w // cx)
    if chroma is None:
        chroma = np.full((ch, cw, 2), 128, np.uint8)
    if luma.shape != (h, w) or chroma.shape != (ch, cw, 2):
        return None
    import cv2  # (here: reading photos needs no OpenCV)

    # The edited pixels lie in one box (an edit changes its faces' boxes, a fraction of the
    # photo), grown here to whole chroma cells: outside it every pixel is the source's, and so
    # are the planes; inside it they are chosen pixel by pixel and cell by cell, with OpenCV's
    # masked copies. (The same planes as numpy's masked writes over the whole photo gave, whose
    # broadcasts over the channels cost more than decoding the source: ~25 ms a 1024 px photo.)
    changed = cv2.transform(cv2.absdiff(np.ascontiguousarray(arr), np.ascontiguousarray(like.rgb)),
                            np.ones((1, 3), np.float32))  # saturating sum: 0 where no channel changed
    x, y, bw, bh = cv2.boundingRect(changed)
    x0, y0, x1, y1 = x - x % cx, y - y % cy, min(-(-(x + bw) // cx) * cx, w), min(-(-(y + bh) // cy) * cy, h)
    if bw == 0 or bh == 0:
        x0 = y0 = x1 = y1 = 0
    touched = changed[y0:y1, x0:x1]
    converted = Image.fromarray(arr, "RGB").convert("YCbCr")
    ycc = np.asarray(converted.crop((x0, y0, x1, y1)))
    n_kept = h * w - cv2.countNonZero(touched) if touched.size else h * w
    if n_kept:
        # |Y - luma| summed over the unedited pixels: over the whole photo, less the edited ones
        error = cv2.absdiff(np.asarray(converted.getchannel(0)), np.ascontiguousarray(luma))
        edited = int(cv2.sumElems(cv2.copyTo(error[y0:y1, x0:x1], touched, np.zeros_like(touched)))[0]) if touched.size else 0
        if int(cv2.sumElems(error)[0]) - edited > 2 * n_kept:
            return None  # the planes do not match the loaded pixels: never write a wrong photo
    planes = [luma.copy()] + [np.ascontiguousarray(chroma[..., k]) for k in (0, 1)]
    if (cy, cx) != (1, 1):  # each stored chroma sample repeated over its cell
        planes[1:] = [cv2.resize(c, (cw * cx, ch * cy), interpolation=cv2.INTER_NEAREST)[:h, :w] for c in planes[1:]]
    if touched.size:
        new = cv2.split(ycc)
        cv2.copyTo(new[0], touched, planes[0][y0:y1, x0:x1])
        # a chroma cell with an edited pixel is converted from ``arr`` whole
        cells = np.zeros((-(-(y1 - y0) // cy) * cy, -(-(x1 - x0) // cx) * cx), np.uint8)
        cells[: y1 - y0, : x1 - x0] = cv2.threshold(touched, 0, 255, cv2.THRESH_BINARY)[1]
        cells = cv2.resize(cells, (cells.shape[1] // cx, cells.shape[0] // cy), interpolation=cv2.INTER_AREA)  # > 0: any
        redone = cv2.resize(cells, (cells.shape[1] * cx, cells.shape[0] * cy), interpolation=cv2.INTER_NEAREST)
        for k in (1, 2):
            cv2.copyTo(new[k], redone[: y1 - y0, : x1 - x0], planes[k][y0:y1, x0:x1])
    return Image.merge("YCbCr", [Image.fromarray(np.ascontiguousarray(c)) for c in planes])


def _grid_aligned(enc: SourceEncoding, upright_shape: tuple[int, ...]) -> bool:
    """Whether the upright image's JPEG block grid falls on the source's (so blocks keep content).

    Turning the stored image upright reverses some axes; a reversed axis whose length is not a
    whole number of MCUs shifts every block along it.
    """
    if enc.mcu is None:
        return False
    h, w = (upright_shape[0], upright_shape[1]) if enc.orientation < 5 else (upright_shape[1], upright_shape[0])
    rows_flipped, cols_flipped = _ORIENTATION_FLIPS[enc.orientation]
    return not ((rows_flipped and h % enc.mcu[1]) or (cols_flipped and w % enc.mcu[0]))


def _encode_like(arr: np.ndarray, like: LoadedImage, quality: int) -> bytes | None:
    """JPEG bytes of ``arr`` written the way ``like``'s file was (see the module docstring).

    A JPEG source gives its tables, subsampling and progressive mode (``quality`` is then
    ignored); any source gives its RGB ICC profile, its EXIF (Orientation 1, no thumbnail) and its
    resolution. None when nothing can be encoded that way (the caller writes the defaults).
    """
    enc = like.encoding
    assert enc is not None
    meta: dict[str, object] = {}
    if icc := _rgb_icc(enc.icc_profile):
        meta["icc_profile"] = icc
    if enc.exif:
        meta["exif"] = enc.exif
    if enc.dpi and all(0 < d < 65536 for d in enc.dpi):
        meta["dpi"] = enc.dpi
    rgb_img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    attempts: list[tuple[Image.Image, dict[str, object]]] = []
    if enc.format == "JPEG" and enc.mode in ("RGB", "L") and enc.qtables and _grid_aligned(enc, arr.shape[:2]):
        if enc.mode == "L" or enc.subsampling in (0, 1, 2):
            subsampling = 2 if enc.mode == "L" else int(enc.subsampling)  # type: ignore[arg-type]
            keep = {"qtables": [list(t) for t in enc.qtables], "subsampling": subsampling,
                    "progressive": enc.progressive, "optimize": True, **meta}
            if enc.mode == "RGB" and enc.adobe_transform == 0:
                keep["keep_rgb"] = True  # stored as R, G, B (Adobe transform 0): no YCbCr round trip
            try:
                planes = _planes_like(arr, like, subsampling)
            except Exception:  # the source cannot be re-read that way: the tables alone still help
                planes = None
            if planes is not None:
                attempts.append((planes, keep))
            attempts.append((rgb_img, keep))
        else:
            # A subsampling Pillow cannot write (4:2:2 turned by 90 degrees is 4:4:0, or 4:1:1):
            # 4:4:4 with the luma table for every component re-encodes the interpolated chroma
            # with the least loss for its size (benchmarks/bench_jpeg_keep.py --variants).
            attempts.append((rgb_img, {"qtables": [list(enc.qtables[0])], "subsampling": 0,
                                       "progressive": enc.progressive, "optimize": True, **meta}))
    # otherwise (not a JPEG, a CMYK one, or an orientation that flipped a partial MCU so that no
    # block keeps its content): a fresh encoding at ``quality`` loses the least.
    attempts.append((rgb_img, {"quality": int(quality), "subsampling": 0 if quality >= 90 else 2, **meta}))
    for img, kwargs in attempts:
        buf = io.BytesIO()
        try:
            img.save(buf, format="JPEG", **kwargs)
        except (OSError, ValueError, TypeError):
            continue
        return buf.getvalue()
    return None


def save_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    like: LoadedImage | None = None,
    replace: bool = True,
) -> None:
    """Write an image atomically; the format follows the suffix (.jpg/.jpeg, .png, .webp).

    ``replace=False`` never replaces an existing file: :class:`~facexpr.errors.OutputExistsError`
    is raised if ``path`` exists when the image is ready (e.g. another process wrote it).

    The data goes to a temporary file in the same folder, is fsynced, then renamed over ``path``,
    so readers see either the old file or the complete new one. JPEG has no alpha: it is dropped.

    ``like`` (the :class:`LoadedImage` the pixels were edited from) matters for JPEG output only:
    a JPEG source's quantisation tables, chroma subsampling and progressive mode are reused
    (``quality`` is then ignored), pixels equal to ``like.rgb`` are encoded from the source's own
    decoded planes so they decode as before, and the source's ICC profile, EXIF (Orientation 1, no
    thumbnail) and resolution are kept. PNG and WebP output ignore ``like``.
    """
    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise OutputError(f"{p}: unsupported output format {p.suffix!r}; use .jpg, .png or .webp")
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"save_image expects HxWx3 RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = _to_uint8(arr)
    if arr.shape[2] == 4:
        arr, alpha = arr[..., :3], arr[..., 3] if alpha is None else alpha
    if alpha is not None and fmt != "JPEG":
        a = np.asarray(alpha)
        if a.shape != arr.shape[:2]:
            raise ValueError(f"alpha shape {a.shape} does not match image {arr.shape[:2]}")
        img = Image.fromarray(np.dstack([arr, _to_uint8(a)]), "RGBA")
    else:
        img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    kwargs: dict[str, object] = {}
    data: bytes | None = None
    if fmt == "JPEG":
        kwargs = {"quality": int(quality), "subsampling": 0 if quality >= 90 else 2}
        if like is not None and like.encoding is not None:
            data = _encode_like(np.ascontiguousarray(arr), like, quality)
    elif fmt == "WEBP":
        kwargs = {"quality": int(quality)}
    try:
        with atomic_open(p, "wb", replace=replace) as fh:
            if data is not None:
                fh.write(data)
            else:
                img.save(fh, format=fmt, **kwargs)
    except FileExistsError as exc:
        raise OutputExistsError(f"{p}: already exists (written by another run meanwhile?); it was not "
                                "replaced; use --force to overwrite") from exc
    except OSError as exc:
        raise OutputError(
            f"{p}: cannot write the image ({exc.strerror or exc}); check that the folder exists, "
            "is writable and the disk has space"
        ) from exc
    except Exception as exc:  # the encoder refused the data: still never leave a partial file
        raise OutputError(f"{p}: cannot encode the image as {fmt} ({exc})") from exc
