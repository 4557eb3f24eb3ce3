"""A mouth interior drawn at the photo's own resolution: teeth with edges, cavity, tongue.

Why drawn and not generated: the inside of an opened mouth has no pixels behind it in the photo,
and a network that paints it on a small crop is magnified several times on a large face (a 64 px
crop on a 1024 px portrait): a soft pale band with no single teeth. What makes an open mouth read
as one is simple, well-known anatomy, so it is drawn from the target's inner-lip contour directly
in image pixels, where every edge is as sharp as the photo's:

* **upper teeth** hang from the upper lip (whole crowns when the lip is raised or pulled into a
  smile, only their edges under a relaxed lip): incisors, laterals, canines and premolars on a dental
  arch seen in perspective (each tooth narrower and darker toward the corners), separated by thin
  dark gaps, with rounded, slightly translucent biting edges; the upper lip casts a shadow on them;
* **cavity** -- dark, warm, darkest in the throat; a **tongue** lies at the bottom of a tall opening;
* lighting follows the skin around the mouth (a mouth in a dark photo is dark), the teeth take the
  colour of the photo's own teeth when the photo shows some, and the photo's grain is added.

All in numpy/OpenCV, so the data and pipeline layers can use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.face.mouth import LOWER_INNER_LIP, UPPER_INNER_LIP, inner_lip_polygon
from facexpr.face.warp import OUTER_LIP

#: Teeth colour when the photo shows none (a natural, slightly warm off-white), RGB 0..255.
DEFAULT_TEETH = np.array([236.0, 228.0, 212.0], np.float32)
#: Cavity and tongue colours before lighting, RGB 0..255.
CAVITY = np.array([58.0, 22.0, 24.0], np.float32)
TONGUE = np.array([172.0, 82.0, 84.0], np.float32)
#: Angular extent (degrees from the front) of each upper tooth on the dental arch: central and
#: lateral incisors, canine, two premolars, a molar.
TOOTH_ANGLES: tuple[float, ...] = (0.0, 17.0, 31.0, 43.0, 54.0, 64.0, 74.0)


@dataclass
class MouthLook:
    """Colours the drawing takes from the photo: teeth RGB, the light level around the mouth
    (1 = a well-lit face), the photo's grain (std of high-pass luma); and how much of the upper
    teeth the upper lip uncovers (0 = only their biting edges, as in a dropped jaw; 1 = whole
    crowns, as in a broad smile or a raised upper lip)."""

    teeth: NDArray[np.float32]
    light: float
    grain: float
    show: float = 1.0


def photo_teeth_colour(image: NDArray[np.uint8], landmarks: NDArray) -> NDArray[np.float32] | None:
    """The median colour of the teeth the photo shows between its lips, or None (closed mouth)."""
    poly = inner_lip_polygon(landmarks)
    x0, y0 = np.floor(poly.min(0)).astype(int)
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 1
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 4 or y1 - y0 < 3:
        return None
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(m, [np.round(poly - (x0, y0)).astype(np.int32)], 1)
    m = cv2.erode(m, np.ones((3, 3), np.uint8))
    px = image[y0:y1, x0:x1, :3][m > 0].astype(np.float32)
    if len(px) < 12:
        return None
    luma = px @ np.array([0.299, 0.587, 0.114], np.float32)
    sat = (px.max(1) - px.min(1)) / np.maximum(px.max(1), 1.0)
    teeth = (luma > np.percentile(luma, 60)) & (sat < 0.3) & (luma > 110)
    if teeth.sum() < 0.15 * len(px) or teeth.sum() < 8:
        return None  # a glimpse between the lips, or lips and cavity only: no colour to trust
    return np.median(px[teeth], axis=0).astype(np.float32)


def mouth_look(image: NDArray[np.uint8], landmarks: NDArray, teeth: NDArray | None = None,
               show: float = 1.0) -> MouthLook:
    """Light level and grain around the mouth of ``image`` (the warped photo), the teeth colour
    and how much of the teeth shows (see :class:`MouthLook`)."""
    lm = np.asarray(landmarks, np.float64)
    outer = lm[[61, 291, 0, 17], :2]
    width = float(np.linalg.norm(lm[291, :2] - lm[61, :2]))
    pad = 0.35 * width
    h, w = image.shape[:2]
    x0, y0 = max(int(outer[:, 0].min() - pad), 0), max(int(outer[:, 1].min() - pad), 0)
    x1, y1 = min(int(outer[:, 0].max() + pad) + 1, w), min(int(outer[:, 1].max() + pad) + 1, h)
    patch = image[y0:y1, x0:x1, :3]
    if patch.size == 0:
        return MouthLook(DEFAULT_TEETH.copy(), 1.0, 1.0, show)
    grey = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY).astype(np.float32)
    light = float(np.clip(np.percentile(grey, 75) / 185.0, 0.25, 1.15))
    hf = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
    grain = float(np.clip(np.median(np.abs(hf)) * 1.25, 0.3, 6.0))
    colour = np.asarray(teeth, np.float32) if teeth is not None else DEFAULT_TEETH * min(light * 1.05, 1.0)
    return MouthLook(colour.astype(np.float32), light, grain, float(np.clip(show, 0.0, 1.0)))


def _contour_y(points: NDArray[np.float64], s: NDArray[np.float64]) -> NDArray[np.float64]:
    """The contour's height at positions ``s`` along the mouth axis (points are (s, y) pairs)."""
    order = np.argsort(points[:, 0])
    return np.interp(s, points[order, 0], points[order, 1])


