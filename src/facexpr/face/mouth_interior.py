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
* **lower teeth** under and behind them when the jaw is closed (lips parted in a snarl or a grin),
  in their shadow, the two rows meeting: lips parted wider than both crowns show the lower gum
  above the lip; of a dropped jaw only the incisors' biting edges show over the lower lip;
* **cavity** -- dark, warm, darkest at the top (under the palate, behind the upper teeth) and in
  the throat; a **tongue** fills the floor of a tall opening, its back rolling away into the
  shadow, a soft highlight on it and a faint groove down its middle;
* teeth in the mouth's shade turn warmer as well as darker (the light there is what the lips and
  cavity reflect), not a cold grey;
* lighting follows the skin around the mouth (a mouth in a dark photo is dark), the teeth take the
  colour of the photo's own teeth when the photo shows some, and the photo's grain is added.

All in numpy/OpenCV, so the data and pipeline layers can use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.face.align import LUMA
from facexpr.face.mouth import LOWER_INNER_LIP, UPPER_INNER_LIP, inner_lip_polygon
from facexpr.face.warp import OUTER_LIP

#: Teeth colour when the photo shows none, RGB 0..255: the median colour balance of the teeth
#: the shared 1024 px portraits show (26 of 56; green 0.92 and blue 0.85 of red), at the
#: brightness of a well-lit white. A cooler grey-white (236, 228, 212) read as dentures next to
#: pink lips.
DEFAULT_TEETH = np.array([244.0, 225.0, 206.0], np.float32)
#: Cavity and tongue colours before lighting, RGB 0..255.
CAVITY = np.array([58.0, 22.0, 24.0], np.float32)
TONGUE = np.array([178.0, 92.0, 98.0], np.float32)
#: The gum above the lower lip of a closed jaw whose opening is taller than both rows of crowns
#: (a bared snarl), RGB 0..255 before lighting: a coral pink, lighter than the cavity's flesh.
GUM = np.array([214.0, 124.0, 124.0], np.float32)
#: The tongue shows in openings taller than this share of the mouth's width (fully from 0.15
#: more: a jaw dropped that far), up to this share of the opening's height.
TONGUE_FROM = 0.18
TONGUE_HEIGHT = 0.42
#: Angular extent (degrees from the front) of each upper tooth on the dental arch: central and
#: lateral incisors, canine, two premolars, a molar.
TOOTH_ANGLES: tuple[float, ...] = (0.0, 17.0, 31.0, 43.0, 54.0, 64.0, 74.0)
#: Visible length of each of those teeth relative to a central incisor (the canine's cusp).
TOOTH_LENGTHS = np.array([1.0, 0.88, 0.95, 0.8, 0.74, 0.7])
CANINE = 2
#: Mouths narrower than this (px, corner to corner) are drawn larger and averaged down.
SUPERSAMPLE_BELOW = 128.0
#: Crown of a lower incisor above the lip of a closed jaw, in mouth widths.
LOWER_CROWN = 0.17
#: How far a closed jaw's lower incisors reach up behind the upper ones, in mouth widths (the
#: overbite: the rows overlap, so no dark band shows between them).
OVERBITE = 0.02
#: What shows of the lower incisors over the lip of a dropped jaw: their biting edges.
LOWER_EDGES = 0.03
#: ... and only of the front teeth: whole to this far from the middle (in half mouth widths),
#: faded out over the next 0.2, about where the canines end on the lower arch.
LOWER_FRONT = 0.5
#: The lower teeth's angular extents on their (smaller) arch: narrower incisors, canine, premolars.
LOWER_TOOTH_ANGLES: tuple[float, ...] = (0.0, 12.0, 24.0, 36.0, 48.0, 60.0, 72.0)
#: The lower teeth's light at the front of the arch, before the upper teeth's and the lower lip's
#: shadows. Across the middle third of the mouth, the lower half of real openings that show both
#: rows is 0.93-1.02 as bright as the upper half (75th percentile of luma, median 0.97, seven
#: portraits with lips 0.18 mouth widths apart or more); drawn closed jaws (30 shut-lipped
#: portraits made angry) were 0.87 (0.82-0.97) with 0.92 here, a grey lower row under white
#: upper teeth.
LOWER_LIGHT = 1.0
#: How much darker a drawn tooth is at a gap between two teeth and at its sides (its convex face
#: turns from the light), upper and lower rows. Along a row a third of the way down the
#: opening, the dips between real teeth in the shared portraits' smiles are 0.13 of the teeth's
#: luma (median of 61); drawn with 0.4 and 0.1 they were 0.20 (an outline round every tooth:
#: dentures), with these 0.12.
UPPER_GAP_SHADE = 0.25
UPPER_SIDE_SHADE = 0.06
LOWER_GAP_SHADE = 0.1
LOWER_SIDE_SHADE = 0.04
#: The upper lip's shadow on the upper teeth: how much darker right under the lip, and how fast it
#: fades (1/e, in mouth widths); and the share of the opening's rim shadow the teeth take. Down the
#: middle third of real smiles' upper teeth (26 shared portraits showing them), luma is 0.79, 0.90,
#: 0.95 and 0.98 of its brightest at 0.01, 0.02, 0.03 and 0.045 mouth widths below the upper inner
#: lip (medians); drawn with these, 0.77, 0.89, 0.95 and 0.99 (30 shut-lipped portraits made
#: happy). With the earlier 0.4 over 0.035 widths and a third of the rim's shadow it was 0.57,
#: 0.69, 0.79 and 0.92: short crowns under a narrow smile stayed in the shade from end to end,
#: a grey-olive row beside bright lips.
LIP_SHADOW = (0.15, 0.01)
TEETH_IN_RIM = 0.15
#: An opening lower than ``SLIT[0]`` mouth widths is drawn as the lips' colour times ``SLIT[1]``
#: (fully where it closes), not as the cavity. Near the corners of real smiles (0.8 and 0.9 of the
#: way from the middle) the darkest pixel across the opening is 0.41 and 0.36 of the lips' median
#: luma (26 shared portraits showing their teeth); the drawn slits of shut lips made happy (lips
#: 0.026 and 0.013 mouth widths apart there, real smiles' 0.07 and 0.036) were 0.18 and 0.06,
#: black: a thin dark line ran from each end of the teeth to the corners. They are 0.25 and 0.30
#: now (with the lower lip's edge no longer darkened, :data:`LIP_EDGE_SHADE`).
SLIT = (0.06, 0.45)
#: How much darker the upper and the lower lip get right at the edge of a drawn opening (they roll
#: inward there). In real open mouths (52 Taiwanese surprised photos), the upper lip 1-2 % of the
#: mouth's width above the opening is 0.86-0.91 of its luma 4 % above, the lower lip as far below
#: it 0.94-0.96 (medians); the warped lips of the shared shut-lipped portraits made surprised come
#: out 0.84-0.90 and 0.95-0.97 with these. With 0.4 for both, the lower lip's edge was ~0.7 too:
#: a dark rim round the whole opening, and a black line along the corners of a narrow smile.
LIP_EDGE_SHADE = (0.2, 0.0)
#: Enamel by the gum is warmer (less blue, a little less green): RGB loss at the gum line.
CERVICAL_TINT = np.array([0.0, 0.025, 0.08], np.float32)
#: Teeth in the mouth's shade are lit by the light the lips and cavity reflect, which is red:
#: RGB of that light relative to the direct light, taken on in proportion to the shade.
SHADE_TINT = np.array([1.0, 0.9, 0.82], np.float32)


