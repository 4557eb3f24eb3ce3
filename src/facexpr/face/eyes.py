"""Opening an eye wider than in the photo: new sclera and iris under a raised upper lid.

Why: the geometry editor moves the photo's own pixels. When a target raises the upper lid
(AU5: surprise, fear, the glare of anger), the part of the eyeball the lid uncovers is not in the
photo; stretching the eye vertically keeps the iris egg-shaped and never shows white above it,
which is exactly the cue that makes wide eyes read as wide. This module paints that band at the
photo's own resolution, from the photo's own eye:

* **sclera** -- the median colour of the brightest quarter of the visible white of *this* eye
  (inside the lid contour, outside the iris; both eyes take the whiter eye's when one sampled
  lid skin or its pink corner), shaded the way a real eyeball is: a dark line under the lashes,
  a soft shadow below the lid and darker toward the corners (it is a sphere), with the photo's
  own grain;
* **iris** -- the disc given by MediaPipe's iris landmarks (centre + four boundary points) moves
  with the eye; its uncovered top takes the photo's own iris texture mirrored from below the
  centre, a darker limbal ring at its edge, and the iris's mean colour where nothing is visible.

Everything is in image pixels. The eye's content itself moves rigidly (the warp does that), so
the uncovered band is the target lid contour minus the photo's contour carried by the same rigid
shift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.face.align import LEFT_EYE_IDX, LUMA, RIGHT_EYE_IDX, smoothstep
from facexpr.face.mouth import inter_ocular

@dataclass(frozen=True)
class EyeLandmarks:
    """MediaPipe's landmarks of one eye: the one table every module reads eyes from."""

    contour: tuple[int, ...]  #: the lid contour, 16 points
    corners: tuple[int, int]  #: outer or inner corner first, as the contour's halves run
    upper: tuple[int, ...]  #: upper lid, 7 points
    lower: tuple[int, ...]  #: lower lid, 7 points
    middles: tuple[int, int]  #: the middle of the upper and of the lower lid
    iris: tuple[int, ...]  #: iris centre, then four points on its rim
    lash_band: tuple[int, ...]  #: the ring of mesh points just above ``upper`` (same order)
    lid_fold: tuple[int, ...]  #: the ring above that (the lid fold; same order)
    under_band: tuple[int, ...] = ()  #: the ring just below ``lower`` (lower lashes and liner), corner to corner
    brow_upper: tuple[int, ...] = ()  #: the brow's upper edge, outer end first
    brow_lower: tuple[int, ...] = ()  #: the brow's lower edge, column by column with ``brow_upper``


#: The image-left eye (the person's right), then the other one.
EYES: tuple[EyeLandmarks, EyeLandmarks] = (
    EyeLandmarks(RIGHT_EYE_IDX, (33, 133), (173, 157, 158, 159, 160, 161, 246), (7, 163, 144, 145, 153, 154, 155),
                 (159, 145), (468, 469, 470, 471, 472), (190, 56, 28, 27, 29, 30, 247),
                 (189, 221, 222, 223, 224, 225, 113), (130, 25, 110, 24, 23, 22, 26, 112, 243),
                 (70, 63, 105, 66, 107), (46, 53, 52, 65, 55)),
    EyeLandmarks(LEFT_EYE_IDX, (362, 263), (398, 384, 385, 386, 387, 388, 466), (249, 390, 373, 374, 380, 381, 382),
                 (386, 374), (473, 474, 475, 476, 477), (414, 286, 258, 257, 259, 260, 467),
                 (413, 441, 442, 443, 444, 445, 342), (359, 255, 339, 254, 253, 252, 256, 341, 463),
                 (300, 293, 334, 296, 336), (276, 283, 282, 295, 285)),
)

