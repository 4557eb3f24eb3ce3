"""Mouth geometry: the inner-lip polygon, how open it is, and a canonical mouth crop.

The mouth-interior network (:mod:`facexpr.models.mouth`) works on a small square crop centred on
the mouth. Everything it needs from the landmarks lives here, in numpy/OpenCV only, so the data
and pipeline layers can build the same crops and masks without importing torch.

Frame of the mouth crop (:func:`mouth_frame`):

- rotation: the eye line (outer eye corners 33 -> 263) is made horizontal, so the mouth is level
  even when the corners are not (an asymmetric smile stays asymmetric instead of being rotated
  flat, which would hide exactly the shape the network is conditioned on);
- scale: the mouth-corner distance spans ``width_fraction`` of the crop, except that the
  reference width never drops below ``min_width_ratio`` x the width a neutral mouth of this face
  would have (from the inter-ocular distance): an "O" mouth or a dropped jaw pulls the corners
  together, and scaling by them alone would blow the teeth up to twice their real size;
- centre: the middle of the bounding box of the inner lips and the mouth corners (in the level
  frame), so a dropped jaw, whose opening hangs below the corners, is centred as a whole;
- fit: if the opening still would not fit inside ``margin`` of the crop border, the crop zooms
  out until it does. The teeth are then drawn smaller than usual, which beats cutting them off.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray

#: Upper inner lip, mouth corner (78) to mouth corner (308).
UPPER_INNER_LIP: tuple[int, ...] = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
#: Lower inner lip, mouth corner (308) back to mouth corner (78).
LOWER_INNER_LIP: tuple[int, ...] = (308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78)
#: Closed inner-lip polygon in drawing order (each corner once): the boundary of the visible
#: mouth interior.
INNER_LIP: tuple[int, ...] = UPPER_INNER_LIP + LOWER_INNER_LIP[1:-1]
#: Outer mouth corners (image-left first).
MOUTH_CORNERS: tuple[int, int] = (61, 291)
#: Outer eye corners (image-left first), the level and scale reference.
OUTER_EYE_CORNERS: tuple[int, int] = (33, 263)
#: Eye corners (outer, inner of the image-left eye; inner, outer of the other).
EYE_CORNERS: tuple[int, ...] = (33, 133, 362, 263)

#: Mouth-corner distance / outer-eye-corner distance of the canonical mean face
#: (``face/assets/mean_face.npy``: 0.2707 / 0.4479).
NEUTRAL_MOUTH_RATIO = 0.6044


def _points(landmarks: NDArray[np.floating] | np.ndarray) -> NDArray[np.float64]:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] <= max(INNER_LIP + EYE_CORNERS + MOUTH_CORNERS) or lm.shape[1] < 2:
        raise ValueError(f"expected (478, 2|3) MediaPipe landmarks, got shape {lm.shape}")
    return lm[:, :2]


def meeting_line(landmarks: np.ndarray) -> NDArray[np.float64]:
    """Where the lips meet, (11, 2): the mean of the upper and lower inner-lip contours, corner to
    corner (from landmark 78 to 308)."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    return 0.5 * (lm[list(UPPER_INNER_LIP)] + lm[list(LOWER_INNER_LIP[::-1])])


def inner_lip_polygon(landmarks: np.ndarray) -> NDArray[np.float64]:
    """(K, 2) float64 inner-lip polygon (K = 20) in the landmarks' pixel coordinates."""
    return _points(landmarks)[list(INNER_LIP)].copy()


def inter_ocular(landmarks: np.ndarray) -> float:
    """Outer-eye-corner distance in pixels: the face's size, independent of its expression."""
    pts = _points(landmarks)
    return float(np.linalg.norm(pts[OUTER_EYE_CORNERS[1]] - pts[OUTER_EYE_CORNERS[0]]))


def mouth_axes(landmarks: np.ndarray) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], float]:
    """The mouth's own frame in the landmarks' pixels: origin at the outer corner 61, the unit
    axis toward the other corner (291), the unit normal toward the chin, and the mouth width."""
    lm = _points(landmarks)
    origin = lm[MOUTH_CORNERS[0]]
    axis = lm[MOUTH_CORNERS[1]] - origin
    width = max(float(np.linalg.norm(axis)), 1e-9)
    axis = axis / width
    normal = np.array([-axis[1], axis[0]])
    if normal @ (lm[17] - lm[0]) < 0:  # toward the chin (17: lower lip, 0: upper lip, middles)
        normal = -normal
    return origin, axis, normal, width


