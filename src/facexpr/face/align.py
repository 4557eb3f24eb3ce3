"""Canonical face crops and pasting edited crops back into the full-resolution photo.

The template
------------
``assets/mean_face.npy`` holds the mean frontal face: all 478 MediaPipe landmarks (x, y, z) in the
unit square of the crop. It was derived from real faces, not hand-placed:

1. MediaPipe landmarks of 716 faces (the 56 1024 px portraits, 63 neutral Taiwanese studio
   faces, 300 neutral LFW and 300 random UTKFace crops); kept the 488 near-frontal ones
   (|yaw| < 12, |pitch| < 12, |roll| < 8 degrees).
2. Generalised Procrustes analysis: each shape centred and scaled to unit RMS radius, then
   repeatedly similarity-aligned (2D Umeyama) to the running mean until it stopped moving
   (10 iterations, converged to 1e-15).
3. Made left-right symmetric (averaged with its mirror image, point pairs matched by nearest
   neighbour of the mirrored shape), eye line horizontal.
4. Placed in the unit square: landmark extent 0.72 wide, centred horizontally; top of the
   forehead point (10) at y = 0.08, so the chin (152) lands at 0.89 and an open jaw still has room.
   Eyes end up at y ~ 0.33, mouth corners at 0.66: a CelebA/GANimation-style crop with forehead,
   chin and cheeks inside.

Alignment fits a weighted least-squares similarity (Umeyama) from :data:`TEMPLATE_INDICES` to
their template positions. Only points that expressions barely move are used (eye corners, nasion,
nose ridge and base, forehead), plus the mouth corners at half weight: including the chin or the lips
would make an open mouth shrink and shift the crop, so the same person would be framed differently
in each expression. The eye corners weigh 3x: on the 56 portraits this brings the median eye-centre
error in a 128 px crop from 2.5 to 1.7 px (worst 7.5 -> 5.2 px, a face turned 29 degrees) at no cost
to the mouth position, and eyes are what people (and identity networks) notice being off.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

# Landmark index -> weight in the alignment fit.
TEMPLATE_WEIGHTS: dict[int, float] = {
    33: 3.0, 133: 3.0, 362: 3.0, 263: 3.0,  # eye corners (outer, inner; image-left eye first)
    168: 1.0, 6: 1.0, 197: 1.0,  # nasion and upper nose ridge
    98: 1.0, 327: 1.0, 2: 1.0,  # nose alae and subnasale
    10: 1.0, 151: 1.0, 9: 1.0,  # forehead: top, middle, glabella
    61: 0.5, 291: 0.5,  # mouth corners (move with smiles: half weight)
}
TEMPLATE_INDICES: tuple[int, ...] = tuple(TEMPLATE_WEIGHTS)

#: BT.601 luma weights of R, G and B (float32: ``rgb @ LUMA`` is an image's luma).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)

# MediaPipe face-oval silhouette (forehead top 10, down the right side to chin 152 and back up).
FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)

RIGHT_EYE_IDX: tuple[int, ...] = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_IDX: tuple[int, ...] = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)


@lru_cache(maxsize=1)
def mean_face() -> np.ndarray:
    """The (478, 3) float32 template in unit-square crop coordinates (read-only, cached)."""
    path = importlib.resources.files("facexpr.face") / "assets" / "mean_face.npy"
    with path.open("rb") as fh:
        arr = np.load(fh, allow_pickle=False).astype(np.float32)
    arr.setflags(write=False)
    return arr


def template_pixels(size: int) -> np.ndarray:
    """All 478 template points (x, y) in pixels of a ``size`` crop.

    Pixel coordinates follow OpenCV/numpy: the centre of pixel (row i, column j) is (x=j, y=i).
    The unit square spans the crop's outer edges, so unit coordinate t is pixel ``t * size - 0.5``;
    with this convention a 512 px crop resized to 128 px (area averaging) *is* the 128 px crop.
    """
    return mean_face()[:, :2].astype(np.float64) * size - 0.5


def template_points(size: int) -> np.ndarray:
    """Template positions (len(TEMPLATE_INDICES), 2) in pixels of a ``size`` crop."""
    return template_pixels(size)[list(TEMPLATE_INDICES)]


def template_eye_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the eye-contour centres of an aligned face land in a ``size`` crop."""
    mf = template_pixels(size)
    return mf[list(RIGHT_EYE_IDX)].mean(axis=0), mf[list(LEFT_EYE_IDX)].mean(axis=0)


