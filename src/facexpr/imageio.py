"""Reading and writing photos the same way everywhere.

Every image that enters facexpr goes through :func:`load_image`, so EXIF rotation, palettes,
greyscale, 16-bit and alpha channels are handled once, and a bad file always becomes an
:class:`~facexpr.errors.ImageReadError` that names the file and says what to do. Every image that
leaves goes through :func:`save_image`, which writes atomically so an interrupted run never leaves a
half-written photo that a later run would mistake for a finished one.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facexpr.atomic import atomic_open
from facexpr.errors import ImageReadError, OutputError

DEFAULT_MAX_PIXELS = 100_000_000

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


@dataclass
class LoadedImage:
    """A decoded photo: ``rgb`` uint8 HxWx3, ``alpha`` uint8 HxW or None, and where it came from."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    path: Path

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
        size = p.stat().st_size
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
            img = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(
                f"{p}: the image data is damaged or truncated ({exc}); re-export or re-download it"
            ) from exc
        rgb, alpha = _decode(img)
    return LoadedImage(rgb=rgb, alpha=alpha, path=p)


def save_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    quality: int = 95,
) -> None:
    """Write an image atomically; the format follows the suffix (.jpg/.jpeg, .png, .webp).

    The data goes to a temporary file in the same folder, is fsynced, then renamed over ``path``,
    so readers see either the old file or the complete new one. JPEG has no alpha: it is dropped.
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
    if fmt == "JPEG":
        kwargs = {"quality": int(quality), "subsampling": 0 if quality >= 90 else 2}
    elif fmt == "WEBP":
        kwargs = {"quality": int(quality)}
    try:
        with atomic_open(p, "wb") as fh:
            img.save(fh, format=fmt, **kwargs)
    except OSError as exc:
        raise OutputError(
            f"{p}: cannot write the image ({exc.strerror or exc}); check that the folder exists, "
            "is writable and the disk has space"
        ) from exc
    except Exception as exc:  # the encoder refused the data: still never leave a partial file
        raise OutputError(f"{p}: cannot encode the image as {fmt} ({exc})") from exc