def eye_axes(landmarks: NDArray, eye: EyeLandmarks) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unit vectors of ``eye`` in the landmarks' image plane: along it (corner to corner, in the
    order of ``eye.corners``) and up across it (toward smaller y: from the lower lid to the upper)."""
    lm = np.asarray(landmarks, np.float64)
    a, b = eye.corners
    axis = lm[b, :2] - lm[a, :2]
    length = max(float(np.linalg.norm(axis)), 1e-9)
    up = np.array([axis[1], -axis[0]]) / length
    if up[1] > 0:
        up = -up
    return axis / length, up


#: An eye whose opening is below this fraction of its width is not opened wider with paint: a
#: closed, squinting or hooded eye shows too little white and iris to learn their colours from
#: (it is stretched instead, like any eye on an older model).
MIN_OPEN = 0.24
#: Nor is one in shadow, where a painted white would look grey: its white darker than this
#: (luma 0..255) *and* than MIN_SCLERA_SHARE of the skin under the eyes. The share lets a
#: dimly lit photo paint its eyes (whites of luma 128 under skin of 163-175: 0.73-0.79 of it)
#: and still refuses an eye the brow or the nose shades (0.55-0.62 of its skin on the shared
#: portraits; every eye's white there has a median of 1.01 of it).
MIN_SCLERA_LUMA = 130.0
MIN_SCLERA_SHARE = 0.7


@dataclass
class EyeColours:
    """What one eye of the photo looks like: sclera and iris colour (RGB float), the iris disc
    (centre x, y and radius in image pixels), and the grain level (std of high-pass luma)."""

    sclera: NDArray[np.float32]
    iris: NDArray[np.float32]
    iris_centre: NDArray[np.float64]
    iris_radius: float
    grain: float


def contour(points: NDArray, idx: tuple[int, ...]) -> NDArray[np.float64]:
    """The points ``idx`` of ``points`` (x, y) ordered by angle around their centre: a simple
    polygon for convex-ish contours such as an eye's."""
    poly = np.asarray(points, np.float64)[list(idx), :2]
    centre = poly.mean(0)
    return poly[np.argsort(np.arctan2(poly[:, 1] - centre[1], poly[:, 0] - centre[0]))]


def smooth_contour(poly: NDArray[np.float64], per_segment: int = 6) -> NDArray[np.float64]:
    """A closed eye contour (:func:`contour`) as a smooth curve through its points: as a polygon of
    16 landmarks, a lid raised on a 1024 px face had straight sides and corners."""
    from facexpr.face.mouth_interior import smooth_curve

    p = np.asarray(poly, np.float64)
    if len(p) < 4:
        return p.copy()
    curve = smooth_curve(np.concatenate([p[-1:], p, p[:2]]), per_segment)
    return curve[per_segment:len(curve) - per_segment]