def umeyama_2d(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity (rotation, uniform scale, translation) src -> dst, 2x3.

    Umeyama (1991) with a reflection guard, so a mirrored landmark set cannot yield a flip.
    """
    src = np.asarray(src, dtype=np.float64)[:, :2]
    dst = np.asarray(dst, dtype=np.float64)[:, :2]
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s = (w[:, None] * src).sum(0)
    mu_d = (w[:, None] * dst).sum(0)
    a = src - mu_s
    b = dst - mu_d
    cov = (w[:, None] * b).T @ a
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    r = u @ np.diag(d) @ vt
    var_s = (w * (a**2).sum(1)).sum()
    scale = float((s * d).sum() / var_s) if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """2x3 float64 similarity mapping image pixels to the canonical ``size`` x ``size`` crop."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] < max(TEMPLATE_INDICES) + 1 or lm.shape[1] < 2:
        raise ValueError(f"expected (478, 2|3) MediaPipe landmarks, got shape {lm.shape}")
    src = lm[list(TEMPLATE_INDICES), :2]
    weights = np.array([TEMPLATE_WEIGHTS[i] for i in TEMPLATE_INDICES])
    return umeyama_2d(src, template_points(size), weights)


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (crop -> image for an alignment matrix)."""
    m = np.asarray(matrix, dtype=np.float64)
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (N, 2|3) points; a z column is scaled by the transform's scale."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    out = p.copy()
    out[:, :2] = p[:, :2] @ m[:, :2].T + m[:, 2]
    if p.shape[1] > 2:
        out[:, 2] = p[:, 2] * matrix_scale(m)
    return out


def matrix_scale(matrix: np.ndarray) -> float:
    """Uniform scale of a similarity (sqrt of |det|): crop pixels per image pixel."""
    m = np.asarray(matrix, dtype=np.float64)
    return math.sqrt(abs(float(np.linalg.det(m[:, :2]))))


@dataclass
class AlignedFace:
    """A canonical crop, the image -> crop matrix that made it, and the landmarks in crop pixels."""

    crop: np.ndarray  # uint8 (size, size, 3)
    matrix: np.ndarray  # (2, 3) float64, image -> crop
    size: int
    landmarks: np.ndarray | None = None  # (478, 3) float32 in crop pixels

    @property
    def inverse(self) -> np.ndarray:
        return invert_matrix(self.matrix)


def _footprint(inv: np.ndarray, w: float, h: float, shape: tuple[int, ...], pad: int) -> tuple[int, int, int, int] | None:
    """Integer bbox (x0, y0, x1, y1) in an image of ``shape`` covered by the crop rectangle
    [0, w] x [0, h] mapped through ``inv`` (crop -> image), grown by ``pad``; None if outside."""
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=np.float64)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    x0 = max(int(math.floor(pts[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + pad, shape[1])
    y1 = min(int(math.ceil(pts[:, 1].max())) + pad, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def warp_crop(rgb: np.ndarray, matrix: np.ndarray, size: int, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Sample the ``size`` crop defined by ``matrix`` (image -> crop) without aliasing.

    When the crop is smaller than the face in the photo (1024 px face -> 128 px crop), a plain
    bilinear warp skips pixels and aliases (jagged hair, moire on fabric). So the needed region is
    cut out and shrunk with area averaging first (cost proportional to the region, not the photo),
    and the remaining near-1x rotation is done bilinearly.
    """
    m = np.asarray(matrix, dtype=np.float64)
    box = _shrink_box(rgb.shape, m, size)
    if box is not None:
        x0, y0, x1, y1 = box
        return _shrink_and_warp(rgb[y0:y1, x0:x1], box, m, size, border)
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)