def draw_mouth_interior(image: NDArray[np.uint8], landmarks: NDArray, look: MouthLook,
                        seed: int = 0) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Draw the interior inside the inner-lip polygon of ``landmarks`` (in ``image``'s pixels).

    Returns the new image and the blend weight (H, W) used (the anti-aliased polygon); pixels
    where the weight is 0 are unchanged.
    """
    lm = np.asarray(landmarks, np.float64)[:, :2]
    poly = inner_lip_polygon(lm)
    h, w = image.shape[:2]
    x0, y0 = max(int(np.floor(poly[:, 0].min())) - 2, 0), max(int(np.floor(poly[:, 1].min())) - 2, 0)
    x1, y1 = min(int(np.ceil(poly[:, 0].max())) + 3, w), min(int(np.ceil(poly[:, 1].max())) + 3, h)
    weight = np.zeros((h, w), np.float32)
    out = image.copy()
    if x1 - x0 < 3 or y1 - y0 < 2:
        return out, weight
    hard = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(hard, [np.round((poly - (x0, y0)) * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    # Never past the lips: a stretched smile can pull the inner-lip corners beyond the outer
    # ones, and the opening would run out of the mouth as thin dark wedges.
    lips = np.zeros_like(hard)
    outer = lm[list(OUTER_LIP)]
    cv2.fillPoly(lips, [np.round((outer - (x0, y0)) * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    k = max(int(round(0.02 * float(np.ptp(outer[:, 0])))), 1)
    lips = cv2.erode(lips, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    alpha = np.minimum(hard, lips).astype(np.float32) / 255.0
    if not alpha.any():
        return out, weight

    # Mouth frame: s along the corner-to-corner axis (-1 .. 1), y' down across it, in pixels.
    left, right = lm[UPPER_INNER_LIP[0]], lm[UPPER_INNER_LIP[-1]]
    centre = 0.5 * (left + right)
    axis = right - left
    width = max(float(np.linalg.norm(axis)), 1.0)
    u = axis / width
    v = np.array([-u[1], u[0]])
    if v[1] < 0:
        v = -v
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = xs - centre[0], ys - centre[1]
    s = (dx * u[0] + dy * u[1]) / (0.5 * width)
    yy = dx * v[0] + dy * v[1]

    def frame(idx: tuple[int, ...]) -> NDArray[np.float64]:
        d = lm[list(idx)] - centre
        return np.stack([(d @ u) / (0.5 * width), d @ v], axis=1)

    upper = _contour_y(frame(UPPER_INNER_LIP), s)
    lower = _contour_y(frame(LOWER_INNER_LIP), s)
    opening = np.maximum(lower - upper, 0.0)
    depth_below_lip = np.maximum(yy - upper, 0.0)
    max_open = float(opening.max())

    # -- cavity: warm dark, darkest in the throat (centre, low) -------------------------------
    throat = np.exp(-(s / 0.55) ** 2) * np.clip((yy - upper) / max(max_open, 1.0), 0.0, 1.0)
    layer = np.broadcast_to(CAVITY * look.light, alpha.shape + (3,)).astype(np.float32).copy()
    layer *= (1.0 - 0.55 * throat)[..., None].astype(np.float32)

    # -- tongue: an ellipse resting on the lower lip of a tall opening ------------------------
    if max_open > 0.25 * width:
        t_h = 0.45 * max_open
        t_top = lower - t_h * np.clip(1.0 - s ** 2, 0.0, 1.0)
        tongue = np.clip((yy - t_top) / max(0.25 * t_h, 0.7), 0.0, 1.0) * np.clip((0.9 - np.abs(s)) / 0.2, 0.0, 1.0)
        shade = 0.45 + 0.55 * np.clip((yy - t_top) / max(t_h, 1.0), 0.0, 1.0) ** 0.7
        colour = TONGUE * look.light
        layer = layer * (1 - tongue[..., None]) + (tongue * shade)[..., None] * colour[None, None, :]

    # -- upper teeth on the dental arch --------------------------------------------------------
    # The arch: x = R sin(theta) in mouth-width units; the visible teeth span the opening.
    radius = 0.56
    theta = np.degrees(np.arcsin(np.clip(s * 0.5 / radius, -1.0, 1.0)))
    a = np.abs(theta)
    edges = np.array(TOOTH_ANGLES)
    k = np.clip(np.searchsorted(edges, a) - 1, 0, len(edges) - 2)
    lo, hi = edges[k], edges[k + 1]
    within = (a - lo) / (hi - lo)  # 0..1 across the tooth
    # Tooth length: incisors longest, shrinking toward the corners; never past 60 % of the opening.
    crown = 0.06 + 0.11 * look.show  # visible length of an incisor, in mouth widths
    length = width * crown * (1.0 - 0.26 * k / (len(edges) - 2)) * np.cos(np.radians(a) * 0.6)
    length = np.minimum(length, 0.6 * np.maximum(opening, 0.0) + 0.01 * width)
    # Rounded biting edge: corners of each tooth a little shorter than its middle.
    edge_y = upper + length * (1.0 - 0.12 * (2 * within - 1) ** 2)
    # The last teeth turn away into the cheeks: the corners of an opening are dark (filled with
    # teeth to the corner, a narrow opening's ends read as fangs).
    teeth = np.clip((edge_y - yy) / 0.8 + 0.5, 0.0, 1.0) * np.clip((0.88 - np.abs(s)) / 0.2, 0.0, 1.0)
    # Gaps between teeth: thin dark lines at tooth boundaries (wider at the front, in pixels).
    gap_px = max(0.006 * width, 0.7)
    bounds = radius * np.sin(np.radians(edges)) * width  # boundary positions, pixels from the centre
    along = np.abs(s) * 0.5 * width
    dist_to_edge = np.min(np.abs(along[..., None] - bounds[None, None, :]), axis=-1)
    gap = np.exp(-(dist_to_edge / gap_px) ** 2)
    # Each tooth its own shade (a few percent), brighter toward its middle; darker round the arch.
    rng = np.random.default_rng(seed)
    own = 1.0 + 0.035 * rng.standard_normal(2 * len(edges))[k + len(edges) * (theta < 0)]
    across_tooth = 1.0 - 0.08 * (2 * within - 1) ** 2
    tone = (0.5 + 0.5 * np.cos(np.radians(a))) * (1.0 - 0.35 * gap) * own * across_tooth
    # The upper lip's shadow on the teeth, and a translucent, greyer biting edge.
    tone *= 1.0 - 0.4 * np.exp(-depth_below_lip / max(0.035 * width, 0.8))
    edge_zone = np.clip(1.0 - (edge_y - yy) / max(0.035 * width, 0.8), 0.0, 1.0)
    tooth_rgb = look.teeth[None, None, :] * tone[..., None]
    tooth_rgb = tooth_rgb * (1 - 0.25 * edge_zone[..., None]) + 0.25 * edge_zone[..., None] * (
        look.teeth.mean() * tone[..., None] * np.array([0.86, 0.9, 0.98], np.float32))
    layer = layer * (1 - teeth[..., None]) + teeth[..., None] * tooth_rgb

    # -- the rim: an opening is shadowed along the lips, deepest in the corners; the teeth, which
    # stand forward in the opening, catch light and take a third of that shadow --------------
    inside = (alpha > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    rim = np.clip(dist / max(0.05 * width, 1.0), 0.0, 1.0)
    corner = np.clip(np.abs(s) - 0.7, 0.0, 0.3) / 0.3
    shadow = 1.0 - (0.45 * (1.0 - rim) + 0.5 * corner - 0.225 * (1.0 - rim) * corner)
    shadow = 1.0 - (1.0 - shadow) * (1.0 - 0.67 * teeth)
    layer *= shadow[..., None].astype(np.float32)

    layer += rng.normal(0.0, look.grain, alpha.shape).astype(np.float32)[..., None]
    sub = out[y0:y1, x0:x1].astype(np.float32)
    blended = alpha[..., None] * layer + (1.0 - alpha[..., None]) * sub
    out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    weight[y0:y1, x0:x1] = alpha
    return out, weight