@dataclass
class MouthLook:
    """Colours the drawing takes from the photo: teeth RGB, the light level around the mouth
    (1 = a well-lit face), the photo's grain (std of high-pass luma); how much of the upper
    teeth the upper lip uncovers (0 = only their biting edges, as in a dropped jaw; 1 = whole
    crowns, as in a broad smile or a raised upper lip); and how closed the jaw is (``bite``)."""

    teeth: NDArray[np.float32]
    light: float
    grain: float
    show: float = 1.0
    #: 0..1: how closed the jaw is (1 = teeth together: the lower teeth show under the upper ones).
    bite: float = 0.0


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
    luma = px @ LUMA
    sat = (px.max(1) - px.min(1)) / np.maximum(px.max(1), 1.0)
    teeth = (luma > np.percentile(luma, 60)) & (sat < 0.3) & (luma > 110)
    if teeth.sum() < 0.15 * len(px) or teeth.sum() < 8:
        return None  # a glimpse between the lips, or lips and cavity only: no colour to trust
    return np.median(px[teeth], axis=0).astype(np.float32)


#: How bright drawn teeth are. Real teeth in the shared portraits (the 16 whose opening shows
#: teeth over 3000 pixels or more and whose eye whites could be sampled) are, at the 90th
#: percentile of the opening's luma, 1.18x the geometric mean of the skin around the mouth (its
#: 75th percentile) and the eye whites: within 6 % of that (std of the log ratio), against 8 %
#: for the eye whites alone (1.12x) or the skin alone (1.26x). Either light alone misleads: eye
#: whites in the shade of the lids and brows are dim (drawn from them alone, 172559's and
#: 189498's teeth came out grey beside a well-lit skin), and darker skin does not mean darker
#: teeth (039913). The drawing's own shading leaves its 90th percentile at 0.96x of its colour
#: on the shut-lipped portraits made happy or angry, so the colour is set 1.04x brighter: these
#: factors are the two products (with and without sampled eye whites).
TEETH_LIGHT = 1.23
TEETH_LIGHT_SKIN = 1.31