def polygon_area(points: np.ndarray) -> float:
    """Absolute area of a simple polygon (shoelace formula)."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def lip_opening(landmarks: np.ndarray) -> float:
    """Inner-lip area / inter-ocular distance squared: how open the mouth is, scale-free.

    Measured on real crops: up to ~0.03 for closed or barely parted lips (MediaPipe's inner-lip
    points seldom meet exactly; the mean face is at 0.02), ~0.04-0.08 for a smile showing teeth,
    0.1-0.25 for a dropped jaw. NaN when the landmarks are NaN (no face found).
    """
    iod = inter_ocular(landmarks)
    if not iod > 0:
        return float("nan")
    return polygon_area(inner_lip_polygon(landmarks)) / (iod * iod)


def mouth_frame(
    landmarks: np.ndarray,
    size: int = 64,
    width_fraction: float = 0.55,
    min_width_ratio: float = 0.8,
    margin: float = 0.08,
) -> NDArray[np.float64]:
    """(2, 3) float64 similarity mapping image pixels to the ``size`` x ``size`` mouth crop.

    See the module docstring for the frame's definition. The same landmarks always give the same
    matrix, and a face at twice the resolution gives the same crop (the matrix only rescales).
    """
    pts = _points(landmarks)
    if not np.isfinite(pts[list(INNER_LIP + EYE_CORNERS + MOUTH_CORNERS)]).all():
        raise ValueError("mouth_frame needs finite eye, mouth-corner and inner-lip landmarks")
    eye_vec = pts[OUTER_EYE_CORNERS[1]] - pts[OUTER_EYE_CORNERS[0]]
    iod = float(np.linalg.norm(eye_vec))
    if iod <= 0:
        raise ValueError("mouth_frame: the eye corners coincide")
    angle = math.atan2(eye_vec[1], eye_vec[0])
    c, s = math.cos(-angle), math.sin(-angle)
    rot = np.array([[c, -s], [s, c]])  # level frame: eye line along +x
    corners = pts[list(MOUTH_CORNERS)]
    ref = max(float(np.linalg.norm(corners[1] - corners[0])), min_width_ratio * NEUTRAL_MOUTH_RATIO * iod)
    scale = width_fraction * size / ref
    mouth = np.vstack([pts[list(INNER_LIP)], corners]) @ rot.T
    lo, hi = mouth.min(axis=0), mouth.max(axis=0)
    centre_level = (lo + hi) / 2
    half_extent = float(max(hi[0] - lo[0], hi[1] - lo[1])) / 2
    usable = (0.5 - margin) * size
    if half_extent * scale > usable > 0:
        scale = usable / half_extent
    a = scale * rot
    m = np.zeros((2, 3))
    m[:, :2] = a
    # the level-frame centre maps to the crop centre (pixel centres: the crop spans -0.5..size-0.5)
    m[:, 2] = (size - 1) / 2.0 - scale * centre_level
    return m


def polygon_mask(points: np.ndarray, shape: tuple[int, ...], feather_px: float = 0.0) -> NDArray[np.float32]:
    """float32 mask of ``shape[:2]``: 1 inside the polygon, fading to 0 outside over ``feather_px``.

    The polygon is grown by ``feather_px / 2`` and blurred with sigma ``feather_px / 4``, so the
    mask is ~1 (>= 0.97) on the polygon's own outline, ~0.05 at ``feather_px`` outside it and
    exactly 0 from ~1.5 ``feather_px`` outside: a fill that uses it as its blend weight covers
    the whole polygon and blends into what is around it. ``feather_px = 0`` gives the
    anti-aliased hard polygon. Only the polygon's neighbourhood is rasterised
    (:func:`polygon_mask_roi`), so a mouth in a 4000 px photo costs what a mouth costs.
    Values below 1/512 are set to exactly 0 (so "0" reliably means "leave this pixel alone").
    """
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.float32)
    roi, box = polygon_mask_roi(points, shape, feather_px)
    if box is not None:
        x0, y0, x1, y1 = box
        out[y0:y1, x0:x1] = roi
    return out


def polygon_mask_roi(
    points: np.ndarray, shape: tuple[int, ...], feather_px: float = 0.0
) -> tuple[NDArray[np.float32], tuple[int, int, int, int] | None]:
    """:func:`polygon_mask` restricted to the box it can be non-zero in: ``(mask_roi, (x0, y0,
    x1, y1))``, the box clipped to ``shape``; ``(empty, None)`` when the polygon is degenerate
    or outside the image. Lets a caller work on a large photo without full-size temporaries."""
    h, w = int(shape[0]), int(shape[1])
    p = np.asarray(points, dtype=np.float64)[:, :2]
    empty = np.zeros((0, 0), np.float32)
    if len(p) < 3 or not np.isfinite(p).all():
        return empty, None
    feather = max(float(feather_px), 0.0)
    pad = int(math.ceil(feather * 1.5)) + 2
    x0 = max(int(math.floor(p[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(p[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(p[:, 0].max())) + pad + 1, w)
    y1 = min(int(math.ceil(p[:, 1].max())) + pad + 1, h)
    if x1 <= x0 or y1 <= y0:
        return empty, None
    hard = np.zeros((y1 - y0, x1 - x0), np.uint8)
    local = np.round((p - [x0, y0]) * 16).astype(np.int32)
    cv2.fillPoly(hard, [local], 255, lineType=cv2.LINE_AA, shift=4)
    roi = hard.astype(np.float32) / 255.0
    if feather >= 1.0:
        k = int(round(feather / 2))
        if k > 0:
            roi = cv2.dilate(roi, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
        roi = cv2.GaussianBlur(roi, (0, 0), sigmaX=feather / 4, borderType=cv2.BORDER_CONSTANT)
    roi[roi < 1.0 / 512] = 0.0
    return np.clip(roi, 0.0, 1.0), (x0, y0, x1, y1)
