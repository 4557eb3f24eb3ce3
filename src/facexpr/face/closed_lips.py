"""Lips the warp has shut over an open mouth, finished so that they read as closed lips.

Closing a smiling or talking mouth (a target with the lips together, a photo with them apart)
is done by the warp: the lips are stretched over the opening until they meet
(:func:`facexpr.pipeline.geometry.close_lips`). What the warp alone leaves is a single pink band:

* **the shape of a smile's lips** -- stretched thin over the teeth, as thick at the corners as in
  the middle: shut, they stay a band with blunt ends. :func:`closed_lip_shape` lays the mean
  face's lip layout along the target's meeting line instead (tapering to a point at each corner,
  the upper lip a little over half as thick as the lower);

* **teeth and cavity remnants** -- the landmarker's inner-lip contour runs inside the visible
  teeth at the corners of a broad smile, so slivers of tooth or of dark cavity are carried into
  the lips (shut ones, and the lips beside a drawn opening). They are found in the *photo*
  (pixels next to the opening that are not lip-coloured and touch the opening: teeth are paler
  and less red than lips, the cavity far darker), carried through the warp, and filled from the
  lip around them (:func:`finish_lips`);
* **no line where the lips meet** -- a closed mouth has a thin dark seam along the meeting line,
  darkest at the corners, where a small shadow sits in the fold of the cheek. It is drawn on the
  target's meeting line at the photo's resolution (a width that follows the mouth's size) by
  darkening the luma only, so the seam keeps the lips' own hue.

Pure numpy/OpenCV on landmarks and pixels (no torch), like the rest of :mod:`facexpr.face`.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.face.align import mean_face
from facexpr.face.mouth import INNER_LIP, LOWER_INNER_LIP, UPPER_INNER_LIP, inter_ocular, meeting_line, mouth_axes
from facexpr.face.warp import OUTER_LIP, face_pose

#: Luma taken away on the seam near the corners (fraction; 0.55 of it mid-mouth) and in the
#: shadows at the lips' inner corners.
SEAM_DARKNESS = 0.4
CORNER_DARKNESS = 0.32
#: Seam width (Gaussian sigma) and corner shadow size, as fractions of the mouth width.
SEAM_WIDTH = 0.0075
CORNER_SIZE = 0.022
#: How much darker than the lips the cavity is (luma ratio) and how far between the lips' and
#: the opening's redness a pixel's redness must fall to count as tooth rather than lip.
CAVITY_LUMA = 0.55
TEETH_REDNESS = 0.5
#: How far inside the landmarks' outer lip contour (fraction of the mouth width) a pixel must lie
#: to count as tooth by its redness: the contour strays onto the skin around the lips by a pixel
#: or two, and skin is less red than lips too.
SKIN_EDGE = 0.012
#: How far (YCrCb chroma levels) and how much darker (luma ratio) a pixel may be from the teeth's
#: median colour to count as tooth (:func:`shown_teeth`).
TEETH_CHROMA = 7.0
TEETH_LUMA = 0.6


def opening_remnants(photo: NDArray[np.uint8], landmarks: NDArray) -> tuple[NDArray[np.bool_], tuple[int, int]] | None:
    """Pixels of the photo's mouth that belong to the opening (teeth, cavity, tongue) rather than to
    the lips: the inner-lip polygon, plus the pixels within the outer lips that are not
    lip-coloured and touch it (the teeth the inner contour misses at the corners of a smile).

    Returns ``(mask, (x0, y0))``, the mask over a box around the lips with its origin in the photo,
    or None when the lips are degenerate or show no opening.
    """
    lm = np.asarray(landmarks, np.float64)[:, :2]
    outer = lm[list(OUTER_LIP)]
    inner = lm[list(INNER_LIP)]
    h, w = photo.shape[:2]
    x0, y0 = max(int(np.floor(outer[:, 0].min())) - 2, 0), max(int(np.floor(outer[:, 1].min())) - 2, 0)
    x1, y1 = min(int(np.ceil(outer[:, 0].max())) + 3, w), min(int(np.ceil(outer[:, 1].max())) + 3, h)
    if x1 - x0 < 6 or y1 - y0 < 4:
        return None
    origin = np.array([x0, y0], np.float64)
    opening = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(opening, [np.round(inner - origin).astype(np.int32)], 1)
    lips = np.zeros_like(opening)
    cv2.fillPoly(lips, [np.round(outer - origin).astype(np.int32)], 1)
    band = (lips > 0) & (opening == 0)
    if opening.sum() < 4 or band.sum() < 12:
        return None
    ycc = cv2.cvtColor(np.ascontiguousarray(photo[y0:y1, x0:x1, :3]), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    luma, red = ycc[..., 0], ycc[..., 1]
    lip_luma, lip_red = float(np.median(luma[band])), float(np.median(red[band]))
    open_red = float(np.median(red[opening > 0]))
    foreign = (luma < CAVITY_LUMA * lip_luma) & (lips > 0)
    if lip_red - open_red > 4.0:  # teeth show: they are less red than the lips
        # ... and so is the skin: a pixel or two of it falls inside the landmarks' outer lip
        # contour, a strip along the lips' edge that touches the opening where the lips thin
        # out at a corner (a band along the upper lip's edge, taken for teeth, was filled over
        # with a blur). Teeth are told by redness only clear of the outer contour.
        k = max(int(round(SKIN_EDGE * float(np.ptp(outer[:, 0])))), 1)
        clear = cv2.erode(lips, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
        foreign |= (red < open_red + TEETH_REDNESS * (lip_red - open_red)) & (clear > 0)
    candidates = (foreign | (opening > 0)).astype(np.uint8)
    _, labels = cv2.connectedComponents(candidates, connectivity=8)
    touching = np.unique(labels[opening > 0])
    keep = np.isin(labels, touching[touching > 0])
    return keep, (x0, y0)


def shown_teeth(photo: NDArray[np.uint8], remnants: tuple[NDArray[np.bool_], tuple[int, int]] | None
                ) -> tuple[NDArray[np.bool_], tuple[int, int]] | None:
    """The teeth the photo shows: pixels of ``remnants`` (:func:`opening_remnants` of the photo)
    within :data:`TEETH_CHROMA` of the teeth's median colour (the pale, low-saturation ones) in
    both chroma channels and at least :data:`TEETH_LUMA` of their luma, the thin gaps between
    teeth closed in. Lip (redder), its wet highlights (small, left to the caller) and the cavity
    (darker) are not teeth. ``(mask, (x0, y0))`` as :func:`opening_remnants`, or None where no
    teeth show."""
    if remnants is None:
        return None
    keep, (x0, y0) = remnants
    h, w = keep.shape
    ycc = cv2.cvtColor(np.ascontiguousarray(photo[y0:y0 + h, x0:x0 + w, :3]), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    rgb = photo[y0:y0 + h, x0:x0 + w, :3].astype(np.float32)
    sat = (rgb.max(2) - rgb.min(2)) / np.maximum(rgb.max(2), 1.0)
    luma = ycc[..., 0]
    inside = keep & (luma > 0)
    if inside.sum() < 12:
        return None
    pale = inside & (sat < 0.3) & (luma > max(110.0, float(np.percentile(luma[inside], 60))))
    if pale.sum() < max(8, 0.1 * inside.sum()):
        return None
    mid = np.median(ycc[pale], axis=0)
    teeth = (keep & (np.abs(ycc[..., 1] - mid[1]) <= TEETH_CHROMA) & (np.abs(ycc[..., 2] - mid[2]) <= TEETH_CHROMA)
             & (luma >= TEETH_LUMA * mid[0])).astype(np.uint8)
    gap = max(int(round(0.01 * w)), 1)  # the gaps between teeth: a hundredth of the lips' box
    teeth = cv2.morphologyEx(teeth, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1)))
    return (teeth > 0) & keep, (x0, y0)


def finish_lips(pixels: NDArray[np.uint8], remnants: tuple[NDArray[np.bool_], tuple[int, int]] | None,
                offsets: NDArray[np.float32], origin: tuple[int, int], target: NDArray, seam: float = 0.0,
                drawn: NDArray[np.bool_] | None = None) -> NDArray[np.bool_] | None:
    """Finish the lips after the warp moved an open mouth, in place on ``pixels`` (the warped box
    whose top-left is ``origin`` in the photo; ``offsets`` its backward warp, ``out[y, x] =
    photo[y + dy, x + dx]``): the photo's teeth and cavity carried into the target's lips (outside
    its own opening, which is left as it is: shut, or drawn) are filled from the lip around them,
    and a seam of strength ``seam`` (0..1: how far the lips were shut) is drawn where the target's
    lips meet (nowhere if they stay apart). ``remnants``: :func:`opening_remnants` of the photo
    (None: nothing to finish); ``target``: landmarks (478, 2|3) in photo pixels. ``drawn`` (over
    ``pixels``) is what a mouth interior drawn into the opening covers whole: left as it is (the
    drawn outline is smooth, the landmarks' straight). Its anti-aliased rim is filled like the
    lips where the warp carried teeth under it, and the caller blends the drawing's rim over the
    fill again (:meth:`facexpr.pipeline.geometry.DrawnMouth.redraw_rim`; filled and left so, the
    rim's half-covered pixels came out as a light line along the cavity).

    Returns the mask (over ``pixels``) of what changed, or None when nothing did.
    """
    if remnants is None:
        return None
    remnant, (rx0, ry0) = remnants
    tgt = np.asarray(target, np.float64)[:, :2] - origin
    width = mouth_axes(target)[3]
    h, w = pixels.shape[:2]
    lips = tgt[list(OUTER_LIP)]
    pad = int(CORNER_SIZE * width * 3) + 3
    x0, y0 = max(int(lips[:, 0].min()) - pad, 0), max(int(lips[:, 1].min()) - pad, 0)
    x1, y1 = min(int(lips[:, 0].max()) + pad + 1, w), min(int(lips[:, 1].max()) + pad + 1, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    view = pixels[y0:y1, x0:x1]
    # Where each pixel of the box was taken from in the photo, relative to the remnant mask.
    off = offsets[y0:y1, x0:x1]
    map_x = (np.arange(x0, x1, dtype=np.float32)[None, :] + origin[0] - rx0 + off[..., 0]).astype(np.float32)
    map_y = (np.arange(y0, y1, dtype=np.float32)[:, None] + origin[1] - ry0 + off[..., 1]).astype(np.float32)
    carried = cv2.remap(remnant.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.25
    inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(inside, [np.round(lips - (x0, y0)).astype(np.int32)], 1)
    opening = np.zeros_like(inside)
    cv2.fillPoly(opening, [np.round(tgt[list(INNER_LIP)] - (x0, y0)).astype(np.int32)], 1)
    # Less its outline: shut lips' inner contour is a line, and the pixels on it, where the warp
    # meets the upper lip's samples with the lower's, had the cavity carried in as a black line.
    opening = cv2.erode(opening, np.ones((3, 3), np.uint8))
    if drawn is not None:
        opening[drawn[y0:y1, x0:x1]] = 1
    carried &= (inside > 0) & (opening == 0)
    changed = np.zeros((y1 - y0, x1 - x0), bool)
    if carried.any():
        grow = (cv2.dilate(carried.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & (opening == 0)
        lip = (inside > 0) & (opening == 0) & ~grow
        source_img = np.ascontiguousarray(view).copy()
        if lip.any():  # the fill takes the lip's colour, not the (drawn) opening's beside it
            source_img[opening > 0] = np.median(view[lip], axis=0).astype(np.uint8)
        radius = max(2.0, 0.02 * width)
        # Inpainting reads and writes only within its radius of the mask (plus OpenCV's 1 px
        # frame): on the mask's box grown by that much it gives the same bytes as on the whole box.
        ys, xs = np.nonzero(grow)
        margin = int(np.ceil(radius)) + 3
        near = (slice(max(ys.min() - margin, 0), ys.max() + margin + 1),
                slice(max(xs.min() - margin, 0), xs.max() + margin + 1))
        filled = cv2.inpaint(source_img[near], grow[near].astype(np.uint8), radius, cv2.INPAINT_TELEA)
        view[near][grow[near]] = filled[grow[near]]
        changed |= grow
    line = meeting_line(tgt - (x0, y0))
    sigma, size = max(SEAM_WIDTH * width, 0.6), max(CORNER_SIZE * width, 1.0)
    # Only where the lips meet: a target that leaves them apart gets no line across its opening.
    gap = float(np.linalg.norm(tgt[13] - tgt[14]))
    strength = float(np.clip(seam, 0.0, 1.0)) * float(np.clip(1.0 - gap / (4.0 * sigma), 0.0, 1.0))
    if strength > 0:
        reach = max(4.0 * sigma, 3.0 * size)
        (sx0, sy0), (sx1, sy1) = np.floor(line.min(0) - reach).astype(int), np.ceil(line.max(0) + reach).astype(int)
        sx0, sy0, sx1, sy1 = max(sx0, 0), max(sy0, 0), min(sx1 + 1, view.shape[1]), min(sy1 + 1, view.shape[0])
        if sx1 > sx0 and sy1 > sy0:
            part = view[sy0:sy1, sx0:sx1]
            shade = _seam_shade(line - (sx0, sy0), (sy1 - sy0, sx1 - sx0), sigma, size) * strength
            shaded = shade > 1.0 / 255
            ycc = cv2.cvtColor(np.ascontiguousarray(part), cv2.COLOR_RGB2YCrCb).astype(np.float32)
            ycc[..., 0] *= 1.0 - shade
            part[shaded] = cv2.cvtColor(np.clip(ycc + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB)[shaded]
            changed[sy0:sy1, sx0:sx1] |= shaded
    return _full_mask(changed, (h, w), (x0, y0))


def _full_mask(changed: NDArray[np.bool_], shape: tuple[int, int], at: tuple[int, int]) -> NDArray[np.bool_] | None:
    if not changed.any():
        return None
    out = np.zeros(shape, bool)
    out[at[1]:at[1] + changed.shape[0], at[0]:at[0] + changed.shape[1]] = changed
    return out


def _seam_shade(line: NDArray[np.float64], shape: tuple[int, int], sigma: float, size: float) -> NDArray[np.float32]:
    """(H, W) fraction of luma to take away: a soft line of width ``sigma`` along the meeting line,
    fainter in the middle of the mouth than toward the corners, and a soft shadow of ``size`` at
    each inner corner of the lips, where they fold into the cheek."""
    # Beyond 4 sigma the seam is under 0.4 * exp(-8) (no level of luma): measured near the line only.
    dist, along = _polyline_distance(line, shape, reach=4.0 * sigma)
    # SEAM_DARKNESS at the corners, 0.55 of it mid-mouth.
    depth = SEAM_DARKNESS * (1.0 - 0.45 * np.sin(np.pi * along))
    seam = depth * np.exp(-0.5 * (dist / sigma) ** 2)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    for corner in (line[0], line[-1]):
        d2 = (xx - np.float32(corner[0])) ** 2 + (yy - np.float32(corner[1])) ** 2
        seam = np.maximum(seam, CORNER_DARKNESS * np.exp(-0.5 * d2 / np.float32(size) ** 2))
    return seam.astype(np.float32)


def _polyline_distance(points: NDArray[np.float64], shape: tuple[int, int],
                       reach: float = np.inf) -> tuple[NDArray, NDArray]:
    """Each pixel's distance to an open polyline (sub-pixel exact, so a seam one or two pixels wide
    is smooth, not stair-stepped) and where along it (0..1 of its length) the nearest point lies.

    Only pixels within ``reach`` of the polyline's bounding box are measured (the others are
    further than ``reach`` from it: distance inf, position 0), which spares most of a mouth box."""
    h, w = shape
    lo, hi = np.floor(points.min(axis=0) - reach), np.floor(points.max(axis=0) + reach) + 1
    near = (slice(int(np.clip(lo[1], 0, h)), int(np.clip(hi[1], 0, h))),
            slice(int(np.clip(lo[0], 0, w)), int(np.clip(hi[0], 0, w))))
    best = np.full(shape, np.inf)
    along = np.zeros(shape)
    yy, xx = np.mgrid[near].astype(np.float64)
    seg = np.diff(points, axis=0)
    lengths = np.maximum(np.linalg.norm(seg, axis=1), 1e-9)
    start = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    best_near, along_near = best[near], along[near]
    for p, d, n, s0 in zip(points[:-1], seg, lengths, start):
        t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / (n * n), 0.0, 1.0)
        dist = np.hypot(xx - p[0] - t * d[0], yy - p[1] - t * d[1])
        closer = dist < best_near
        best_near[closer] = dist[closer]
        along_near[closer] = s0 + t[closer] * n
    return best, along / max(float(lengths.sum()), 1e-9)


# -- the shape of closed lips ------------------------------------------------------------------

#: The mean face's inner-lip contours, upper and lower, corner to corner.
_UPPER = UPPER_INNER_LIP
_LOWER = LOWER_INNER_LIP[::-1]


@functools.lru_cache(maxsize=1)
def _template_lips() -> tuple[NDArray[np.int64], NDArray[np.float64], float]:
    """The lip points of the mean face (inside its outer lip contour, corners excluded), each one's
    offset across the mouth from the inner contour of its own lip (upper lip points from the
    upper contour, lower from the lower), in inter-ocular units; and the mean face's lower-lip
    thickness in the same units."""
    lm = mean_face().astype(np.float64)[:, :2]
    origin, axis, normal, width = mouth_axes(lm)
    iod = inter_ocular(lm)
    rel = lm - origin
    u, v = rel @ axis / width, rel @ normal / iod
    outer = lm[list(OUTER_LIP)].astype(np.float32)
    lips = np.array([i for i in range(468) if i not in (61, 291)
                     and cv2.pointPolygonTest(outer, (float(lm[i, 0]), float(lm[i, 1])), True) >= -1e-4])
    up = np.interp(u[lips], u[list(_UPPER)], v[list(_UPPER)])
    low = np.interp(u[lips], u[list(_LOWER)], v[list(_LOWER)])
    upper_lip = v[lips] <= 0.5 * (up + low) + 1e-9
    upper_lip[np.isin(lips, _UPPER)] = True
    upper_lip[np.isin(lips, _LOWER) & ~np.isin(lips, _UPPER)] = False
    offset = np.where(upper_lip, v[lips] - up, v[lips] - low)
    return lips, offset, float(v[17] - v[14])


def _posed_places(photo: NDArray[np.float64], points: NDArray[np.int64]) -> NDArray[np.float64]:
    """Where ``points`` of the mean face lie along its mouth (0 at corner 61, 1 at 291) once it is
    turned like the face of ``photo`` (its landmarks) and seen by the camera."""
    pose = face_pose(photo)
    posed = pose.scale * mean_face().astype(np.float64) @ pose.rotation.T + pose.translation
    origin, axis, _, width = mouth_axes(posed)
    return (posed[points, :2] - origin) @ axis / width


#: How much thinner or thicker than the mean face's the lips of closed lips may be (their lower
#: lip in the middle, both scaled alike).
LIP_SCALE = (0.7, 1.4)


def closed_lip_shape(target: NDArray[np.float64], photo: NDArray, weight: float) -> None:
    """Give the lips of ``target`` (478, 3 image pixels, lips already meeting) the shape of closed
    lips, in place, blended by ``weight`` (0..1).

    Why: a smiling mouth's lips are stretched thin over the teeth and as thick at the corners as in
    the middle; moved by a rig and shut, they stay a band with blunt ends. Closed lips taper to a
    point at each corner, and the upper lip is a little over half as thick as the lower. The mean
    face's lip layout is laid along the target's own meeting line (which carries the expression:
    a frown's downturn, a pout), from corner to corner, at the thickness of the photo's own
    lower lip (``photo``: its landmarks), grown by as much as the mouth narrows: a lip keeps its
    volume, stretched thin over a smile's teeth and fuller relaxed (left at the photo's
    thickness, a relaxed smile's lips stayed thin, as if pressed).
    """
    if weight <= 0:
        return
    lips, offset, lower = _template_lips()
    lm = np.asarray(photo, np.float64)
    thickness = float(np.linalg.norm(lm[17, :2] - lm[14, :2])) / max(inter_ocular(lm), 1e-9)
    origin, axis, normal, width = mouth_axes(target)
    thickness *= max(float(np.linalg.norm(lm[291, :2] - lm[61, :2])) / max(width, 1e-9), 1.0)
    scale = float(np.clip(thickness / max(lower, 1e-9), *LIP_SCALE))
    iod = inter_ocular(target)
    rel = target[:, :2] - origin
    seam_pts = [61] + list(_UPPER[1:-1]) + [291]
    su, sv = rel[seam_pts] @ axis / width, rel[seam_pts] @ normal
    order = np.argsort(su)
    # Along the mouth, each point takes its place on the mean face turned like the photo's head
    # (a turned head foreshortens one side: the frontal places would slide the lips off the
    # nose's axis); across the mouth, the mean face's offset from the target's meeting line.
    u = _posed_places(lm, lips)
    seam = np.interp(u, su[order], sv[order])
    shaped = origin + np.outer(u * width, axis) + np.outer(seam + scale * offset * iod, normal)
    target[lips, :2] += weight * (shaped - target[lips, :2])