def mouth_look(image: NDArray[np.uint8], landmarks: NDArray, teeth: NDArray | None = None,
               show: float = 1.0, bite: float = 0.0, white: float | None = None) -> MouthLook:
    """Light level and grain around the mouth of ``image`` (the warped photo), the teeth colour,
    how much of the teeth shows and how closed the jaw is (see :class:`MouthLook`). ``white`` is
    the luma of the photo's eye whites, when they could be sampled: drawn teeth take their
    brightness from it and the skin around the mouth together (:data:`TEETH_LIGHT`), else from
    the skin alone."""
    lm = np.asarray(landmarks, np.float64)
    outer = lm[[61, 291, 0, 17], :2]
    width = float(np.linalg.norm(lm[291, :2] - lm[61, :2]))
    pad = 0.35 * width
    h, w = image.shape[:2]
    x0, y0 = max(int(outer[:, 0].min() - pad), 0), max(int(outer[:, 1].min() - pad), 0)
    x1, y1 = min(int(outer[:, 0].max() + pad) + 1, w), min(int(outer[:, 1].max() + pad) + 1, h)
    patch = image[y0:y1, x0:x1, :3]
    if patch.size == 0:
        return MouthLook(DEFAULT_TEETH.copy(), 1.0, 1.0, show, bite)
    grey = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY).astype(np.float32)
    skin = float(np.percentile(grey, 75))
    light = float(np.clip(skin / 185.0, 0.25, 1.15))
    hf = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
    grain = float(np.clip(np.median(np.abs(hf)) * 1.25, 0.3, 6.0))
    bright = TEETH_LIGHT_SKIN * skin if white is None else TEETH_LIGHT * float(np.sqrt(skin * white))
    lit = DEFAULT_TEETH * min(bright / float(DEFAULT_TEETH @ LUMA), 255.0 / float(DEFAULT_TEETH.max()))
    colour = lit if teeth is None else lit_teeth(np.asarray(teeth, np.float32), lit)
    return MouthLook(colour.astype(np.float32), light, grain, float(np.clip(show, 0.0, 1.0)), float(np.clip(bite, 0.0, 1.0)))


def lit_teeth(teeth: NDArray[np.float32], lit: NDArray[np.float32]) -> NDArray[np.float32]:
    """The photo's teeth colour as teeth in the open look: teeth glimpsed between nearly closed
    lips are in the lips' shadow and light (darker, bluer or pinker than they are). Their
    brightness is raised to at least 85 % of ``lit`` (the default teeth in this light), and a
    colour with more blue than green or red, which no enamel has, gives way to the default's
    warm white at the same brightness (fully from 8 levels more blue; neutral white stays)."""
    colour = teeth * max(1.0, 0.85 * float(lit @ LUMA) / max(float(teeth @ LUMA), 1.0))
    bluish = float(colour[2] - min(colour[0], colour[1]))  # blue above green or red, in levels
    warm = float(colour @ LUMA) / float(DEFAULT_TEETH @ LUMA) * DEFAULT_TEETH
    share = float(np.clip(bluish / 8.0, 0.0, 1.0))  # a few levels: a neutral white stays as it is
    return np.clip((1.0 - share) * colour + share * warm, 0.0, 255.0).astype(np.float32)


def smooth_curve(points: NDArray[np.float64], per_segment: int = 8) -> NDArray[np.float64]:
    """A centripetal Catmull-Rom curve through ``points`` (an open polyline), ``per_segment``
    samples per segment, both ends kept.

    The inner-lip contour is 11 landmarks a lip: drawn as a polygon, an opening on a 1024 px face
    has straight sides and corners (a hexagon of a mouth). The curve passes through every
    landmark, so the opening stays where the lips are; the centripetal form neither loops nor
    overshoots where the points bunch up toward the mouth corners.
    """
    p = np.asarray(points, np.float64)
    if len(p) < 3:
        return p.copy()
    ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    # Knot spacing: the square root of each segment's length (never zero, for repeated points).
    knots = np.concatenate([[0.0], np.cumsum(np.maximum(np.linalg.norm(np.diff(ext, axis=0), axis=1), 1e-6) ** 0.5)])
    n = len(p) - 1  # segments, all evaluated at once: (n, per_segment, 2)
    p0, p1, p2, p3 = (ext[i:i + n, None, :] for i in range(4))
    t0, t1, t2, t3 = (knots[i:i + n, None, None] for i in range(4))
    t = t1 + np.linspace(0.0, 1.0, per_segment + 1)[1:, None] * (t2 - t1)
    a1 = ((t1 - t) * p0 + (t - t0) * p1) / (t1 - t0)
    a2 = ((t2 - t) * p1 + (t - t1) * p2) / (t2 - t1)
    a3 = ((t3 - t) * p2 + (t - t2) * p3) / (t3 - t2)
    b1 = ((t2 - t) * a1 + (t - t0) * a2) / (t2 - t0)
    b2 = ((t3 - t) * a2 + (t - t1) * a3) / (t3 - t1)
    return np.concatenate([p[:1], (((t2 - t) * b1 + (t - t1) * b2) / (t2 - t1)).reshape(-1, 2)])


def _contour_y(points: NDArray[np.float64], s: NDArray[np.float64]) -> NDArray[np.float64]:
    """The contour's height at positions ``s`` along the mouth axis (points are (s, y) pairs)."""
    order = np.argsort(points[:, 0])
    return np.interp(s, points[order, 0], points[order, 1])