def _shrink_box(shape: tuple[int, ...], m: np.ndarray, size: int) -> tuple[int, int, int, int] | None:
    """The region :func:`warp_crop` shrinks first (the only pixels it then reads), or None when
    it warps the whole photo directly (a crop at least 3/4 of the face's own size)."""
    if matrix_scale(m) >= 0.75:
        return None
    return _footprint(invert_matrix(m), size, size, shape, pad=4)


def _shrink_and_warp(roi: np.ndarray, box: tuple[int, int, int, int], m: np.ndarray, size: int,
                     border: int) -> np.ndarray:
    """:func:`warp_crop` from the pixels of its :func:`_shrink_box` only."""
    x0, y0, x1, y1 = box
    scale = matrix_scale(m)
    rw = max(int(round((x1 - x0) * scale)), 1)
    rh = max(int(round((y1 - y0) * scale)), 1)
    small = cv2.resize(roi, (rw, rh), interpolation=cv2.INTER_AREA)
    sx, sy = rw / (x1 - x0), rh / (y1 - y0)
    # small pixel (u, v) covers image (x0 + (u + .5)/sx - .5, ...): compose the maps.
    to_img = np.array([[1 / sx, 0, x0 + 0.5 / sx - 0.5], [0, 1 / sy, y0 + 0.5 / sy - 0.5], [0, 0, 1]])
    m2 = np.vstack([m, [0, 0, 1]]) @ to_img
    return cv2.warpAffine(small, m2[:2], (size, size), flags=cv2.INTER_LINEAR, borderMode=border)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int) -> AlignedFace:
    """Cut the canonical ``size`` x ``size`` crop of the face with these landmarks.

    Areas outside the photo are filled by repeating the edge pixels (a black border would read as
    a strong edge to a generator).
    """
    if size < 8:
        raise ValueError(f"crop size must be at least 8 px, got {size}")
    m = alignment_matrix(landmarks, size)
    crop = warp_crop(np.ascontiguousarray(rgb), m, size)
    lm = transform_points(np.asarray(landmarks, dtype=np.float64), m).astype(np.float32)
    return AlignedFace(crop=crop, matrix=m, size=size, landmarks=lm)


def deferred_crop(rgb: np.ndarray, matrix: np.ndarray, size: int) -> Callable[[], np.ndarray]:
    """``warp_crop(rgb, matrix, size)`` as it is now, computed only when called.

    Keeps a copy of just the pixels the crop reads (its shrink region; the crop itself when the
    whole photo would be warped), so ``rgb`` may change afterwards: an editor's per-face record
    of the face before and after its edit costs a region copy unless someone looks at it.
    """
    m = np.asarray(matrix, dtype=np.float64)
    rgb = np.ascontiguousarray(rgb)
    box = _shrink_box(rgb.shape, m, size)
    if box is None:
        crop = warp_crop(rgb, m, size)
        return lambda: crop
    x0, y0, x1, y1 = box
    roi = rgb[y0:y1, x0:x1].copy()
    return lambda: _shrink_and_warp(roi, box, m, size, cv2.BORDER_REPLICATE)