def _fill(poly: NDArray[np.float64], shape: tuple[int, int], origin: NDArray) -> NDArray[np.float32]:
    """Anti-aliased polygon mask (0..1) of ``poly`` (image pixels) on a box at ``origin``."""
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round((poly - origin) * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return m.astype(np.float32) / 255.0


def eye_opening(landmarks: NDArray, eye: int) -> float:
    """Lid gap over eye width for eye 0 or 1 (about 0.3 for an open eye)."""
    e = EYES[eye]
    corners, lids = e.corners, e.middles
    lm = np.asarray(landmarks, np.float64)
    width = float(np.linalg.norm(lm[corners[1], :2] - lm[corners[0], :2]))
    return float(np.linalg.norm(lm[lids[0], :2] - lm[lids[1], :2])) / max(width, 1e-9)


@dataclass
class _EyeRegion:
    """The pixels of one eye where its colours are sampled (box at ``x0``, ``y0``)."""

    x0: int
    y0: int
    box: NDArray[np.float32]  #: RGB
    luma: NDArray[np.float32]
    white: NDArray[np.bool_]  #: inside the lids, away from their margins, outside the iris
    iris: NDArray[np.bool_]  #: the iris's ring: not the pupil, not the rim
    centre: NDArray[np.float64]
    radius: float




def _eye_region(image: NDArray[np.uint8], lm: NDArray[np.float64], eye: int) -> _EyeRegion | None:
    """Where eye ``eye`` is sampled; None when it is closed or too small (under ~6 px tall)."""
    idx, iris_idx = EYES[eye].contour, EYES[eye].iris
    if lm.shape[0] <= max(iris_idx) or eye_opening(lm, eye) < MIN_OPEN:
        return None
    poly = contour(lm, idx)
    x0, y0 = np.floor(poly.min(0)).astype(int) - 2
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 3
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if y1 - y0 < 6 or x1 - x0 < 12:
        return None
    inside = _fill(poly, (y1 - y0, x1 - x0), np.array([x0, y0], np.float64)) > 0.99
    # Keep away from the lashes and the lid margins above and below (about 0.12 of the box's
    # height each), vertically only: shrunk on all sides, an eye 10-15 px tall, as in a 256 px
    # photo, kept a few pixels of white beside the iris, too few to sample.
    k = max(int(round(0.12 * (y1 - y0))), 1)
    inside = cv2.erode(inside.astype(np.uint8), np.ones((2 * k + 1, 1), np.uint8)) > 0
    centre = lm[iris_idx[0], :2]
    radius = float(np.mean(np.linalg.norm(lm[list(iris_idx[1:]), :2] - centre, axis=1)))
    ys, xs = np.mgrid[y0:y1, x0:x1]
    dist = np.hypot(xs - centre[0], ys - centre[1])
    box = image[y0:y1, x0:x1, :3].astype(np.float32)
    return _EyeRegion(int(x0), int(y0), box, box @ LUMA, inside & (dist > 1.15 * radius),
                      inside & (dist < 0.85 * radius) & (dist > 0.35 * radius), centre, radius)


#: Fewest pixels of white (and of iris) an eye must show to have its colours sampled.
MIN_WHITE_PIXELS = 6
MIN_IRIS_PIXELS = 4


def _too_coloured(colour: NDArray[np.float32]) -> bool:
    """Whether a sampled white is too saturated to be the white of an eye (hair, a hand, skin)."""
    return _saturation(colour) > 0.45


#: The white of an eye is sampled from its brightest pixels, above this percentile of its luma
#: (shadowed corners, the lids' shadow and the pink inner corner are darker).
WHITE_PERCENTILE = 75


def _bright_white(region: _EyeRegion) -> NDArray[np.float32]:
    """The median colour of the brightest quarter of an eye's white."""
    white = region.white
    bright = white & (region.luma >= np.percentile(region.luma[white], WHITE_PERCENTILE))
    return np.median(region.box[bright], axis=0).astype(np.float32)


def _saturation(colour: NDArray[np.float32]) -> float:
    return float(colour.max() - colour.min()) / max(float(colour.max()), 1.0)


#: The upper lid's shadow on the painted eyeball, as shares of the white's light taken: a broad
#: soft one (gone a third of the eye's height below the lid) and the lash line's narrow dark one
#: at the margin. (0.3 and 0.25 greyed the whole band and left the lid's edge soft.)
LID_SHADE = (0.15, 0.6)
#: How far below the photo's upper lid (carried with the eye) the painted band goes, in eye
#: heights: fully over the first value (the photo's lash line and liner sit there, inside its
#: contour, and stay where they were in an eye opened wider), then fading out over the second.
#: Fading from the lid on (0, 0.15) left them half covered, a ghost of the old lid across the
#: white: the luma fell 0.25 of the painted white's under it (median of 184 painted eyes of the
#: shared portraits); now 0.12.
LASH_COVER = (0.08, 0.1)
#: Share of the eye's half width, at each corner, over which the painted band fades out.
END_FADE = 0.3
#: Photo pixels within this RGB distance of the iris's mean colour count as iris when its texture is
#: turned into an uncovered top (fading out at twice the distance).
IRIS_LIKE = 45.0
#: Iris pixels brighter than this many times the iris's median luma are taken for a catchlight
#: (by degrees, fully from 0.25 times more) and not turned into the uncovered top.
CATCHLIGHT = 1.6

#: An eye whose sampled white is this much more saturated than the other eye's takes the other's.
WHITER_BY = 0.08


def same_white(colours: tuple[EyeColours, EyeColours]) -> tuple[EyeColours, EyeColours]:
    """Both eyes of a face have the same white: an eye whose sampled white is clearly more
    coloured than the other's (``WHITER_BY``: lid skin or the pink inner corner, sampled between
    the lids of a squint) takes the other's white and grain, keeping its own iris."""
    a, b = colours
    sa, sb = _saturation(a.sclera), _saturation(b.sclera)
    if sa > sb + WHITER_BY:
        return EyeColours(b.sclera.copy(), a.iris, a.iris_centre, a.iris_radius, b.grain), b
    if sb > sa + WHITER_BY:
        return a, EyeColours(a.sclera.copy(), b.iris, b.iris_centre, b.iris_radius, a.grain)
    return a, b


def eye_colours(image: NDArray[np.uint8], landmarks: NDArray, eye: int) -> EyeColours | None:
    """Sample the sclera and iris of eye ``eye`` (0 or 1) in ``image``; None when it is closed,
    too small (under ~6 px tall) or shows no white."""
    lm = np.asarray(landmarks, np.float64)
    region = _eye_region(image, lm, eye)
    if region is None or region.white.sum() < MIN_WHITE_PIXELS or region.iris.sum() < MIN_IRIS_PIXELS:
        return None
    sclera = _bright_white(region)
    iris_colour = np.median(region.box[region.iris], axis=0)
    # Is that really the white of an eye? Hair or a hand over the eye, or a photo too dark to
    # tell, shows no pale, unsaturated part clearly brighter than the iris: leave the eye alone.
    white = float(sclera @ LUMA)
    if _too_coloured(sclera) or white < 1.2 * float(iris_colour @ LUMA):
        return None
    if white < MIN_SCLERA_LUMA and white < MIN_SCLERA_SHARE * float(_skin_colour(image, lm, eye) @ LUMA):
        return None
    if not _lid_is_skin(image, lm, eye):
        return None
    h, w = region.box.shape[:2]
    grey = cv2.cvtColor(image[region.y0:region.y0 + h, region.x0:region.x0 + w, :3], cv2.COLOR_RGB2GRAY).astype(np.float32)
    hf = grey - cv2.GaussianBlur(grey, (0, 0), 1.0)
    grain = float(np.std(hf[region.white])) if region.white.sum() > 10 else 1.0
    return EyeColours(sclera, iris_colour.astype(np.float32), region.centre, region.radius, min(grain, 6.0))


#: An eye borrowing the other's white must show a few pixels of its own at least this bright
#: (relative to the borrowed white): a shadowed eye is not painted with the lit one's white.
BORROW_BRIGHTNESS = 0.8


def borrowed_colours(image: NDArray[np.uint8], landmarks: NDArray, eye: int, other: EyeColours) -> EyeColours | None:
    """Colours for eye ``eye`` (0 or 1) that shows too little white to sample (1 to
    ``MIN_WHITE_PIXELS - 1`` pixels), from the person's other eye (``other``, what
    :func:`eye_colours` found there), with this eye's own iris disc and colour.

    A narrow eye can show only a few pixels of white beside its iris (in a 256 px photo), while
    the other eye shows enough; both eyes of a face have the same white. None when this eye is
    closed or too small, shows no white at all or enough to have been sampled (then it was
    refused for a reason: shadowed, not white), when those few pixels are darker than
    ``BORROW_BRIGHTNESS`` of the borrowed white or unsaturated-white they are not, when its lid
    does not look like skin, or when its iris is not clearly darker than the borrowed white.
    """
    lm = np.asarray(landmarks, np.float64)
    region = _eye_region(image, lm, eye)
    if region is None or not 0 < region.white.sum() < MIN_WHITE_PIXELS or region.iris.sum() < MIN_IRIS_PIXELS:
        return None
    own = _bright_white(region)
    borrowed = float(other.sclera @ LUMA)
    if float(own @ LUMA) < BORROW_BRIGHTNESS * borrowed or _too_coloured(own):
        return None
    iris_colour = np.median(region.box[region.iris], axis=0).astype(np.float32)
    if borrowed < 1.2 * float(iris_colour @ LUMA) or not _lid_is_skin(image, lm, eye):
        return None
    return EyeColours(other.sclera.copy(), iris_colour, region.centre, region.radius, other.grain)


#: Skin a visible upper lid should look like: the nose bridge and the cheeks under both eyes
#: (a median over them, so hair over one side of the face does not count as skin).
_SKIN_POINTS: tuple[int, ...] = (6, 197, 195, 117, 118, 119, 101, 346, 347, 348, 330)


def _patch_colour(image: NDArray[np.uint8], points: NDArray[np.float64], radius: int) -> NDArray[np.float64]:
    h, w = image.shape[:2]
    out = []
    for x, y in np.round(points).astype(int):
        x0, y0 = min(max(x - radius, 0), w - 1), min(max(y - radius, 0), h - 1)
        out.append(image[y0:min(y + radius + 1, h), x0:min(x + radius + 1, w), :3].reshape(-1, 3).mean(0))
    return np.median(np.array(out, np.float64), axis=0)


#: A lid that does not pass for the skin under the eye may still be painted over when it is this
#: bright at least (share of that skin's brightness) and this close in chromaticity, and the
#: forehead above the brow passes for skin (``SKIN_LIKE``). Eyeshadow, liner and the crease's
#: shadow measure 0.2-0.5 and 0.03-0.13 on the shared portraits (a dark, coloured shadow up to
#: 0.132); a lid under bangs or a lock of hair measures the same (0.05-0.10, under red hair 0.33),
#: and only the forehead tells them apart.
MADE_UP_LID = (0.2, 0.15)
#: Brightness share (at least) and chromaticity distance (below) of a patch that passes for the
#: skin under the eyes.
SKIN_LIKE = (0.45, 0.05)
#: The forehead is sampled this many brow thicknesses above the brow's upper edge.
ABOVE_BROW = 1.2
#: The forehead passes for skin when it is as bright as ``SKIN_LIKE`` asks and its chromaticity
#: is within this distance of the skin under the eyes: a tanned or bronzed forehead beside
#: highlighted cheeks measures up to 0.096 on the shared portraits; what tells hair from it is
#: brightness (0.15-0.44 of the skin's under the locks that reach a lid there, 0.54 and up on
#: the foreheads).
FOREHEAD_CHROMA = 0.1


def _patch_radius(landmarks: NDArray[np.float64], eye: int) -> int:
    """Half the side of the patches the skin is sampled with: 0.04 of eye ``eye``'s width."""
    a, b = EYES[eye].corners
    return max(int(round(0.04 * float(np.linalg.norm(landmarks[b, :2] - landmarks[a, :2])))), 1)


def _skin_colour(image: NDArray[np.uint8], landmarks: NDArray[np.float64], eye: int) -> NDArray[np.float64]:
    """The colour of the skin under the eyes and on the nose bridge (:data:`_SKIN_POINTS`)."""
    lm = np.asarray(landmarks, np.float64)
    return _patch_colour(image, lm[list(_SKIN_POINTS), :2], _patch_radius(lm, eye))


def _skin_likeness(image: NDArray[np.uint8], landmarks: NDArray[np.float64],
                   eye: int) -> Callable[[NDArray[np.float64]], tuple[float, float]]:
    """A function giving the (brightness share, chromaticity distance) of the patches at some
    points against the skin under the eyes (:func:`_skin_colour`), patches 0.04 of eye ``eye``'s
    width across: what :func:`_lid_is_skin` measures its lid and forehead with."""
    lm = np.asarray(landmarks, np.float64)
    r = _patch_radius(lm, eye)
    skin = _skin_colour(image, lm, eye)
    lb = float(skin.sum())

    def likeness(points: NDArray[np.float64]) -> tuple[float, float]:
        a = _patch_colour(image, points, r)
        la = float(a.sum())
        return la / max(lb, 1.0), float(np.abs(a / max(la, 1.0) - skin / max(lb, 1.0)).max())

    return likeness


def _lid_is_skin(image: NDArray[np.uint8], landmarks: NDArray[np.float64], eye: int) -> bool:
    """Whether the upper lid is the face's own skin (made up or not), not hair or a hand over it.

    A raised lid carries whatever lies on it; painting an eyeball under a lock of hair would draw
    a white eye over the hair. A lid that looks like the skin under the eyes (chromaticity and
    brightness, loosely) is skin. A darker or more coloured one is eyeshadow, liner or a deep
    crease's shadow, or hair, and colour alone cannot tell them apart (a lock of dark hair
    measures 0.2-0.35 of the skin's brightness, like a made-up lid). Where they differ is above
    the brow: makeup stops at the brow, while hair that reaches the lid comes down over the
    forehead (or in from the temple, which the brow's outer end samples) -- so such a lid counts
    as skin only when the forehead over this eye does.
    """
    e = EYES[eye]
    lm = np.asarray(landmarks, np.float64)
    likeness = _skin_likeness(image, lm, eye)
    bright, chroma = likeness(0.5 * (lm[list(e.lash_band), :2] + lm[list(e.lid_fold), :2]))
    if bright >= SKIN_LIKE[0] and chroma < SKIN_LIKE[1]:
        return True
    if bright < MADE_UP_LID[0] or chroma >= MADE_UP_LID[1]:
        return False
    upper, lower = lm[list(e.brow_upper), :2], lm[list(e.brow_lower), :2]
    return _passes_for_forehead(likeness(upper + ABOVE_BROW * (upper - lower)))


def _passes_for_forehead(likeness: tuple[float, float]) -> bool:
    """Whether a patch's :func:`_skin_likeness` (brightness share, chromaticity distance) passes
    for forehead skin: the test a made-up lid's forehead and the hair over a brow share."""
    bright, chroma = likeness
    return bright >= SKIN_LIKE[0] and chroma < FOREHEAD_CHROMA


#: Each brow column is looked at from these heights above its upper edge (shares of the eye
#: distance, up the face): a visible brow has forehead skin above it, a brow under bangs has
#: hair all the way up. (The landmarker puts the brow's upper edge anywhere in the brow's hair,
#: so one patch at a fixed height above it may still be on the brow.)
ABOVE_BROW_STRIP = (0.1, 0.15, 0.2, 0.25, 0.3)
#: Hair hangs over a brow when its fourth column from the outer end has at least this many hair
#: patches up its strip: on the 56 shared portraits 13 faces' brows do (bangs, a fringe or a
#: lock swept across), and none of the 24 others whose brows have hair up the strip of their
#: outer two columns (a hairline or a lock at the temple beside a brow's outer end).
COVERED_COLUMN = (3, 2)
#: ... and the brow is under that hair when the patch this far under its middle (a share of the
#: eye distance) is hair too: bangs come down past the brow, while a fringe that ends above a
#: brow leaves lid skin under it (9 of those 13 faces, 12 brows; 058225, 067791, 086986 and
#: 153793 show their brows under a fringe or lock, which then move, hair and all).
BELOW_BROW = 0.02


@dataclass(frozen=True)
class BrowsUnderHair:
    """What hair hanging over the brows holds (:func:`hair_over_brows`), per mesh point (468)."""

    still: NDArray[np.bool_]  #: points that stay where they are: a hidden brow and the forehead above it
    unpulled: NDArray[np.float64]  #: 0..1: how far the rest of the upper face moves without the brows' pull


def hair_over_brows(image: NDArray[np.uint8], landmarks: NDArray) -> BrowsUnderHair | None:
    """What hair hanging over a brow (bangs, a lock swept across the forehead) holds; None when
    neither brow is under hair.

    Hair over the forehead does not follow the brows: they move under it. Warped with them,
    bangs bent up into a tent over a sad face's raised inner brows, rose with a surprise and came
    down toward the lashes in anger. A brow is under hair by :data:`COVERED_COLUMN` and
    :data:`BELOW_BROW` (a patch is hair when it does not pass for skin by :func:`_lid_is_skin`'s
    forehead test; up the strip :data:`ABOVE_BROW_STRIP`). On its side the brow and the forehead
    above it keep still (held only where its columns are hair, a brow's visible part, or the
    skin between locks, bulged up into the hair held above it), and the rest of the face above
    the lower lids (the lids, whose rings the rig raises with the brows, the brow's inner end,
    the nose's bridge) moves without the brows' pull: pulled, the lids dragged the bangs' edge
    along and the skin between the brows pushed a notch into it. The share fades across the
    middle of the face, between the inner eye corners, to the other side's; a brow in sight
    there moves (a brow held under a lock is not seen to stay behind the other)."""
    lm = np.asarray(landmarks, np.float64)
    pts = lm[:468, :2]
    likeness = [_skin_likeness(image, lm, k) for k in range(len(EYES))]

    def is_hair(point: NDArray[np.float64], eye: int) -> bool:
        return not _passes_for_forehead(likeness[eye](point[None]))

    up = np.mean([eye_axes(lm, e)[1] for e in EYES], axis=0)
    up /= max(float(np.linalg.norm(up)), 1e-9)
    eye_distance = inter_ocular(lm)
    column, least = COVERED_COLUMN
    covered = [sum(is_hair(lm[e.brow_upper[column], :2] + h * eye_distance * up, k) for h in ABOVE_BROW_STRIP) >= least
               and is_hair(lm[e.brow_lower[2], :2] - BELOW_BROW * eye_distance * up, k) for k, e in enumerate(EYES)]
    if not any(covered):
        return None
    along = np.array([-up[1], up[0]])
    x, y = pts @ along, pts @ up
    # Which side a point is on, 0 (EYES[0]'s) to 1, across the middle between the inner corners.
    inner = sorted(float(lm[i, :2] @ along) for i in (EYES[0].corners[1], EYES[1].corners[0]))
    side = np.clip((x - inner[0]) / max(inner[1] - inner[0], 1e-6), 0.0, 1.0)
    share = (1.0 - side) * float(covered[0]) + side * float(covered[1])
    # The forehead: above the brows' upper edge, within their span (and a tenth of it beyond).
    edge = np.concatenate([lm[list(e.brow_upper), :2] for e in EYES])
    order = np.argsort(edge @ along)
    s, height = (edge @ along)[order], (edge @ up)[order]
    reach = 0.1 * float(s[-1] - s[0])
    forehead = (y > np.interp(x, s, height)) & (x > s[0] - reach) & (x < s[-1] + reach)
    still = np.zeros(len(pts), bool)
    for k, e in enumerate(EYES):
        if covered[k]:
            still |= forehead & ((side < 0.5) if k == 0 else (side >= 0.5))
            still[list(e.brow_upper) + list(e.brow_lower)] = True
    above_lids = y > float(np.mean([lm[e.middles[1], :2] @ up for e in EYES]))
    return BrowsUnderHair(still, np.where(above_lids & ~still, share, 0.0))


def _lid_height(poly: NDArray[np.float64], cols: NDArray[np.float64]) -> NDArray[np.float64]:
    """y of the upper lid of an eye contour (a closed polygon) at columns ``cols``: the contour's
    chain from its leftmost to its rightmost point that runs higher (smaller y on average),
    walked from left to right, each point kept only when it lies right of the last one kept.

    (Taken as the points above the line between the two corners instead, a corner where the
    lower lid rises above that line interleaved both lids: the height jumped between them from one
    column to the next, and a painted white ended in a comb of vertical stripes there.)"""
    p = np.asarray(poly, np.float64)
    n = len(p)
    i, j = int(p[:, 0].argmin()), int(p[:, 0].argmax())
    one = p[[(i + k) % n for k in range((j - i) % n + 1)]]
    other = p[[(j + k) % n for k in range((i - j) % n + 1)]][::-1]  # also from left to right
    chain = one if one[:, 1].mean() <= other[:, 1].mean() else other
    keep = chain[:, 0] > np.maximum.accumulate(np.concatenate([[-np.inf], chain[:-1, 0]]))
    chain = chain[keep]
    return np.interp(cols, chain[:, 0], chain[:, 1])


def open_eye(pixels: NDArray[np.uint8], photo: NDArray[np.uint8], colours: EyeColours, source: NDArray,
             target: NDArray, shift: NDArray, eye: int, origin: tuple[int, int]) -> NDArray[np.bool_] | None:
    """Paint the eyeball the target's raised upper lid uncovers, in place.

    ``pixels`` is the warped box of the photo whose top-left corner is ``origin`` (image pixels);
    ``photo`` the unedited image and ``colours`` what :func:`eye_colours` found in it for this
    eye; ``source``/``target`` the (478, 2|3) landmarks in image pixels; ``shift`` the eye's rigid
    motion (image pixels, source -> target), i.e. where the warp put the eye's own content.
    Returns the box mask of changed pixels, or None when nothing is uncovered.
    """
    idx, corners, lids = EYES[eye].contour, EYES[eye].corners, EYES[eye].middles
    new = smooth_contour(contour(target, idx))
    old = smooth_contour(contour(source, idx)) + np.asarray(shift, np.float64)[:2]
    eye_h = float(np.linalg.norm(np.asarray(source, np.float64)[lids[0], :2] - np.asarray(source, np.float64)[lids[1], :2]))
    pad = int(np.ceil(0.3 * eye_h)) + 3
    lo = np.floor(np.minimum(new.min(0), old.min(0))).astype(int) - pad
    hi = np.ceil(np.maximum(new.max(0), old.max(0))).astype(int) + pad
    bx0, by0 = max(lo[0], origin[0]), max(lo[1], origin[1])
    bx1, by1 = min(hi[0], origin[0] + pixels.shape[1]), min(hi[1], origin[1] + pixels.shape[0])
    if bx1 - bx0 < 4 or by1 - by0 < 4:
        return None
    corner = np.array([bx0, by0], np.float64)
    shape = (by1 - by0, bx1 - bx0)
    # The uncovered band, column by column: from the target's upper lid down to the photo's own
    # upper lid (carried with the eye), plus the photo's lash line, which sits just inside its
    # contour (LASH_COVER). Shrunk where the lid hardly rose, so an unchanged lid paints nothing
    # and the band has no hard ends.
    cols = np.arange(bx0, bx1, dtype=np.float64)
    y_new = _lid_height(new, cols)[None, :]
    y_old = _lid_height(old, cols)[None, :]
    rise = y_old - y_new
    risen = np.clip(rise / max(0.15 * eye_h, 1.0), 0.0, 1.0)
    full, fade = LASH_COVER[0] * eye_h * risen, LASH_COVER[1] * eye_h * risen
    rows = np.arange(by0, by1, dtype=np.float64)[:, None]
    top = np.clip(rows - y_new + 0.5, 0.0, 1.0)
    bottom = np.clip((y_old + full + fade - rows) / np.maximum(fade, 1.0), 0.0, 1.0)
    alpha = (top * bottom * np.clip(rise / 2.0, 0.0, 1.0)).astype(np.float32)
    alpha *= _fill(new, shape, corner)  # never outside the target's eye
    ys, xs = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
    cx, cy = colours.iris_centre + np.asarray(shift, np.float64)[:2]
    tgt = np.asarray(target, np.float64)
    axis = tgt[corners[1], :2] - tgt[corners[0], :2]
    mid = tgt[list(corners), :2].mean(0)
    # Thinned out toward the eye's corners: cut off by the lid contour there, the band ended in
    # a hard edge across the white.
    half = max(0.5 * float(np.linalg.norm(axis)), 1.0)
    along = np.abs((xs - mid[0]) * axis[0] + (ys - mid[1]) * axis[1]) / (2.0 * half * half)
    alpha *= smoothstep(np.clip((1.0 - along) / END_FADE, 0.0, 1.0).astype(np.float32))
    if float(alpha.max()) < 0.05:
        return None
    # The eyeball is worked out where it is painted only: the band under the risen lid (a third
    # of the box or less). Its grain is drawn for the whole box, as ever, and cut to the band.
    painted_rows, painted_cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    band = (slice(painted_rows[0], painted_rows[-1] + 1), slice(painted_cols[0], painted_cols[-1] + 1))
    full_shape = shape
    alpha, ys, xs, y_new = alpha[band], ys[band], xs[band], y_new[:, band[1]]
    bx0, by0 = bx0 + band[1].start, by0 + band[0].start
    bx1, by1 = bx0 + alpha.shape[1], by0 + alpha.shape[0]
    shape = alpha.shape

    # -- the eyeball layer --------------------------------------------------------------------
    below = np.clip((ys - y_new) / max(eye_h, 1.0), 0.0, None)  # under the new lid, in eye heights
    width = float(np.linalg.norm(axis))
    across = np.clip(np.abs(xs - mid[0]) / max(0.5 * width, 1.0), 0.0, 1.0)
    # Lid shadow (a dark line at the lid margin, a soft shade gone a third of the eye's height
    # below it) and the sphere's darker corners.
    shade = (1.0 - LID_SHADE[0] * np.exp(-below / 0.2) - LID_SHADE[1] * np.exp(-below / 0.04)) * (1.0 - 0.2 * across ** 2)
    layer = colours.sclera[None, None, :] * shade[..., None]

    dist = np.hypot(xs - cx, ys - cy)
    r = colours.iris_radius
    in_iris = np.clip(r - dist + 0.5, 0.0, 1.0)
    if in_iris.max() > 0:
        # The iris's own texture at the same radius, turned a quarter round to its left and
        # right sides (which an open eye shows), whichever the photo has in view.
        eye_poly = contour(source, idx)
        e0 = np.floor(eye_poly.min(0)).astype(int) - 1
        e1 = np.ceil(eye_poly.max(0)).astype(int) + 2
        visible = _fill(eye_poly, (int(e1[1] - e0[1]), int(e1[0] - e0[0])), e0.astype(np.float64))
        k = max(int(round(0.12 * eye_h)), 1)
        visible = cv2.erode(visible, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
        # Only what looks like iris: between the lids of a squint the quarter turn lands on the
        # lids' pink rims and lashes, which turned into pink stripes across the iris's top.
        patch = photo[e0[1]:e1[1], e0[0]:e1[0], :3].astype(np.float32)
        if patch.shape[:2] == visible.shape:
            off = np.linalg.norm(patch - colours.iris[None, None, :], axis=2)
            visible *= np.clip(2.0 - off / IRIS_LIKE, 0.0, 1.0)
        sx, sy = colours.iris_centre
        iris_luma = float(colours.iris @ LUMA)
        dx, dy = (xs - cx).astype(np.float32), (ys - cy).astype(np.float32)
        iris = np.zeros(shape + (3,), np.float32)
        weight = np.zeros(shape, np.float32)
        for turn in (1.0, -1.0):
            src_x = (sx - turn * dy).astype(np.float32)
            src_y = (sy + turn * dx).astype(np.float32)
            seen = cv2.remap(visible, src_x - float(e0[0]), src_y - float(e0[1]), cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
            seen = np.clip((seen - 0.5) * 2.0, 0.0, 1.0)
            got = cv2.remap(photo[..., :3], src_x, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
            got = got.astype(np.float32)
            # A catchlight on the iris's side is the light's reflection, not its texture: turned
            # round, it drew a second highlight into the uncovered top.
            glint = np.clip((got @ LUMA - CATCHLIGHT * iris_luma) / (0.25 * iris_luma + 1.0), 0.0, 1.0)[..., None]
            got = glint * colours.iris[None, None, :] + (1.0 - glint) * got
            iris += seen[..., None] * got
            weight += seen
        have = np.clip(weight, 0.0, 1.0)[..., None]
        iris = have * iris / np.maximum(weight, 1e-6)[..., None] + (1.0 - have) * colours.iris[None, None, :]
        limbus = 1.0 - 0.35 * np.clip((dist - 0.75 * r) / (0.25 * r), 0.0, 1.0)
        iris *= (limbus * (1.0 - 0.3 * np.exp(-below / 0.22)))[..., None]
        layer = in_iris[..., None] * iris + (1.0 - in_iris[..., None]) * layer
    rng = np.random.default_rng(int(eye_h * 1000) + eye)
    layer += rng.normal(0.0, colours.grain, full_shape).astype(np.float32)[band + (None,)]

    sub = pixels[by0 - origin[1]:by1 - origin[1], bx0 - origin[0]:bx1 - origin[0]]
    out = alpha[..., None] * layer + (1.0 - alpha[..., None]) * sub.astype(np.float32)
    new_sub = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    changed = (new_sub != sub).any(axis=2)
    sub[...] = new_sub
    full = np.zeros(pixels.shape[:2], bool)
    full[by0 - origin[1]:by1 - origin[1], bx0 - origin[0]:bx1 - origin[0]] = changed
    return full