def draw_mouth_interior(image: NDArray[np.uint8], landmarks: NDArray, look: MouthLook,
                        seed: int = 0, held_edge: NDArray | None = None) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Draw the interior inside the inner-lip polygon of ``landmarks`` (in ``image``'s pixels).

    ``held_edge`` (N, 2), in ``image``'s pixels: the biting edge of upper teeth that stay where
    the photo shows them (a jaw that does not move; the caller puts the photo's teeth back over
    the drawing). Along it the drawn upper teeth end there, not lower, and a closed jaw's lower
    teeth rise to it: drawn longer, the upper crowns showed below the photo's own as a second,
    grey row.

    Returns the new image and the blend weight (H, W) used (the anti-aliased polygon); pixels
    where the weight is 0 are unchanged.
    """
    lm = np.asarray(landmarks, np.float64)[:, :2]
    upper_curve, lower_curve = opening_curves(lm)
    poly = _joined(upper_curve, lower_curve)
    h, w = image.shape[:2]
    x0, y0 = max(int(np.floor(poly[:, 0].min())) - 2, 0), max(int(np.floor(poly[:, 1].min())) - 2, 0)
    x1, y1 = min(int(np.ceil(poly[:, 0].max())) + 3, w), min(int(np.ceil(poly[:, 1].max())) + 3, h)
    weight = np.zeros((h, w), np.float32)
    out = image.copy()
    if x1 - x0 < 3 or y1 - y0 < 2:
        return out, weight
    mouth = float(np.linalg.norm(lm[UPPER_INNER_LIP[-1]] - lm[UPPER_INNER_LIP[0]]))
    if 0 < mouth < SUPERSAMPLE_BELOW:
        return _draw_supersampled(image, lm, look, seed, (x0, y0, x1, y1), int(np.ceil(SUPERSAMPLE_BELOW / mouth)),
                                  held_edge)
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

    def frame(curve: NDArray[np.float64]) -> NDArray[np.float64]:
        d = curve - centre
        return np.stack([(d @ u) / (0.5 * width), d @ v], axis=1)

    upper = _contour_y(frame(upper_curve), s)
    lower = _contour_y(frame(lower_curve), s)
    opening = np.maximum(lower - upper, 0.0)
    depth_below_lip = np.maximum(yy - upper, 0.0)
    max_open = float(opening.max())

    # -- cavity: warm dark, lit from the front. Darkest at the top (under the palate, behind the
    # upper teeth) and in the throat, which shows above the tongue in the middle; lighter toward
    # the floor of the mouth --------------------------------------------------------------------
    down_in = np.clip((yy - upper) / np.maximum(opening, 1.0), 0.0, 1.0)  # 0 at the upper lip, 1 at the lower
    throat = np.exp(-(s / 0.5) ** 2) * np.exp(-((down_in - 0.4) / 0.3) ** 2)
    layer = np.broadcast_to(CAVITY * look.light, alpha.shape + (3,)).astype(np.float32).copy()
    layer *= ((0.6 + 0.4 * down_in) * (1.0 - 0.5 * throat))[..., None].astype(np.float32)

    # -- tongue: it fills the floor of a tall opening (up to 0.42 of its height) ---------------
    tall = float(np.clip((max_open / width - TONGUE_FROM) / 0.15, 0.0, 1.0))
    if tall > 0:
        layer = _draw_tongue(layer, look, s, yy, lower, TONGUE_HEIGHT * max_open * tall, width)

    # -- upper teeth on the dental arch --------------------------------------------------------
    # The arch: x = R sin(theta) in mouth-width units; the visible teeth span the opening.
    edges = np.array(TOOTH_ANGLES)
    theta, k, across, dist_to_edge = _arch(s, 0.56, edges, width)
    a = np.abs(theta)
    # Tooth length: the centrals longest, the laterals a little shorter, the canines' cusps
    # nearly as long as the centrals, then shorter toward the corners; never past 60 % of the
    # opening.
    crown = 0.06 + 0.11 * look.show  # visible length of a central incisor, in mouth widths
    falloff = np.cos(np.radians(a) * 0.6)
    longest = 0.6 * np.maximum(opening, 0.0) + 0.01 * width
    length = width * crown * TOOTH_LENGTHS[k] * falloff
    length = np.minimum(length, longest)
    # Biting edge: nearly straight across a tooth, its corners rounded off, so the dark mouth
    # shows in a small notch between two teeth (the embrasure); a canine comes to a point.
    rounded = np.clip((np.abs(across) - 0.5) / 0.5, 0.0, 1.0) ** 2
    cusp = np.where(k == CANINE, 0.14 * np.abs(across), 0.0)
    edge_y = upper + length * (1.0 - 0.05 * across ** 2 - 0.22 * rounded - cusp)
    held = None
    if held_edge is not None and len(held_edge) >= 2:
        kept = frame(np.asarray(held_edge, np.float64)[:, :2])
        order = np.argsort(kept[:, 0])
        # Beyond the held teeth's ends the hold lets go along a 45-degree slope (a step there
        # cut the drawn crowns beside them into a fang).
        beyond = np.maximum(kept[order[0], 0] - s, 0.0) + np.maximum(s - kept[order[-1], 0], 0.0)
        held = np.interp(s, kept[order, 0], kept[order, 1]) + beyond * 0.5 * width
        edge_y = np.minimum(edge_y, held)
    # The last teeth turn away into the cheeks: the corners of an opening are dark (filled with
    # teeth to the corner, a narrow opening's ends read as fangs).
    teeth = np.clip((edge_y - yy) / 0.8 + 0.5, 0.0, 1.0) * np.clip((0.88 - np.abs(s)) / 0.2, 0.0, 1.0)
    # How far down the tooth: 0 at the lip, 1 at the biting edge.
    down = np.clip(depth_below_lip / np.maximum(edge_y - upper, 1.0), 0.0, 1.0)
    # Gaps between teeth: thin dark lines at tooth boundaries (wider at the front, in pixels),
    # darkest by the gum and toward the edge, faint where neighbours touch in between.
    gap_px = max(0.006 * width, 0.7)
    touching = np.exp(-((down - 0.55) / 0.22) ** 2)
    gap = np.exp(-(dist_to_edge / gap_px) ** 2) * (1.0 - 0.55 * touching)
    # Each tooth its own shade (a few percent), brighter toward its middle; darker round the arch.
    rng = np.random.default_rng(seed)
    own = 1.0 + 0.035 * rng.standard_normal(2 * len(edges))[k + len(edges) * (theta < 0)]
    across_tooth = 1.0 - UPPER_SIDE_SHADE * across ** 2
    facing = np.cos(np.radians(a))
    tone = (0.5 + 0.5 * facing) * (1.0 - UPPER_GAP_SHADE * gap) * own * across_tooth
    # The upper lip's shadow on the teeth (:data:`LIP_SHADOW`).
    tone *= 1.0 - LIP_SHADOW[0] * np.exp(-depth_below_lip / max(LIP_SHADOW[1] * width, 0.8))
    # Enamel: warmer by the gum, a thin translucent grey-blue biting edge, and a soft highlight
    # down the convex face of each front tooth (a wet surface catches the light).
    tooth_rgb = in_shade(look.teeth, tone)
    tooth_rgb = tooth_rgb * (1.0 - (1.0 - down)[..., None] * CERVICAL_TINT)
    edge_zone = np.clip(1.0 - (edge_y - yy) / max(0.02 * width, 0.8), 0.0, 1.0)
    tooth_rgb = tooth_rgb * (1 - 0.25 * edge_zone[..., None]) + 0.25 * edge_zone[..., None] * (
        look.teeth.mean() * tone[..., None] * np.array([0.86, 0.9, 0.98], np.float32))
    shine = (0.08 * facing ** 2 * np.exp(-((across + 0.15) / 0.4) ** 2)
             * np.exp(-((down - 0.45) / 0.3) ** 2) * (1.0 - gap))
    tooth_rgb = tooth_rgb + (shine * look.light * 255.0)[..., None]
    # The teeth shade the cavity just below their edges.
    below = yy - edge_y
    under = np.where(below > 0, np.exp(-below / max(0.04 * width, 1.0)), 0.0) * np.clip((0.88 - np.abs(s)) / 0.2, 0.0, 1.0)
    layer *= (1.0 - 0.35 * under)[..., None].astype(np.float32)
    # The upper row's biting edge without its teeth's rounded corners and shorter laterals: where
    # a closed jaw's lower crowns meet it (their gum margin keeps that line's smooth course).
    bite_line = upper + np.minimum(width * crown * falloff, longest)
    if held is not None:
        bite_line = np.minimum(bite_line, held)
    layer, lower_teeth = _draw_lower_teeth(layer, look, s, yy, edge_y, lower, width, seed + 1, bite_line)
    layer = layer * (1 - teeth[..., None]) + teeth[..., None] * tooth_rgb

    # -- the rim: an opening is shadowed along the lips, deepest in the corners; the teeth, which
    # stand forward in the opening, catch light and take a little of that shadow --------------
    inside = (alpha > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    rim = np.clip(dist / max(0.05 * width, 1.0), 0.0, 1.0)
    corner = np.clip(np.abs(s) - 0.7, 0.0, 0.3) / 0.3
    shadow = 1.0 - (0.45 * (1.0 - rim) + 0.5 * corner - 0.225 * (1.0 - rim) * corner)
    shadow = 1.0 - (1.0 - shadow) * (1.0 - (1.0 - TEETH_IN_RIM) * np.maximum(teeth, lower_teeth))
    layer *= shadow[..., None].astype(np.float32)

    # -- where the opening is a slit (toward the corners of a narrow smile), what shows between
    # the lips is their own inner faces in shade, not the cavity (:data:`SLIT`) ----------------
    slit = (np.clip(1.0 - opening / max(SLIT[0] * width, 1.0), 0.0, 1.0)
            * (1.0 - np.maximum(teeth, lower_teeth)))
    if slit.any():
        lips_rgb = SLIT[1] * _lips_colour(image, lm, (x0, y0, x1, y1), hard)
        layer = layer * (1.0 - slit[..., None]) + slit[..., None] * lips_rgb.astype(np.float32)

    layer += rng.normal(0.0, look.grain, alpha.shape).astype(np.float32)[..., None]
    sub = out[y0:y1, x0:x1].astype(np.float32)
    blended = alpha[..., None] * layer + (1.0 - alpha[..., None]) * sub
    out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    weight[y0:y1, x0:x1] = alpha
    return out, weight


def _lips_colour(image: NDArray[np.uint8], lm: NDArray[np.float64], box: tuple[int, int, int, int],
                 opening: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The median colour of the lips around the opening (``opening``: its mask over ``box``),
    the opening's rim (where the lips roll inward) left out."""
    x0, y0, x1, y1 = box
    lips = np.zeros(opening.shape, np.uint8)
    cv2.fillPoly(lips, [np.round(lm[list(OUTER_LIP)] - (x0, y0)).astype(np.int32)], 1)
    lips[cv2.dilate(opening, np.ones((5, 5), np.uint8)) > 0] = 0
    pixels = image[y0:y1, x0:x1, :3][lips > 0]
    if len(pixels) < 8:
        return CAVITY.copy()
    return np.median(pixels, axis=0).astype(np.float32)


def _draw_supersampled(image: NDArray[np.uint8], lm: NDArray[np.float64], look: MouthLook, seed: int,
                       box: tuple[int, int, int, int], factor: int,
                       held_edge: NDArray | None = None) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """:func:`draw_mouth_interior` for a small mouth: drawn ``factor`` times larger and
    averaged down, so gaps between teeth a fraction of a pixel wide come out faint instead of
    one-pixel lines (a grille of teeth on a 150 px face)."""
    x0, y0, x1, y1 = box
    part = image[y0:y1, x0:x1]
    big = cv2.resize(part, ((x1 - x0) * factor, (y1 - y0) * factor), interpolation=cv2.INTER_CUBIC)
    # Pixel centres: photo (x, y) sits at factor * (x - x0 + 0.5) - 0.5 in the large box.
    local = (lm - (x0, y0) + 0.5) * factor - 0.5
    bigger = MouthLook(look.teeth, look.light, look.grain * factor, look.show, look.bite)  # grain averages down by factor
    held = None if held_edge is None else (np.asarray(held_edge, np.float64)[:, :2] - (x0, y0) + 0.5) * factor - 0.5
    drawn, weight = draw_mouth_interior(big, local, bigger, seed, held)
    small = (x1 - x0, y1 - y0)
    alpha = cv2.resize(weight, small, interpolation=cv2.INTER_AREA)
    # Averaged down; pixels the drawing does not reach keep the photo's own values (not its
    # enlarged and reduced copy).
    out = image.copy()
    out[y0:y1, x0:x1] = np.where(alpha[..., None] > 0, cv2.resize(drawn, small, interpolation=cv2.INTER_AREA), part)
    full = np.zeros(image.shape[:2], np.float32)
    full[y0:y1, x0:x1] = alpha
    return out, full


def in_shade(teeth: NDArray[np.float32], tone: NDArray[np.float64]) -> NDArray[np.float32]:
    """Teeth colour ``teeth`` at light level ``tone`` (H, W): darker and warmer the deeper the
    shade (dimmed alone, a warm white turns a cold grey: the denture look)."""
    shade = np.clip(1.0 - tone, 0.0, 1.0)[..., None]
    return (teeth[None, None, :] * tone[..., None] * (1.0 - shade * (1.0 - SHADE_TINT))).astype(np.float32)


def _arch(s: NDArray[np.float64], radius: float, edges: NDArray[np.float64],
          width: float) -> tuple[NDArray[np.float64], NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """Where each position ``s`` across the mouth (-1 .. 1) falls on a dental arch of ``radius``
    mouth widths whose teeth span the angles ``edges`` (degrees from the front): its angle
    (signed), the tooth it falls in (beyond the last boundary: the last tooth), where across that
    tooth (-1 .. 1) and its distance (pixels, the mouth ``width`` given) to the nearer of that
    tooth's two boundaries."""
    theta = np.degrees(np.arcsin(np.clip(s * 0.5 / radius, -1.0, 1.0)))
    a = np.abs(theta)
    k = np.clip(np.searchsorted(edges, a) - 1, 0, len(edges) - 2)
    across = 2.0 * ((a - edges[k]) / (edges[k + 1] - edges[k])) - 1.0
    bounds = radius * np.sin(np.radians(edges)) * width  # boundary positions, pixels from the centre
    along = np.abs(s) * 0.5 * width
    return theta, k, across, np.minimum(np.abs(along - bounds[k]), np.abs(along - bounds[k + 1]))


def _draw_tongue(layer: NDArray[np.float32], look: MouthLook, s: NDArray[np.float64], yy: NDArray[np.float64],
                lower_lip: NDArray[np.float64], height: float, width: float) -> NDArray[np.float32]:
    """The tongue on the floor of the mouth, ``height`` px at its middle: a rounded back whose
    edge falls away into the cavity's shadow, a broad soft highlight on the wet dorsum, a faint
    groove down its middle, darker again by the lower lip (and the lower teeth's shadow)."""
    top = lower_lip - height * np.sqrt(np.clip(1.0 - (s / 0.85) ** 2, 0.0, 1.0))
    into = np.clip((yy - top) / max(height, 1.0), 0.0, 1.0)  # 0 at its back edge, 1 at the lip
    cover = np.clip((yy - top) / max(0.2 * height, 0.7), 0.0, 1.0) * np.clip((0.85 - np.abs(s)) / 0.2, 0.0, 1.0)
    rounded = 0.5 + 0.5 * np.clip(into / 0.3, 0.0, 1.0) ** 0.6  # the back rolls away from the light
    shade = rounded * (1.0 - 0.3 * into ** 2) * (1.0 - 0.25 * np.abs(s))
    # A shallow valley, not a line: a hundredth of the mouth wide, it read as a seam down the tongue.
    groove = np.exp(-(0.5 * width * s / max(0.03 * width, 1.5)) ** 2) * (1.0 - into)
    shade *= 1.0 - 0.08 * groove
    shine = 0.07 * np.exp(-(s / 0.3) ** 2) * np.exp(-((into - 0.3) / 0.2) ** 2)
    colour = (TONGUE * look.light)[None, None, :] * shade[..., None] + (shine * look.light * 255.0)[..., None]
    return (layer * (1 - cover[..., None]) + cover[..., None] * colour).astype(np.float32)


def _draw_lower_teeth(layer: NDArray[np.float32], look: MouthLook, s: NDArray[np.float64], yy: NDArray[np.float64],
                      upper_edges: NDArray[np.float64], lower_lip: NDArray[np.float64],
                      width: float, seed: int, bite_line: NDArray[np.float64]) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """The lower teeth, rising from the lower lip (their gums under it) behind and under the
    upper ones: narrower, on a smaller arch, in the upper teeth's shadow. ``look.bite`` is how
    much of their crowns shows above the lip (1: a closed jaw, whole crowns up to the upper
    teeth; less as the jaw drops and the lip covers them, down to their biting edges in the
    middle of the mouth, :data:`LOWER_EDGES`). ``bite_line``: the upper row's edge as a smooth
    curve, from which a closed jaw's lower crowns reach :data:`LOWER_CROWN` down to their gum.
    Returns the new layer and the teeth's cover."""
    theta, k, across, dist_to_edge = _arch(s, 0.5, np.array(LOWER_TOOTH_ANGLES), width)
    a = np.abs(theta)
    facing = np.cos(np.radians(a) * 0.6)
    length = LOWER_EDGES * width * facing
    top = np.maximum(lower_lip - length, upper_edges + max(0.004 * width, 0.5))  # a dropped jaw's edges
    crown = LOWER_CROWN * width * facing  # a whole lower crown
    gum_line = np.full_like(top, np.inf)
    if look.bite > 0:
        # A closed jaw: the lower incisors stand right behind the upper ones (the overbite), so
        # the two rows meet; an opening taller than both crowns shows the lower gum above the
        # lip, never a dark band between the rows (teeth held apart under a closed jaw: dentures).
        # A half-closed jaw's crowns sink toward the lip, the corners' first (where the arch
        # turns away).
        sink = (1.0 - np.clip((0.55 - np.abs(s)) / 0.2, look.bite, 1.0)) * crown - OVERBITE * width
        gum_line = look.bite * (bite_line + sink) + (1.0 - look.bite) * top
        top = look.bite * (upper_edges + sink) + (1.0 - look.bite) * top
        # The gum margin arches down over each crown's middle and rises, rounded, between two teeth.
        gum_line += crown * (1.0 - 0.06 * (1.0 - np.cos(np.pi * across)))
    rounded = np.clip((np.abs(across) - 0.5) / 0.5, 0.0, 1.0) ** 2
    # Rounded corners: notches between two crowns. Of a dropped jaw's row only the biting edges
    # show, a few pixels: rounded by as little as whole crowns, they ran together into one band.
    crown_top = top + (0.12 + 0.4 * (1.0 - look.bite)) * np.minimum(lower_lip - top, crown) * rounded
    # Under the lip's edge by a pixel: cut off at it, the anti-aliased edge let the cavity and
    # its rim's shadow through as a black line between the teeth and the lip.
    under_lip = lower_lip + max(0.004 * width, 1.0)
    # A closed jaw's row runs out toward the corners; a dropped jaw shows only its front teeth's
    # edges, up to the canines (a white line along the whole lower lip read as a denture's rim).
    reach = LOWER_FRONT + (0.8 - LOWER_FRONT) * look.bite
    teeth = (np.clip((yy - crown_top) / 0.8 + 0.5, 0.0, 1.0) * np.clip((under_lip - yy) / 0.8 + 0.5, 0.0, 1.0)
             * np.clip((reach - np.abs(s)) / 0.2, 0.0, 1.0) * (lower_lip - top > 1.0))
    # Gaps: dark by the gum (at the lip), fainter toward the biting edges, where neighbours touch.
    enamel_end = np.minimum(lower_lip, gum_line)
    down = np.clip((enamel_end - yy) / np.maximum(enamel_end - crown_top, 1.0), 0.0, 1.0)  # 0 at the gum, 1 at the edge
    gap = np.exp(-(dist_to_edge / max(0.005 * width, 0.7)) ** 2) * (1.0 - 0.5 * down)
    rng = np.random.default_rng(seed)
    own = 1.0 + 0.03 * rng.standard_normal(2 * len(LOWER_TOOTH_ANGLES))[k + len(LOWER_TOOTH_ANGLES) * (theta < 0)]
    lit = LOWER_LIGHT * (0.55 + 0.45 * np.cos(np.radians(a)))  # darker round the arch
    tone = lit * (1.0 - LOWER_GAP_SHADE * gap) * (1.0 - LOWER_SIDE_SHADE * across ** 2) * own
    # The upper teeth's shadow on a closed jaw's crowns, just under their biting edges; the lower
    # lip's, by the gum.
    tone *= 1.0 - 0.3 * look.bite * np.exp(-np.maximum(yy - np.maximum(top, upper_edges), 0.0) / max(0.02 * width, 0.8))
    by_lip = 1.0 - 0.25 * np.exp(-np.maximum(lower_lip - yy, 0.0) / max(0.02 * width, 0.8))
    tone *= by_lip
    colour = in_shade(look.teeth, tone) * (1.0 - (1.0 - down)[..., None] * CERVICAL_TINT)
    if look.bite > 0 and (gum_line < lower_lip).any():  # lit like the crowns above it, without their gaps and sides
        gum = np.clip((yy - gum_line) / 0.8 + 0.5, 0.0, 1.0)[..., None]
        gum_tone = lit * by_lip
        colour = colour * (1.0 - gum) + gum * (GUM * look.light)[None, None, :] * gum_tone[..., None]
    return (layer * (1 - teeth[..., None]) + teeth[..., None] * colour).astype(np.float32), teeth


def opening_curves(landmarks: NDArray) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The drawn opening's two edges as smooth curves (:func:`smooth_curve`): the upper inner lip
    from corner to corner, then the lower one back."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    return smooth_curve(lm[list(UPPER_INNER_LIP)]), smooth_curve(lm[list(LOWER_INNER_LIP)])


def opening_polygon(landmarks: NDArray) -> NDArray[np.float64]:
    """The drawn opening's outline: :func:`opening_curves` joined, each corner once."""
    return _joined(*opening_curves(landmarks))


def _joined(upper: NDArray[np.float64], lower: NDArray[np.float64]) -> NDArray[np.float64]:
    """The opening's outline from its two :func:`opening_curves`."""
    return np.concatenate([upper, lower[1:-1]])


def shade_opening_edge(image: NDArray[np.uint8], landmarks: NDArray) -> NDArray[np.bool_] | None:
    """Darken the lips toward a drawn opening, in place: lips roll inward where they part, so
    their edge turns darker instead of being cut off against the cavity. Returns the mask of
    changed pixels, or None."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    upper_curve, lower_curve = opening_curves(lm)
    poly, outer = _joined(upper_curve, lower_curve), lm[list(OUTER_LIP)]
    width = float(np.ptp(outer[:, 0]))
    reach = max(0.02 * width, 0.7)
    h, w = image.shape[:2]
    pad = int(5 * reach) + 2
    x0, y0 = max(int(np.floor(outer[:, 0].min())) - pad, 0), max(int(np.floor(outer[:, 1].min())) - pad, 0)
    x1, y1 = min(int(np.ceil(outer[:, 0].max())) + pad + 1, w), min(int(np.ceil(outer[:, 1].max())) + pad + 1, h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    opening = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(opening, [np.round((poly - (x0, y0)) * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    lips = np.zeros_like(opening)
    cv2.fillPoly(lips, [np.round((outer - (x0, y0)) * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    to_opening = cv2.distanceTransform((opening <= 127).astype(np.uint8), cv2.DIST_L2, 5)
    changed = (to_opening < 4.6 * reach) & (opening < 255) & (lips > 0)  # exp(-4.6) = 0.01
    if not changed.any():
        return None
    # Each pixel belongs to the lip on its side of the opening's middle line, in the mouth's frame
    # (along the corners' axis, and across it, downward: as :func:`draw_mouth_interior` frames it).
    axis = upper_curve[-1] - upper_curve[0]
    axis /= max(float(np.linalg.norm(axis)), 1e-9)
    down = np.array([-axis[1], axis[0]])
    if down[1] < 0:
        down = -down
    ys, xs = np.nonzero(changed)
    at = np.stack([xs + x0, ys + y0], axis=1) - upper_curve[0]
    middle = 0.0
    for curve in (upper_curve, lower_curve):
        rel = curve - upper_curve[0]
        order = np.argsort(rel @ axis)
        middle = middle + 0.5 * np.interp(at @ axis, (rel @ axis)[order], (rel @ down)[order])
    depth = np.where(at @ down < middle, np.float32(LIP_EDGE_SHADE[0]), np.float32(LIP_EDGE_SHADE[1]))
    edge = (np.exp(to_opening[changed] / np.float32(-reach)) * (255 - opening[changed]) * lips[changed]
            * depth / np.float32(255.0 ** 2))
    part = image[y0:y1, x0:x1]
    part[changed] = np.clip(part[changed] * (1.0 - edge)[:, None] + 0.5, 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = changed
    return mask