def face_mask(landmarks: np.ndarray | None, size: int, feather: float = 0.06) -> np.ndarray:
    """Soft face region of a ``size`` crop: float32 (size, size) in 0..1.

    The convex hull of the face landmarks (forehead to chin, cheek to cheek; the template's hull
    when ``landmarks`` is None) is shrunk by ``feather * size / 2`` and blurred with sigma
    ``feather * size / 4``, so the mask is 1 from ``feather * size`` inside the outline, falls
    smoothly to ~0 at the face outline and is exactly 0 at the crop border, where a pasted crop
    would otherwise show a seam.
    """
    pts = template_pixels(size) if landmarks is None else np.asarray(landmarks, dtype=np.float64)[:, :2]
    # All points, not just FACE_OVAL: on a turned head the nose tip can stick out of the silhouette.
    hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
    hard = np.zeros((size, size), dtype=np.uint8)
    cv2.fillConvexPoly(hard, hull, 255, lineType=cv2.LINE_AA, shift=4)
    rad = max(feather * size, 0.0)
    if rad >= 2.0:
        k = int(round(rad / 2))
        hard = cv2.erode(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
        mask = cv2.GaussianBlur(hard.astype(np.float32) / 255.0, (0, 0), sigmaX=rad / 4)
    else:
        mask = hard.astype(np.float32) / 255.0
    # Zero at the crop border (1 px) so nothing from outside the crop is ever blended in.
    mask[0, :] = mask[-1, :] = 0.0
    mask[:, 0] = mask[:, -1] = 0.0
    mask[mask < 1.0 / 512] = 0.0
    return np.clip(mask, 0.0, 1.0)


def warp_to_image(
    array: np.ndarray,
    matrix: np.ndarray,
    image_shape: tuple[int, ...],
    border_value: float = 0.0,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Warp a crop-sized float map (S, S) or (S, S, C) back into image space (H, W[, C]).

    ``matrix`` is the image -> crop alignment matrix. Only the crop's footprint is computed; the
    rest is ``border_value``. Used to bring attention masks or colour maps to full resolution.
    """
    arr = np.asarray(array)
    if arr.dtype not in (np.float32, np.float64, np.uint8):
        arr = arr.astype(np.float32)
    h, w = int(image_shape[0]), int(image_shape[1])
    out_shape = (h, w) + arr.shape[2:]
    out = np.full(out_shape, border_value, dtype=arr.dtype)
    m = np.asarray(matrix, dtype=np.float64)
    box = _footprint(invert_matrix(m), arr.shape[1], arr.shape[0], (h, w), pad=2)
    if box is None:
        return out
    x0, y0, x1, y1 = box
    m_roi = m.copy()
    m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    warped = cv2.warpAffine(
        arr, m_roi, (x1 - x0, y1 - y0),
        flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=border_value,
    )
    if warped.ndim < arr.ndim:
        warped = warped[..., None]
    out[y0:y1, x0:x1] = warped
    return out


def _mask_roi(
    mask: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...]
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Image box covered by the non-zero part of a crop-space ``mask``, and the image -> crop
    matrix shifted to that box (for ``WARP_INVERSE_MAP`` warps of just the box); None if empty."""
    ys, xs = np.nonzero(mask > 0)
    if len(xs) == 0:
        return None
    m = np.asarray(matrix, dtype=np.float64)
    inv = invert_matrix(m)
    mx0, my0, mx1, my1 = xs.min() - 1, ys.min() - 1, xs.max() + 2, ys.max() + 2
    corners = np.array([[mx0, my0], [mx1, my0], [mx0, my1], [mx1, my1]], dtype=np.float64)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    h, w = shape[:2]
    x0 = max(int(math.floor(pts[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + 2, w)
    y1 = min(int(math.ceil(pts[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    m_roi = m.copy()
    m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return (x0, y0, x1, y1), m_roi


def paste_delta(image: np.ndarray, delta: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Add an edit, given as a crop-space *difference*, to the full-resolution image.

    ``delta`` is float (S, S, 3): edited crop minus the crop it was made from; ``mask`` the
    float 0..1 map of where to apply it. Unlike :func:`paste_back`, the photo's own pixels are
    never resampled: wherever the edit is zero the result keeps the photo's full detail even
    inside the mask, and only the change itself goes through the crop -> image warp. Pixels
    where the warped mask is 0 are byte-identical to ``image``.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"paste_delta expects a uint8 HxWxC image, got {img.dtype} {img.shape}")
    out = img.copy()
    mask = np.asarray(mask, dtype=np.float32)
    roi = _mask_roi(mask, matrix, img.shape)
    if roi is None:
        return out
    (x0, y0, x1, y1), m_roi = roi
    size = (x1 - x0, y1 - y0)
    flags = cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR
    weighted = np.asarray(delta, dtype=np.float32) * mask[..., None]
    wdelta = cv2.warpAffine(weighted, m_roi, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    wmask = cv2.warpAffine(mask, m_roi, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    sel = wmask >= 1.0 / 512
    region = out[y0:y1, x0:x1]
    nc = min(region.shape[2], wdelta.shape[2])
    changed = region[..., :nc].astype(np.float32) + wdelta[..., :nc]
    region[..., :nc][sel] = np.clip(np.rint(changed[sel]), 0, 255).astype(np.uint8)
    return out


def smoothstep(t: np.ndarray) -> np.ndarray:
    """``3t^2 - 2t^3`` of ``t`` in 0..1: a fade with no kink where it starts or ends."""
    return t * t * (3.0 - 2.0 * t)


def copy_where(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """``dst[mask] = src[mask]`` in place: (H, W, C) images of one dtype, an (H, W) bool mask.

    What ``np.copyto(dst, src, where=mask[..., None])`` does, through OpenCV's masked copy: numpy
    broadcasts the mask over the channels one byte at a time (~6 ms for a 600 x 800 face box, twice
    per edit), OpenCV copies whole pixels (~0.2 ms). ``dst`` may be a view into a larger image (a
    box of the photo); when OpenCV cannot write into it directly (e.g. the RGB channels of an RGBA
    photo) the copy is made into a packed copy of it, written back.
    """
    if dst.shape != src.shape or mask.shape != dst.shape[:2] or dst.dtype != src.dtype:
        raise ValueError(f"copy_where: {dst.shape} {dst.dtype} image, {src.shape} {src.dtype} source, "
                         f"{mask.shape} mask")
    if mask.dtype != np.bool_:
        raise ValueError(f"copy_where expects a bool mask, got {mask.dtype}")
    packed = dst.strides[-1] == dst.itemsize and (dst.ndim < 3 or dst.strides[-2] == dst.itemsize * dst.shape[-1])
    target = dst if packed else dst.copy()
    result = cv2.copyTo(np.ascontiguousarray(src), np.ascontiguousarray(mask).view(np.uint8), target)
    if not np.shares_memory(result, dst):
        dst[...] = result.reshape(dst.shape)


def paste_back(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend an (edited) crop back into the full-resolution image through a soft mask.

    ``crop`` is uint8 (or float in 0..255) of the crop's size, ``matrix`` the image -> crop
    alignment matrix it was cut with, ``mask`` a float 0..1 map of the crop's size (e.g.
    :func:`face_mask`, possibly multiplied by a generator's attention).

    Only the mask's footprint is warped (a face in a 4000 px photo costs a few hundred pixels
    square, not the whole frame). Pixels where the warped mask is 0 are byte-identical to
    ``image``; a new uint8 array is returned.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"paste_back expects a uint8 HxWxC image, got {img.dtype} {img.shape}")
    out = img.copy()
    crop_f = np.asarray(crop)
    if crop_f.dtype != np.uint8:  # a float model output in 0..255
        crop_f = np.clip(crop_f, 0, 255).astype(np.float32)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != crop_f.shape[:2]:
        mask = cv2.resize(mask, (crop_f.shape[1], crop_f.shape[0]), interpolation=cv2.INTER_LINEAR)
    roi = _mask_roi(mask, matrix, img.shape)
    if roi is None:
        return out
    (x0, y0, x1, y1), m_roi = roi
    size = (x1 - x0, y1 - y0)
    flags = cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR
    warped = cv2.warpAffine(crop_f, m_roi, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    wmask = cv2.warpAffine(mask, m_roi, size, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    wmask[wmask < 1.0 / 512] = 0.0
    region = out[y0:y1, x0:x1]
    nc = region.shape[2]
    if warped.ndim == 2:
        warped = warped[..., None]
    warped = warped[..., :nc]
    if warped.shape[2] < nc:  # RGB crop into an RGBA image: keep the alpha channel
        warped = np.concatenate([warped, region[..., warped.shape[2]:]], axis=2)
    # region + a * (warped - region): exactly ``region`` where a == 0 and exactly ``warped``
    # where a == 1, computed in place to keep the footprint of a big face cheap.
    base = region.astype(np.float32)
    blend = warped.astype(np.float32)
    np.subtract(blend, base, out=blend)
    np.multiply(blend, wmask[..., None], out=blend)
    np.add(blend, base, out=blend)
    np.rint(blend, out=blend)
    np.clip(blend, 0, 255, out=blend)
    region[...] = blend.astype(np.uint8)
    return out
