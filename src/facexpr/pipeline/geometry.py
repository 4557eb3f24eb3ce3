"""Running the geometry-driven model on one face of a photo, at the photo's own resolution.

Per face (all in image pixels, no crop is resampled):

1. **rig** -- the AU change becomes template-frame motion of the 478 landmarks, clamped, rotated
   and scaled into the image by the face's 3D pose, and faded on vertices that face away from
   the camera (the far cheek of a turned head);
2. **warp** -- the photo is warped backward through the mesh from the source to the target
   landmarks (:func:`facexpr.face.warp.mesh_warp_field`), bicubic at full resolution;
3. **shading** -- the per-AU ratio images, carried from the texture frame onto the target
   geometry on the warp's coarse grid, multiply the warped pixels' luminance (brow furrows,
   nasolabial folds);
4. **mouth** -- where the lips open wider than in the photo, the mouth network fills the inner-lip
   polygon (teeth, cavity).

Pixels that none of these touch stay byte-identical.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.expression import AU_NAMES, EMOTIONS
from facexpr.face.align import LUMA, copy_where, mean_face, template_pixels
from facexpr.face.closed_lips import closed_lip_shape, finish_lips, opening_remnants
from facexpr.face.eyes import (
    EYES,
    BrowsUnderHair,
    EyeColours,
    borrowed_colours,
    eye_axes,
    eye_colours,
    hair_over_brows,
    open_eye,
    same_white,
)
from facexpr.face.mouth import inter_ocular, mouth_axes
from facexpr.face.warp import (
    IRIS_ANCHORS,
    MESH_POINTS,
    NOSE_TIP,
    OUTER_LIP,
    Pose,
    WarpField,
    apply_field,
    face_grid,
    face_pose,
    keep_inside_outline,
    mesh_warp_field,
    unfold,
    unfold_evenly,
    visibility,
)
from facexpr.models.geometry import GeometryModel, au_gains

#: Inner-lip landmark pairs (upper, lower) facing each other across the mouth opening.
INNER_LIP_PAIRS: tuple[tuple[int, int], ...] = (
    (13, 14), (82, 87), (81, 178), (80, 88), (191, 95), (312, 317), (311, 402), (310, 318), (415, 324),
)
#: The lips' landmarks in columns across each lip, from the inner contour to the outer one
#: (two rows between them, at about 0.3 and 0.65 of the way on the mean face); the corners'
#: columns run from the inner corner to the outer one.
LIP_COLUMNS: tuple[tuple[int, int, int, int], ...] = (
    (13, 12, 11, 0), (82, 38, 72, 37), (81, 41, 73, 39), (80, 42, 74, 40), (191, 183, 184, 185),
    (312, 268, 302, 267), (311, 271, 303, 269), (310, 272, 304, 270), (415, 407, 408, 409),
    (14, 15, 16, 17), (87, 86, 85, 84), (178, 179, 180, 181), (88, 89, 90, 91), (95, 96, 77, 146),
    (317, 316, 315, 314), (402, 403, 404, 405), (318, 319, 320, 321), (324, 325, 307, 375),
    (78, 62, 76, 61), (308, 292, 306, 291),
)
#: Inner-lip landmark -> the outer-lip landmark across the same lip.
INNER_TO_OUTER: dict[int, int] = {column[0]: column[-1] for column in LIP_COLUMNS}
#: How far toward the outer lip (fraction of its thickness) the photo's inner-lip contour is
#: taken to be when closing lips: where the lips' edges cannot be measured, and the most that
#: :func:`lip_edge_margins` measures.
LIP_MARGIN = 0.55
#: The same when shut lips are opened: their meeting line is a dark line a few pixels wide,
#: which the lips' inner edges would carry around the drawn opening as a black outline.
SEAM_MARGIN = 0.12

#: AU25 (lips part) and AU26 (jaw drop) indices, and the level below which a target's lips are closed.
_AU04, _AU06, _AU10, _AU12, _AU15, _AU20, _AU25, _AU26, _AU45 = (
    AU_NAMES.index(n) for n in ("AU04", "AU06", "AU10", "AU12", "AU15", "AU20", "AU25", "AU26", "AU45"))
LIPS_CLOSED_BELOW = 1.0

#: Shading below this (|log| change, i.e. ~0.4 %) does not mark a pixel as edited: a map with
#: nothing above it is dropped, and a map is applied over the box of what is above it, where a
#: pixel below it that no other step marks (the warp, the folds, the eyes, the mouth) is put
#: back as the photo has it at the end of the edit (far skin stays byte-identical; the steps in
#: between see the faint shading).
MIN_SHADING = 0.004
#: How a shadow darkens skin, channel by channel (R, G, B), as a share of its luma's log change:
#: light scattered under the skin leaves a shadow redder than the skin around it. The median
#: over the 112 nasolabial regions of the 56 shared 1024 px portraits (their darkest 5 % of skin
#: pixels against its mid-tones; IQR R 0.61-0.82, G 1.11-1.29, B 1.13-1.41). Darkened in luma
#: alone, pale skin turned grey where an edit deepens it (a smile's cheeks beside the nose,
#: 064307). Brightening is more light on the same skin: R, G and B alike, its colour kept (in
#: luma alone, a lit chin under a smile turned ashen).
SHADOW_TINT = np.array([0.72, 1.17, 1.24], np.float32)


@dataclass
class GeometryEdit:
    """The edited pixels of one face: ``pixels`` (H, W, 3) uint8 over ``box``, applied where
    ``mask`` (H, W) is True; ``target_landmarks`` (478, 3) in image pixels; per-stage seconds."""

    box: tuple[int, int, int, int]
    pixels: NDArray[np.uint8]
    mask: NDArray[np.bool_]
    target_landmarks: NDArray[np.float64]
    timings: dict[str, float]
    mouth_filled: bool = False


@dataclass(frozen=True)
class FaceLook:
    """What an edit of one face reads from its photo whatever the target: worked out once by
    :func:`face_look` and handed to every edit of the same face in the same photo (a reenacted
    portrait is edited once a video frame, an animation once a frame: sampling the eyes took 7 %
    of a 1024 px reenacted frame's edit)."""

    eye_colours: tuple[EyeColours, ...] | None  #: :func:`painted_eye_colours`
    hair: BrowsUnderHair | None = None  #: :func:`~facexpr.face.eyes.hair_over_brows`


def face_look(model: GeometryModel, image: NDArray[np.uint8], landmarks: NDArray) -> FaceLook:
    """The :class:`FaceLook` of the face at ``landmarks`` in ``image``."""
    return FaceLook(painted_eye_colours(model, image, landmarks), hair_over_brows(image, landmarks))


def painted_eye_colours(model: GeometryModel, image: NDArray[np.uint8] | None,
                        landmarks: NDArray) -> tuple[EyeColours, ...] | None:
    """What both eyes of the face look like when they may open wider with painted sclera (both
    open, visible, clearly white and not hidden; an eye showing too little white to sample takes
    the other eye's colours, :func:`~facexpr.face.eyes.borrowed_colours`); None otherwise, and
    then neither eye is painted (one eye opened wide next to a merely stretched one looks like a
    squint)."""
    if not model.config.paint_eyes or image is None:
        return None
    colours = [eye_colours(image, landmarks, k) for k in range(len(EYES))]
    for k, other in ((0, colours[1]), (1, colours[0])):
        if colours[k] is None and other is not None:
            colours[k] = borrowed_colours(image, landmarks, k, other)
    if any(c is None for c in colours):
        return None
    return same_white((colours[0], colours[1]))  # type: ignore[arg-type]


def paintable_eyes(model: GeometryModel, image: NDArray[np.uint8] | None, landmarks: NDArray) -> bool:
    """Whether the face's eyes may open wider with painted sclera (:func:`painted_eye_colours`)."""
    return painted_eye_colours(model, image, landmarks) is not None


#: A target that raises AU45 by more than this shuts the eyes (a blink): the brow lowering is
#: not turned down to keep them open. Sadness's lid droop (AU45 1) keeps the guard.
SHUTS_EYES = 2.0


def target_landmarks(model: GeometryModel, landmarks: NDArray, source_aus: NDArray,
                     target_aus: NDArray, paint: bool = False,
                     hair: BrowsUnderHair | None = None) -> NDArray[np.float64]:
    """Where the face's landmarks move for ``target_aus``: (478, 3) image pixels. ``paint`` says
    whether a raised lid may open the eyes wider than a stretch can (see :func:`paintable_eyes`);
    ``hair`` is the photo's :func:`~facexpr.face.eyes.hair_over_brows` (:func:`hold_under_hair`)."""
    lm = np.asarray(landmarks, np.float64)
    target_aus, moved = limit_brow_raise(model, lm, source_aus, target_aus, paint, hair)
    # The rig lowers every face's brows by the same amount: a face with low brows has less room,
    # its brows would come down onto the lashes and (the mesh unfolding where they cross) push
    # the lids down, shutting the eyes. The brow lowering is turned down, per face, until the
    # eyes keep KEEP_EYE_OPEN of the opening they have without it. Only the rig's motion and the
    # unfolding move the eyes: the mouth's shaping (_shape_mouth) is done once, on the lowering
    # chosen.
    if (float(target_aus[_AU04]) <= float(source_aus[_AU04])
            or float(target_aus[_AU45]) > float(source_aus[_AU45]) + SHUTS_EYES):  # no lowering, or a blink
        return _shape_mouth(model, moved, lm, source_aus, target_aus)
    lowered = np.asarray(target_aus, np.float32).copy()
    lowered[_AU04] = source_aus[_AU04]
    reference = _moved_landmarks(model, lm, source_aus, lowered, paint, hair)
    room = _eye_room(reference, moved)
    if room >= 1.0:
        return _shape_mouth(model, moved, lm, source_aus, target_aus)
    # The room shrinks about linearly with the share of the lowering (1 / KEEP_EYE_OPEN without
    # any): one step along that line, and a second one from where it landed if the mesh
    # unfolding made it fall short.
    none, share = 1.0 / KEEP_EYE_OPEN, 1.0
    for _ in range(2):
        share *= float(np.clip(0.95 * (none - 1.0) / max(none - room, 1e-6), 0.0, 1.0))
        lowered[_AU04] = source_aus[_AU04] + share * (float(target_aus[_AU04]) - float(source_aus[_AU04]))
        moved = _moved_landmarks(model, lm, source_aus, lowered, paint, hair)
        room = _eye_room(reference, moved)
        if room >= 1.0:
            break
    return _shape_mouth(model, moved, lm, source_aus, lowered)


#: Raised brows may open the lid skin between the lash band and the brows' lower edge to at
#: most this multiple of its height in the photo. The skin a real brow raise uncovers was folded
#: out of sight; a warp can only stretch what shows, and on low-set brows (a few pixels of skin
#: under the brow) the rig's raise drew the brow hair, its shadow or long lashes out into streaks.
#: Posed surprise on the Taiwanese performers opens that gap 1.03x (median; 1.29x at the 90th
#: percentile); the rig's full raise opened it 2.1x on the same faces and up to 5x on low brows.
MAX_LID_STRETCH = 1.5

#: The AUs whose change raises the brows, and the direction that does: the brow raisers (AU01,
#: AU02) going up, the brow lowerer (AU04) coming down from where the photo has it (the
#: landmarker reads low-set brows as a frown, AU04 2.4-3.8 on some resting faces, and a target
#: without it lifts them).
_BROW_LIFT: tuple[tuple[int, float], ...] = ((AU_NAMES.index("AU01"), 1.0), (AU_NAMES.index("AU02"), 1.0),
                                             (AU_NAMES.index("AU04"), -1.0))
#: The AUs that move the brows (and the forehead and lids with them), :data:`_BROW_LIFT`'s: what
#: :func:`limit_brow_raise` turns down and what hair over a brow does not follow
#: (:func:`hold_under_hair`).
_BROW_AUS: list[int] = [k for k, _ in _BROW_LIFT]


def lid_skin_height(landmarks: NDArray) -> NDArray[np.float64]:
    """(2,) per eye: how far the brow's lower edge sits above the lash band, across the eye
    (mean over each row, image pixels)."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    out = np.empty(len(EYES))
    for k, eye in enumerate(EYES):
        _, up = eye_axes(lm, eye)
        out[k] = float((lm[list(eye.brow_lower)] @ up).mean() - (lm[list(eye.lash_band)] @ up).mean())
    return out


def limit_brow_raise(model: GeometryModel, landmarks: NDArray[np.float64], source_aus: NDArray,
                     target_aus: NDArray, paint: bool,
                     hair: BrowsUnderHair | None = None) -> tuple[NDArray, NDArray[np.float64]]:
    """``target_aus`` with the changes that lift the brows (:data:`_BROW_LIFT`: a raise of AU01
    or AU02, a drop of AU04) turned down together, per face, until neither eye's lid skin opens
    more than :data:`MAX_LID_STRETCH` of its height in the photo (see :func:`lid_skin_height`),
    or taken back whole where the rest of the expression (a drooping lid) already opens it that
    far; unchanged when the brows lift less. An eye whose lid skin is under 2 % of the eye
    distance in the photo (a mesh with the brow on the lashes) sets no limit. Returns those AUs
    and the landmarks :func:`_moved_landmarks` gives for them.

    The shading keeps the asked AUs: a turned-down raise keeps its forehead lines."""
    target_aus = np.asarray(target_aus, np.float32)
    full = _placed_landmarks(model, landmarks, source_aus, target_aus, paint, hair)
    index = _BROW_AUS
    sign = np.array([d for _, d in _BROW_LIFT], np.float32)
    lift = np.maximum(sign * (target_aus[index] - np.asarray(source_aus, np.float32)[index]), 0.0) * sign
    before = lid_skin_height(landmarks)
    measured = before > 0.02 * inter_ocular(landmarks)
    allowed = MAX_LID_STRETCH * before
    if not lift.any() or not measured.any():
        return target_aus, _unfolded(landmarks, full, carries_folds(source_aus, target_aus))
    high = lid_skin_height(full)
    if (high[measured] <= allowed[measured]).all():
        return target_aus, _unfolded(landmarks, full, carries_folds(source_aus, target_aus))
    lowered = target_aus.copy()
    lowered[index] -= lift
    low = lid_skin_height(_placed_landmarks(model, landmarks, source_aus, lowered, paint, hair))
    # The rig is linear in the AUs, so the height grows about linearly with the share of the
    # lift (the clamps on the lids and on each point's motion bend it a little): the largest share
    # that keeps every measured eye within its allowance, then the mesh of those AUs.
    grows = high - low
    counts = measured & (grows > 1e-6)
    share = float(np.clip(np.min(np.where(counts, (allowed - low) / np.where(counts, grows, 1.0), 1.0)), 0.0, 1.0))
    lowered[index] += share * lift
    return lowered, _moved_landmarks(model, landmarks, source_aus, lowered, paint, hair)


def _placed_landmarks(model: GeometryModel, lm: NDArray[np.float64], source_aus: NDArray,
                      target_aus: NDArray, paint: bool, hair: BrowsUnderHair | None = None) -> NDArray[np.float64]:
    """The landmarks moved by the rig (those under ``hair`` held, :func:`hold_under_hair`), kept
    inside the face's outline, the lids held from widening and lowered brows kept whole (before
    the mesh is unfolded)."""
    cfg = model.config
    img_motion = image_motion(model, lm, source_aus, target_aus)
    if hair is not None:
        hold_under_hair(model, lm, source_aus, target_aus, img_motion, hair)
    keep_inside_outline(lm, img_motion)
    widen = max if paint else min
    keep_eyes_from_widening(lm, img_motion, widen(cfg.max_eye_widening, MAX_EYE_WIDENING))
    keep_brows_whole(lm, img_motion)
    return lm + img_motion


def _moved_landmarks(model: GeometryModel, lm: NDArray[np.float64], source_aus: NDArray,
                     target_aus: NDArray, paint: bool, hair: BrowsUnderHair | None = None) -> NDArray[np.float64]:
    """The landmarks moved by the rig, the lids held from widening, lowered brows kept whole and
    the mesh unfolded: all that places the eyes and brows (the mouth is shaped after, by
    :func:`_shape_mouth`)."""
    return _unfolded(lm, _placed_landmarks(model, lm, source_aus, target_aus, paint, hair),
                     carries_folds(source_aus, target_aus))


def _still_brows(source_aus: NDArray, target_aus: NDArray) -> NDArray[np.float32]:
    """``target_aus`` with the brow AUs (:data:`_BROW_AUS`) kept at the photo's."""
    out = np.asarray(target_aus, np.float32).copy()
    out[_BROW_AUS] = np.asarray(source_aus, np.float32)[_BROW_AUS]
    return out


def hold_under_hair(model: GeometryModel, landmarks: NDArray[np.float64], source_aus: NDArray, target_aus: NDArray,
                    motion: NDArray[np.float64], hair: BrowsUnderHair) -> None:
    """Hold what hair over a brow holds (:func:`~facexpr.face.eyes.hair_over_brows`), in place on
    the rig's ``motion`` (image pixels): ``hair.still`` stays, the rest of the upper face moves by
    ``hair.unpulled`` as ``target_aus`` with the brow AUs kept at the photo's (:func:`_still_brows`)
    moves it (a surprise's raised lids still open the eye under bangs that stay put)."""
    n = len(hair.still)
    without = image_motion(model, landmarks, source_aus, _still_brows(source_aus, target_aus))
    motion[:n] += hair.unpulled[:, None] * (without[:n] - motion[:n])
    motion[:n][hair.still] = 0.0


def _held_texture(hair: BrowsUnderHair, size: int) -> NDArray[np.float32]:
    """(size, size) 0..1 over the shading's texture frame: where ``hair`` holds the brows and
    forehead still (each side's still points' hull in the template, softened by a 64th of the
    frame)."""
    pts = template_pixels(size)[:len(hair.still), :2]
    middle = float(pts[168, 0])  # the nose bridge: the template is frontal
    out = np.zeros((size, size), np.float32)
    for side in (pts[:, 0] < middle, pts[:, 0] >= middle):
        group = pts[hair.still & side]
        if len(group) >= 3:
            cv2.fillConvexPoly(out, cv2.convexHull(np.round(group).astype(np.int32)), 1.0)
    return cv2.GaussianBlur(out, (0, 0), size / 64.0)


def _unfolded(lm: NDArray[np.float64], placed: NDArray[np.float64], carry: bool) -> NDArray[np.float64]:
    """``placed`` (:func:`_placed_landmarks`) with the mesh unfolded and the brows kept thick.
    ``carry``: the lower face's folds are carried along with the motion that makes them
    (:func:`carries_folds`)."""
    moved = unfold_evenly(lm, placed, carry)
    if keep_brows_thick(lm, moved):
        moved = unfold(lm, moved, carry=carry)
    return moved


#: A brow keeps at least this share of its thickness (between its upper and lower edge, column
#: by column) through the mesh unfolding.
MIN_BROW_THICKNESS = 0.8


def keep_brows_thick(photo: NDArray, target: NDArray[np.float64]) -> bool:
    """Hold each column of a brow at least :data:`MIN_BROW_THICKNESS` of its thickness in
    ``photo`` (landmarks), in place, by giving its upper edge back some of its lowering;
    whether any column needed it (the caller unfolds the mesh again: the forehead above may now
    fold over the brow).

    A brow lowered onto a lid that anger raises is stopped at its lower edge by the mesh
    unfolding, which moves the lower edge with the folds below it while the upper edge keeps
    coming down: thick brows were squeezed to pencil lines (a column 22 px thick at 1024 px
    down to 2 px), the person's own brows gone. Now a brow comes down only as far as its lower
    edge can, whole."""
    ref = np.asarray(photo, np.float64)
    changed = False
    for lids in EYES:
        upper, lower = list(lids.brow_upper), list(lids.brow_lower)
        across = ref[upper, :2] - ref[lower, :2]
        thin = (np.linalg.norm(target[upper, :2] - target[lower, :2], axis=1)
                < MIN_BROW_THICKNESS * np.linalg.norm(across, axis=1))
        if thin.any():
            target[np.asarray(upper)[thin], :2] = target[np.asarray(lower)[thin], :2] + MIN_BROW_THICKNESS * across[thin]
            changed = True
    return changed


def _shape_mouth(model: GeometryModel, target: NDArray[np.float64], lm: NDArray[np.float64],
                 source_aus: NDArray, target_aus: NDArray) -> NDArray[np.float64]:
    """``target`` (from :func:`_moved_landmarks`) with the lips closed, a relaxed smile's corners
    settled and shut lips given the shape of closed lips, in place. Moves only the lips and the
    skin below the nose, never the eyes or brows."""
    close_lips(target, closing_amount(source_aus, target_aus))
    if stays_shut(lm, source_aus, target_aus):
        keep_lips_sealed(target, lm)
    relaxing = smile_relaxing(source_aus, target_aus)
    jaw = jaw_opening(source_aus, target_aus)
    if relaxing > 0:
        settle_mouth_corners(target, expected_upturn(model, target_aus), relaxing)
        # A relaxed smile's corners come in: toward an oval where the jaw drops, toward a resting
        # mouth's width where it stays (as wide as the lip stretcher makes a resting mouth),
        # unless the target still smiles or pulls the corners out itself.
        narrow_mouth(target, lm, relaxing * jaw, OPEN_MOUTH_WIDTH)
        resting = relaxing * (1.0 - jaw) * (1.0 - widens_mouth(target_aus))
        if resting > 0:  # (the rig moves the mean face for the width only when it is used)
            narrow_mouth(target, lm, resting, relaxed_width(model, target_aus))
    # Lips shut over an opening get the shape of closed lips (tapered corners, the upper lip
    # thinner than the lower); lips that were nearly closed in the photo keep the person's own.
    closed_lip_shape(target, lm, shut_amount(lm, source_aus, target_aus))
    # A dropped jaw's opening narrows to a point where the lips meet.
    round_open_corners(target, jaw)
    return target


#: An opened mouth's inner corner (where the lips meet) sits halfway between the last points of
#: the upper and lower inner lip, outward of both by this share of the opening between them
#: there: a rounded point (0.25-0.5 opened long dark wedges toward the lips' outer corner).
CORNER_TAPER = 0.15
#: ... but no closer to the outer mouth corner than this share of the mouth width (the lips'
#: thickness where they meet).
CORNER_LIPS = 0.06
#: Per side: the inner corner, the upper and the lower inner lip's last points, the outer corner,
#: the points before the last on the upper and the lower inner lip, and which way along the
#: mouth's axis (61 to 291) is outward.
_OPEN_CORNERS = ((78, 191, 95, 61, 80, 88, -1.0), (308, 415, 324, 291, 310, 318, 1.0))


def round_open_corners(target: NDArray[np.float64], weight: float) -> None:
    """Bring each inner mouth corner of an opened mouth ``target`` to a point between its lips,
    in place.

    The rig moves an inner corner down with the lower lip by about half as far as the lower
    lip's last point, and a photo's inner corner can sit right under the upper lip's last point:
    opened, such a mouth had a straight vertical side at one corner or both (an opening cut out
    with scissors, the upper lip ending in a square step at 1024 px). A real opening narrows to
    a point where the lips meet: the corner goes to the middle of the two lips' last points and
    outward of both (:data:`CORNER_TAPER`), never past the lips (:data:`CORNER_LIPS`); a lip's
    last point beyond the corner comes back inside it, and no higher (lower) than the upper
    (lower) lip's point before it.
    """
    if weight <= 0:
        return
    lm = target[:, :2]
    _, axis, down, width = mouth_axes(lm)
    for inner, upper, lower, outer, upper_in, lower_in, outward in _OPEN_CORNERS:
        out = outward * axis
        gap = float((lm[lower] - lm[upper]) @ down)
        if gap <= 0:
            continue
        reach = max(float(lm[upper] @ out), float(lm[lower] @ out)) + CORNER_TAPER * gap
        reach = min(max(reach, float(lm[inner] @ out)), float(lm[outer] @ out) - CORNER_LIPS * width)
        depth = 0.5 * float((lm[upper] + lm[lower]) @ down)
        lm[inner] += weight * ((depth - float(lm[inner] @ down)) * down + (reach - float(lm[inner] @ out)) * out)
        # A lip's last point beyond the corner (a smile's upturned corner that the rig pulled
        # down past it) comes back inside it, and no higher (the upper lip) or lower (the lower
        # lip) than the point before it: the lip would fold over the corner or end in a spike.
        for side, before, sign in ((upper, upper_in, 1.0), (lower, lower_in, -1.0)):
            inside = reach - CORNER_TAPER * abs(depth - float(lm[side] @ down))
            lm[side] -= weight * max(float(lm[side] @ out) - inside, 0.0) * out
            lm[side] += weight * sign * max(float((lm[before] - lm[side]) @ down) * sign, 0.0) * down


#: A photo's lips count as apart from this inner-lip gap (fraction of the mouth width) and as
#: fully open from OPEN_LIPS + OPEN_LIPS_RAMP: between the two, lips shut over them get a blend
#: of the photo's own shape and the shape of closed lips.
OPEN_LIPS = 0.02
OPEN_LIPS_RAMP = 0.06


def shut_amount(landmarks: NDArray, source_aus: NDArray, target_aus: NDArray) -> float:
    """0..1: how far the target shuts lips that are apart in the photo (:func:`closing_amount`,
    faded in with the photo's opening): the weight of the closed lips' shape, seam and clean-up."""
    opening = lip_opening_ratio(landmarks)
    return closing_amount(source_aus, target_aus) * float(np.clip((opening - OPEN_LIPS) / OPEN_LIPS_RAMP, 0.0, 1.0))


#: Corner settling is for a real smile (AU12 from SMILE_AU12 up) that the target relaxes; full
#: weight once both the smile and its drop exceed the ramp (AU12 units).
SMILE_AU12 = 2.0
SMILE_RAMP = 2.0


def smile_relaxing(source_aus: NDArray, target_aus: NDArray) -> float:
    """0..1: how much the target relaxes a smile of the photo: nothing for a resting face whose
    AU12 reads a little above 0 (its own mouth corners stay), 1 for a broad smile made neutral."""
    smile, target = float(source_aus[_AU12]), float(target_aus[_AU12])
    return float(np.clip((smile - SMILE_AU12) / SMILE_RAMP, 0.0, 1.0) * np.clip((smile - target) / SMILE_RAMP, 0.0, 1.0))


def rig_motion(model: GeometryModel, source_aus: NDArray, target_aus: NDArray) -> NDArray[np.float64]:
    """The rig's (478, 3) template-frame motion from ``source_aus`` to ``target_aus``, each point's
    clamped to the model's ``max_motion``."""
    motion = model.rig.motion(source_aus, target_aus, au_gains(model.config)).astype(np.float64)
    norm = np.linalg.norm(motion, axis=1, keepdims=True)
    return motion * np.minimum(1.0, model.config.max_motion / np.maximum(norm, 1e-12))


#: The last face's pose and vertex visibility, keyed by its landmarks' bytes: one edit asks for
#: them several times (each candidate mesh of the brow and eye limits, the shading's texture
#: coordinates). One entry, replaced whole, so threads editing other faces only miss it.
_last_pose: tuple[bytes, Pose, NDArray[np.float64]] | None = None


def pose_and_visibility(landmarks: NDArray) -> tuple[Pose, NDArray[np.float64]]:
    """:func:`~facexpr.face.warp.face_pose` of ``landmarks`` and its :func:`~facexpr.face.warp.visibility`."""
    global _last_pose
    key = np.ascontiguousarray(landmarks, np.float64).tobytes()
    last = _last_pose
    if last is not None and last[0] == key:
        return last[1], last[2]
    pose = face_pose(landmarks)
    seen = visibility(pose)
    _last_pose = (key, pose, seen)
    return pose, seen


def image_motion(model: GeometryModel, landmarks: NDArray, source_aus: NDArray,
                 target_aus: NDArray) -> NDArray[np.float64]:
    """The rig's motion of the face's landmarks (478, 3) in image pixels (:func:`rig_motion`),
    posed like the face, faded where the skin turns away; irises ride with their eye."""
    motion = rig_motion(model, source_aus, target_aus)
    pose, seen = pose_and_visibility(landmarks)
    img_motion = pose.motion_to_image(motion)
    img_motion[:MESH_POINTS] *= seen[:, None]
    img_motion[MESH_POINTS:] = img_motion[list(IRIS_ANCHORS)]
    return img_motion


#: Lowered brows may close the eyes to this share of the opening they have without the
#: lowering (lid tightening and the rest of the expression are theirs): the same brow lowering
#: that frowns a face with high brows pushes low brows onto the lashes, and the lids down with
#: them. The brow lowerer (AU4) is turned down, per face, just enough.
KEEP_EYE_OPEN = 0.8


def _eye_room(reference: NDArray, target: NDArray) -> float:
    """How much room ``target`` leaves the eyes, 1 = just enough: the smaller (over both eyes)
    opening between the middles of the lids, across the eye (signed: lids pushed past each other
    leave a negative opening), over :data:`KEEP_EYE_OPEN` of ``reference``'s. An eye nearly shut
    in ``reference`` (under 2 % of the eye distance: a blink, a squint) is left out: its ratio
    would be landmark noise."""
    ref = np.asarray(reference, np.float64)[:, :2]
    moved = np.asarray(target, np.float64)[:, :2]
    least_open = 0.02 * inter_ocular(ref)
    room = np.inf
    for eye in EYES:
        _, up = eye_axes(ref, eye)
        upper, lower = eye.middles
        before = float((ref[upper] - ref[lower]) @ up)
        if before > least_open:
            room = min(room, float((moved[upper] - moved[lower]) @ up) / (KEEP_EYE_OPEN * before))
    return float(room) if np.isfinite(room) else 1.0


#: How far the mouth corners of a relaxed, closed mouth sit above the middle of the upper lip's
#: inner edge, as a fraction of the mouth width: the median over the 1024 px portraits with no
#: smile (AU12 < 0.3) and closed lips.
NEUTRAL_UPTURN = 0.025


def mouth_upturn(landmarks: NDArray) -> tuple[float, float]:
    """How far each mouth corner (61, 291) sits above the middle of the upper lip's inner edge
    (13), across the mouth and as a fraction of its width: ~0.03 relaxed, 0.1-0.2 in a broad
    smile, < 0 in a frown. The upper lip's edge, not the opening's middle, so that a dropping
    jaw does not count as a smile."""
    lm = np.asarray(landmarks, np.float64)[:, :2]
    _, _, down, width = mouth_axes(lm)
    return float((lm[13] - lm[61]) @ down / width), float((lm[13] - lm[291]) @ down / width)


def on_mean_face(model: GeometryModel, target_aus: NDArray) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The mean face (478, 3, template frame) and where the rig moves it from no expression to
    ``target_aus``: how a target shapes a face, apart from any photo."""
    template = mean_face().astype(np.float64)
    return template, template + rig_motion(model, np.zeros(len(target_aus), np.float32), target_aus)


def expected_upturn(model: GeometryModel, target_aus: NDArray) -> float:
    """The corners' upturn a relaxed mouth has after the rig's move from no expression to
    ``target_aus`` (on the mean face): :data:`NEUTRAL_UPTURN` for a neutral target, lower for a frown."""
    template, moved = on_mean_face(model, target_aus)
    return NEUTRAL_UPTURN + float(np.mean(mouth_upturn(moved)) - np.mean(mouth_upturn(template)))


#: The most a corner is lowered (fraction of the mouth width). Of the 26 smiles among the 1024 px
#: portraits, made neutral, 10 need more than 0.06 to reach a relaxed mouth's upturn and one
#: 0.18; the lip line flattens without a wave that far (see :func:`settle_mouth_corners`).
MAX_SETTLE = 0.15
#: How far below a settled corner the skin still moves with it (the Gaussian's width, fraction
#: of the mouth width): the lower lip and the skin beside the chin, not the chin itself.
SETTLE_BELOW = 0.35
#: ... and how far beyond it, along the mouth (the Gaussian's width, fraction of the mouth width).
SETTLE_BEYOND = 0.2
#: The point under the nose, between the nostrils: nothing above it is moved by the settling.
_SUBNASALE = 2


def settle_mouth_corners(target: NDArray[np.float64], upturn: float, weight: float) -> None:
    """Lower mouth corners that stay higher than ``upturn`` (in place), blended by ``weight``.

    A broad smile is beyond the AU scale's top (its AU12 reads 4.5-5 of 5, whatever its size), so
    a linear rig relaxes it only part of the way: closed, such a mouth still reads as a smile.
    Each corner that sits higher above the middle of the lips than the target expression has on
    the mean face is brought down to it, and the lip line flattens with it: a point of the mouth
    moves by the square of how far it lies from the middle toward the corner (the middle stays,
    a point halfway moves a quarter as far), the bend of a smiling lip line, so the line comes
    out straight instead of sagging between a pinned middle and lowered corners (a wave, which
    capped the drop at 0.06 of the mouth width before). Beyond the corner the motion fades out
    over :data:`SETTLE_BEYOND`; below the corner it fades over :data:`SETTLE_BELOW`; above
    it, toward the base of the nose, which stays.
    """
    lm = target[:, :2]
    origin, axis, down, width = mouth_axes(lm)
    if width < 1e-6:
        return
    along = (lm - origin) @ axis / width  # 0 at corner 61, 1 at corner 291
    middle = float(along[13])
    below_nose = (lm - lm[_SUBNASALE]) @ down
    shift = np.zeros(len(lm))
    for corner, have, end in zip((61, 291), mouth_upturn(target), (0.0, 1.0)):
        excess = min(have - upturn, MAX_SETTLE)
        if excess <= 0:
            continue
        half = abs(end - middle)
        toward = (along - middle) / (end - middle)  # 0 at the middle, 1 at this corner
        lateral = np.where(toward <= 1.0, np.clip(toward, 0.0, 1.0) ** 2,
                           np.exp(-0.5 * ((toward - 1.0) * half / SETTLE_BEYOND) ** 2))
        depth = (lm - lm[corner]) @ down / width
        vertical = np.where(depth > 0, np.exp(-0.5 * (depth / SETTLE_BELOW) ** 2),
                            np.clip(below_nose / max(float(below_nose[corner]), 1e-6), 0.0, 1.0))
        shift += weight * excess * width * lateral * vertical
    target[:, :2] += shift[:, None] * down[None, :]


def _around_corner(lm: NDArray[np.float64], corner: int, down: NDArray[np.float64], width: float) -> NDArray[np.float64]:
    """(N,) how much each point moves with a mouth ``corner`` (1 at it): a Gaussian falloff of a
    third of the mouth width, pinned to zero at the middle of the lips and fading out toward the
    base of the nose (the nose stays: a broad smile lifts the corners near it)."""
    falloff = np.exp(-0.5 * np.sum((lm - lm[corner]) ** 2, axis=1) / (width / 3.0) ** 2)
    pinned = falloff[13]  # the middle of the lips stays where it is
    falloff = np.clip((falloff - pinned) / (1.0 - pinned), 0.0, 1.0)
    below_nose = (lm - lm[_SUBNASALE]) @ down
    return falloff * np.clip(below_nose / max(float(below_nose[corner]), 1e-6), 0.0, 1.0)


def jaw_opening(source_aus: NDArray, target_aus: NDArray) -> float:
    """0..1: how far the target drops the jaw from the photo's (AU26 up by 3 or more: 1), unless
    it stretches the lips sideways (AU20: fear's stretched mouth is wide on purpose)."""
    jaw = float(np.clip((float(target_aus[_AU26]) - float(source_aus[_AU26])) / 3.0, 0.0, 1.0))
    return jaw * float(np.clip(1.0 - float(target_aus[_AU20]) / 3.0, 0.0, 1.0))


#: How wide a mouth opened by a dropped jaw is, over the outer eye corners' distance: the median
#: of the Taiwanese performers' posed surprise (0.527; their neutral mouths 0.553, their smiles
#: 0.723), and the most each corner moves in to get there (fraction of the mouth width: their
#: smile-to-surprise narrowing is 27 %).
OPEN_MOUTH_WIDTH = 0.53
MAX_NARROWING = 0.12

#: How wide a relaxed mouth whose jaw stays is, on the same scale: the median of the performers'
#: neutral photos (quartiles 0.521-0.567; their posed anger 0.551).
REST_MOUTH_WIDTH = 0.553

#: The level of AU14 or AU15 in the target from which it keeps the mouth as wide as the rig makes
#: it (a relaxed smile's corners do not come in: :func:`widens_mouth`).
STRETCHES_LIPS = 1.0
_LIP_STRETCHERS = tuple(AU_NAMES.index(n) for n in ("AU14", "AU15"))


def widens_mouth(target_aus: NDArray) -> float:
    """0..1: how far the target keeps the mouth wide itself: it still smiles (AU12, 1 from
    :data:`SMILE_AU12` on: a smile made less broad keeps its width) or pulls the corners sideways
    or down (the dimpler, the lip-corner depressor, 1 from :data:`STRETCHES_LIPS` on: contempt and
    sadness are wide on purpose). The lip stretcher (AU20) is not among them: it sets the width a
    relaxed smile comes in to (:func:`relaxed_width`)."""
    stretch = max(float(target_aus[i]) for i in _LIP_STRETCHERS) / STRETCHES_LIPS
    return float(np.clip(max(stretch, float(target_aus[_AU12]) / SMILE_AU12), 0.0, 1.0))


def relaxed_width(model: GeometryModel, target_aus: NDArray) -> float:
    """How wide a relaxed smile's mouth comes in to where the jaw stays, over the outer eye
    corners' distance: :data:`REST_MOUTH_WIDTH`, widened as the rig's lip stretcher (AU20) at
    the target's level widens the mean face's resting mouth.

    The stretcher pulls a resting mouth's corners out; it does not add to a smile's own width.
    Kept at the smile's width with the stretch on top (0.62-0.78 of the eye distance on the
    tuning portraits' smiles), a broad smile made fearful parted its lips in a grin over the
    smile's teeth."""
    stretch = np.zeros(len(target_aus), np.float32)
    stretch[_AU20] = target_aus[_AU20]
    if not stretch.any():
        return REST_MOUTH_WIDTH
    template, moved = on_mean_face(model, stretch)
    return REST_MOUTH_WIDTH * mouth_axes(moved[:, :2])[3] / mouth_axes(template[:, :2])[3]


def narrow_mouth(target: NDArray[np.float64], photo: NDArray, weight: float, goal: float) -> None:
    """Bring the mouth corners of ``target`` in toward ``goal`` (a share of the photo's outer
    eye corners' distance, which the expression does not move), in place, blended by ``weight``.

    A smile's corners are pulled out as well as up, beyond what a linear rig gives back. A laugh
    made surprised kept the smile's width, and its dropped jaw opened a wide "D" under a flat
    upper lip (a laughing mouth) instead of an oval: it comes in toward :data:`OPEN_MOUTH_WIDTH`.
    A smile made neutral or angry kept 0.61 of the eye distance (0.59-0.66; the performers'
    neutral and angry mouths 0.55), its lips stretched thin between the smile's corners: it
    comes in toward :data:`REST_MOUTH_WIDTH`. Each corner moves along the mouth with the skin
    around it (:func:`_around_corner`: the middle of the lips and the nose stay), by at most
    :data:`MAX_NARROWING` of the mouth width."""
    lm = target[:, :2]
    _, axis, down, width = mouth_axes(lm)
    excess = min(0.5 * (width - goal * inter_ocular(photo)), MAX_NARROWING * width)
    if excess <= 0 or weight <= 0:
        return
    shift = np.zeros_like(lm)
    for corner, inward in ((61, axis), (291, -axis)):
        shift += weight * excess * _around_corner(lm, corner, down, width)[:, None] * inward[None, :]
    target[:, :2] += shift


#: How much wider than in the photo an eye may open (fraction of its opening): the eye is then
#: stretched vertically by the warp, which stays unnoticeable up to about this much.
MAX_EYE_WIDENING = 0.15


#: How much further than its lid the lash band above an eye may rise (fraction of the eye's opening).
LASH_ROOM = 0.05


def _along_polyline(at: NDArray[np.float64], values: NDArray[np.float64], where: NDArray[np.float64]) -> NDArray[np.float64]:
    """``values`` given at positions ``at`` along an eye, interpolated at ``where`` (held at the ends)."""
    order = np.argsort(at)
    return np.interp(where, at[order], values[order])


def keep_eyes_from_widening(landmarks: NDArray, motion: NDArray[np.float64],
                           widening: float = MAX_EYE_WIDENING) -> None:
    """Limit the lid motion that would open an eye wider than in the photo, in place.

    The upper lid may rise by at most ``widening`` of the eye's opening: a stretched eye
    (:data:`MAX_EYE_WIDENING`) or, beyond that (``paint_eyes``), a rigid eye with painted sclera
    above the iris (:mod:`facexpr.face.eyes`). The lower lid never drops below the photo's (that would
    uncover lid skin, not eyeball). Lids may still close (blink, lid tightener) and ride along
    with the brows and cheeks. The lash band above the upper lid and the ring under the lower
    one stay with their lids (see ``LASH_ROOM``); a closing upper lid takes its lash band and
    fold down with it."""
    lm = np.asarray(landmarks, np.float64)
    painted = widening > MAX_EYE_WIDENING
    for lids in EYES:
        (a, b), upper, lower = lids.corners, lids.upper, lids.lower
        along, up = eye_axes(lm, lids)
        if painted:
            # A painted eye keeps its width: the landmarker pulls the corners of a wide-open eye
            # outward, which the rig learned; a rigid eye moved inside a wider contour would
            # show the lashes and liner beyond its corners.
            spread = float((motion[b, :2] - motion[a, :2]) @ along)
            if spread > 0:
                motion[a, :2] += 0.5 * spread * along
                motion[b, :2] -= 0.5 * spread * along
        rigid = motion[[a, b], :2].mean(axis=0)
        height = abs(float((lm[upper[3], :2] - lm[lower[3], :2]) @ up))
        for idx, sign, allowed in ((list(upper), 1.0, widening * height), (list(lower), -1.0, 0.0)):
            rel = motion[idx, :2] - rigid
            opening = sign * (rel @ up)  # > 0: this lid moves away from the eye's middle
            motion[idx, :2] -= np.maximum(opening - allowed, 0.0)[:, None] * sign * up[None, :]
        # Lashes and liner stay with their lid: the brows' pull raised the lash band above the
        # upper lid and the cheeks (a dropping jaw) drew the ring under the lower lid down,
        # stretching lashes and liner into streaks. The band rises at most LASH_ROOM of the eye's
        # height more than the lid under it, and the ring below drops no further than its lid
        # (not at all when the lid rises); the skin beyond takes the stretch.
        for lid, ring, sign, room in ((upper, lids.lash_band, 1.0, LASH_ROOM * height), (lower, lids.under_band, -1.0, 0.0)):
            ring = list(ring)
            lid_rise = _along_polyline(lm[list(lid), :2] @ along, (motion[list(lid), :2] - rigid) @ up, lm[ring, :2] @ along)
            away_lid = np.maximum(sign * lid_rise, 0.0)  # the lid's own move away from the eye, if any
            away = sign * ((motion[ring, :2] - rigid) @ up) - away_lid  # > 0: the ring moves further
            motion[ring, :2] -= np.maximum(away - room, 0.0)[:, None] * sign * up[None, :]
        # An upper lid that comes down (a blink, sadness's droop) takes its lash band and fold
        # with it: the lashes grow from its margin. Left behind, they were drawn out over the eye
        # in dark streaks; the skin between the fold and the brow takes the stretch instead.
        for ring in (list(lids.lash_band), list(lids.lid_fold)):
            lid_rise = _along_polyline(lm[list(upper), :2] @ along, (motion[list(upper), :2] - rigid) @ up, lm[ring, :2] @ along)
            drop = np.maximum(-lid_rise, 0.0)
            ring_rise = (motion[ring, :2] - rigid) @ up
            motion[ring, :2] -= np.minimum(np.maximum(ring_rise + drop, 0.0), drop)[:, None] * up[None, :]
        if not painted:
            continue
        # The lash band above a raised lid rides with it (whole), so lashes and eyeliner are not
        # stretched; the skin between that band and the brow takes the stretch.
        lid_rise = (motion[list(upper), :2] - rigid) @ up
        for ring, share in ((lids.lash_band, 0.9), (lids.lid_fold, 0.5)):
            ring_rise = (motion[list(ring), :2] - rigid) @ up
            extra = np.maximum(share * lid_rise - ring_rise, 0.0)
            motion[list(ring), :2] += extra[:, None] * up[None, :]


#: Share of a brow's lowering the lid fold below it takes (the lash band, under it, none).
LID_FOLD_SHARE = 0.5


def keep_brows_whole(landmarks: NDArray, motion: NDArray[np.float64]) -> None:
    """Lower each brow as a whole, in place, with the lid's skin below it giving way.

    The rig lowers a brow's upper edge more than its lower one, and anger raises the upper lid
    (its lash band and lid fold with it) into the brow coming down; the mesh unfolding then
    stopped the brow's lower edge at the lid fold while the upper edge kept going: brows were
    squeezed to pencil lines or turned inside out. A lowered brow's two edges now take their
    mean motion, column by column, and the lid fold comes down by ``LID_FOLD_SHARE`` of the
    brow's drop (relative to the eye), so the lid's skin bunches up instead; the lash band stays
    with the lid (squeezed, the lashes smeared). Brows that rise are left as the rig moves them.
    """
    for lids in EYES:
        upper, lower = list(lids.brow_upper), list(lids.brow_lower)
        mean = 0.5 * (motion[upper] + motion[lower])
        _, up = eye_axes(landmarks, lids)
        rigid = motion[list(lids.corners), :2].mean(axis=0)
        drop = -float(((mean[:, :2] - rigid) @ up).mean())
        if drop <= 0:
            continue
        motion[upper] = mean
        motion[lower] = mean
        fold = list(lids.lid_fold)
        lowered = -((motion[fold, :2] - rigid) @ up)
        motion[fold, :2] -= np.maximum(LID_FOLD_SHARE * drop - lowered, 0.0)[:, None] * up[None, :]


def closing_amount(source_aus: NDArray, target_aus: NDArray) -> float:
    """0..1: how far the target asks the lips to close: 1 when AU25 drops to 0 from at least
    0.2; nothing when AU25 does not drop (an unchanged target leaves the lips as they are)."""
    low = np.clip(1.0 - float(target_aus[_AU25]) / LIPS_CLOSED_BELOW, 0.0, 1.0)
    drop = np.clip((float(source_aus[_AU25]) - float(target_aus[_AU25])) / 0.2, 0.0, 1.0)
    return float(low * drop)


def opens_mouth(source_aus: NDArray, target_aus: NDArray) -> bool:
    """Whether the target asks the lips to part further (AU25 + AU26 up by more than 0.3): only
    then does the mouth open, get an interior, and may the lips part wider than in the photo."""
    return float(target_aus[_AU25] + target_aus[_AU26]) > float(source_aus[_AU25] + source_aus[_AU26]) + 0.3


def carries_folds(source_aus: NDArray, target_aus: NDArray) -> bool:
    """Whether the mesh unfolding carries the lower face's folds along with the motion that makes
    them (:func:`~facexpr.face.warp.unfold`): for a target that pulls the mouth corners down
    (AU15 up by 0.5 or more: sadness) with the lips together (AU25 under
    :data:`LIPS_CLOSED_BELOW`) and the upper lip not rising. There the folds are a mouth corner
    pulled past the skin beside it, and a smile made sad kept its smile. Where the lips stay
    apart or the upper lip rises they are the upper lip's two edges moving apart and together,
    and carried along they swelled the lip (a grin made angry kept its grin); a smile made
    neutral narrowed further than its lips grew fuller."""
    return (float(target_aus[_AU15]) >= float(source_aus[_AU15]) + 0.5
            and float(target_aus[_AU25]) < LIPS_CLOSED_BELOW and not opens_mouth(source_aus, target_aus)
            and float(target_aus[_AU10]) <= float(source_aus[_AU10]) + 0.3)


#: A photo's lips count as shut below this inner-lip gap (fraction of the mouth width; teeth
#: show from about 0.08).
SHUT_LIPS = 0.05


def stays_shut(landmarks: NDArray, source_aus: NDArray, target_aus: NDArray) -> bool:
    """Whether the photo's lips are shut (:data:`SHUT_LIPS`) and the target does not part them
    (:func:`opens_mouth`): they stay sealed (:func:`keep_lips_sealed`) and their field smooth.
    (Lips apart in the photo may part further without the AUs that open the mouth: a laugh
    made angry raises its upper lip off the teeth.)"""
    return not opens_mouth(source_aus, target_aus) and lip_opening_ratio(landmarks) <= SHUT_LIPS


def keep_lips_sealed(target: NDArray[np.float64], landmarks: NDArray) -> None:
    """Facing inner-lip points of ``target`` no further apart than in the photo ``landmarks``,
    in place (each pair's gap shortened about its midpoint, its direction kept).

    For shut lips a target does not part (:func:`stays_shut`). The rig moves each lip with
    its own AUs (a sad mouth's corners pull the lower lip down, a raised upper lip goes up), so
    on a photo with closed lips its inner contours drew apart by up to a twentieth of the face
    while the AUs asked for no opening; the warp then spread the photo's one-pixel meeting line
    over that gap as torn strips of lip and shadow.
    """
    lm = np.asarray(landmarks, np.float64)
    for upper, lower in INNER_LIP_PAIRS:
        gap = target[lower, :2] - target[upper, :2]
        length = float(np.linalg.norm(gap))
        allowed = float(np.linalg.norm(lm[lower, :2] - lm[upper, :2]))
        if length <= allowed:
            continue
        shrink = 0.5 * (1.0 - allowed / length) * gap
        target[upper, :2] += shrink
        target[lower, :2] -= shrink


#: Lips shut over an opening are sampled from this far (fraction of the lip's thickness) beyond
#: where each lip's own colour starts along its column, and at least MIN_LIP_MARGIN from the
#: inner contour (its dark rim), at most LIP_MARGIN.
LIP_EDGE_PAD = 0.1
MIN_LIP_MARGIN = 0.1


def lip_edge_margins(landmarks: NDArray, remnants: tuple[NDArray[np.bool_], tuple[int, int]] | None
                     ) -> NDArray[np.float64] | None:
    """Per lip column (:data:`LIP_COLUMNS`), how far toward the outer lip a lip shut over the
    photo's opening is sampled from: where the lip's own colour starts, walking out from the
    inner contour past the teeth and cavity the contour misses (``remnants``:
    :func:`~facexpr.face.closed_lips.opening_remnants` of the photo), plus
    :data:`LIP_EDGE_PAD`. None when the photo shows no opening to measure.

    A fixed LIP_MARGIN squeezes a whole lip into the outer half of itself even where the contour
    lies on the lip's edge (the middle of most smiles): shut, such a lip is its outer half
    stretched twice over, its edge against the skin soft."""
    if remnants is None:
        return None
    opening, (x0, y0) = remnants
    h, w = opening.shape
    lm = np.asarray(landmarks, np.float64)[:, :2]
    margins = np.empty(len(LIP_COLUMNS))
    for k, column in enumerate(LIP_COLUMNS):
        inner, outer = lm[column[0]], lm[column[-1]]
        ts = np.linspace(0.0, 1.0, max(int(np.ceil(2.0 * np.linalg.norm(outer - inner))), 2))  # half-pixel steps
        xs, ys = np.round(inner + ts[:, None] * (outer - inner) - (x0, y0)).astype(int).T
        seen = (xs >= 0) & (ys >= 0) & (xs < w) & (ys < h)
        foreign = np.zeros(len(ts), bool)
        foreign[seen] = opening[ys[seen], xs[seen]]
        lip_starts = ts[int(np.argmin(foreign))] if not foreign.all() else 1.0
        margins[k] = np.clip(lip_starts + LIP_EDGE_PAD, MIN_LIP_MARGIN, LIP_MARGIN)
    return margins


def lip_sampling_source(landmarks: NDArray, amount: float, margin: float | NDArray = LIP_MARGIN) -> NDArray[np.float64]:
    """The landmarks to *sample from* when closing or opening lips: inner-lip points pulled
    toward the outer lip by ``margin * amount`` of the lip's thickness (``margin``: one value,
    or one per lip column as :func:`lip_edge_margins` measures them).

    MediaPipe's inner-lip contour runs a little inside the visible teeth at the sides of a smile;
    warping the lips shut from it would leave a line of teeth inside the lips. Sampling the lip
    band from slightly outside that contour leaves the teeth in the (vanishing) opening. Lips
    shut in the photo and opened by the target are sampled from outside their dark meeting line
    (:data:`SEAM_MARGIN`), which is left inside the drawn opening.
    """
    out = np.asarray(landmarks, np.float64).copy()
    if amount > 0:
        # The rows between the contours are squeezed toward the outer one with the inner
        # contour: pulled past them alone, the inner contour turned the lip's mesh over (the
        # warp then gave the folded triangles the smoothed field, which samples across the
        # opening: a band of the photo's teeth along the meeting line, filled with a blur).
        keep = 1.0 - np.broadcast_to(np.asarray(margin, np.float64), (len(LIP_COLUMNS),)) * amount
        for column, k in zip(LIP_COLUMNS, keep):
            outer = out[column[-1]].copy()
            out[list(column[:-1])] = outer + k * (out[list(column[:-1])] - outer)
    return out


def close_lips(landmarks: NDArray[np.float64], amount: float) -> None:
    """Move facing inner-lip points toward their midpoints by ``amount`` (1 = the lips meet), in place.

    A linear rig averages over people, so asking an open mouth for AU25 = 0 leaves a slit in
    which the photo's teeth get squeezed into a line. The target's lips are closed
    geometrically instead: the warp then stretches the lips over the opening and no tooth is left.
    Nothing happens to lips that are already closer than the target asks.
    """
    if amount <= 0:
        return
    for upper, lower in INNER_LIP_PAIRS:
        mid = 0.5 * (landmarks[upper] + landmarks[lower])
        landmarks[upper] += amount * (mid - landmarks[upper])
        landmarks[lower] += amount * (mid - landmarks[lower])


def lip_opening_ratio(landmarks: NDArray) -> float:
    """Inner-lip gap (13-14) over the mouth width (61-291): 0 closed, ~0.1 teeth showing."""
    lm = np.asarray(landmarks, np.float64)
    width = np.linalg.norm(lm[291, :2] - lm[61, :2])
    return float(np.linalg.norm(lm[14, :2] - lm[13, :2]) / max(width, 1e-9))


def _shading_map(model: GeometryModel, field: WarpField, target: NDArray, source_aus: NDArray,
                 target_aus: NDArray, hair: BrowsUnderHair | None = None) -> NDArray[np.float32] | None:
    """(H, W) log-luminance change over the warp box, or None when negligible. Over what ``hair``
    holds (:func:`hold_under_hair`) the brows' AUs draw nothing: no forehead lines or furrow
    across the hair."""
    if model.shading is None or model.config.shading_gain == 0:
        return None
    limit = model.config.max_shading
    # The shading keeps the common gain: a larger per-AU motion gain makes up for slopes that
    # noisy AU labels attenuated in the rig's fit, which the ratio images (fitted on studio
    # pairs) do not need; scaled with it they paint blotches.
    gains = np.minimum(au_gains(model.config), max(model.config.motion_gain, model.config.open_gain))
    log_s = np.clip(model.shading.log_shading(source_aus, target_aus, gains)
                    * model.config.shading_gain, -limit, limit)
    if hair is not None:
        still = np.clip(model.shading.log_shading(source_aus, _still_brows(source_aus, target_aus), gains)
                        * model.config.shading_gain, -limit, limit)
        log_s += _held_texture(hair, log_s.shape[0]) * (still - log_s)
    if np.abs(log_s).max() < MIN_SHADING:
        return None
    return _texture_to_box(log_s, field, target)


def _texture_to_box(texture: NDArray[np.float32], field: WarpField, target: NDArray) -> NDArray[np.float32]:
    """A (T, T) map of the shape-free texture frame carried onto the target face over the warp
    box (H, W), faded where the skin turns away from the camera."""
    if field.extra is None:
        values = np.concatenate([template_pixels(texture.shape[0])[:MESH_POINTS],
                                 visibility(face_pose(target))[:, None]], axis=1)
        extra, inside = field.grid.interpolate(np.asarray(target, np.float64)[:MESH_POINTS, :2], values)
        extra[~inside] = -1e4
    else:
        extra = field.extra
    coarse = cv2.remap(np.ascontiguousarray(texture, np.float32), extra[..., 0], extra[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    # Faded where the skin turns away from the camera, like the motion (ratio images were
    # learned on frontal faces; on the far cheek they would paint a blotch).
    coarse *= np.clip(extra[..., 2], 0.0, 1.0)
    return field.grid.upsample(coarse)


#: How much of a smile's own folds an edit that fully relaxes the smile (:func:`smile_relaxing`)
#: gives back (:func:`facexpr.face.folds.soften_folds`), and the widest fold it lifts (fraction
#: of the face width).
FOLD_SOFTENING = 1.0
FOLD_SCALE = 0.06
#: The smile shading (the happy prototype's AU06 and AU12) darkens a fold's region fully from this
#: log-luminance on; the region starts below the nose tip and leaves the lips and the shadow
#: under the nose out.
FOLD_DARKENING = 0.06
_NOSE_WINGS = (64, 294)
#: Each shading's fold region, keyed by its ratios' id (the ratios kept with it, so the id cannot
#: be reused by another model's while the entry lives).
_fold_regions: dict[int, tuple[NDArray[np.float32], NDArray[np.float32]]] = {}


def fold_region(model: GeometryModel) -> NDArray[np.float32] | None:
    """(T, T) 0..1 weight in the texture frame where a smile folds the skin: the model's own
    smile shading darkens it, below the nose tip, beside the nose (not under it), lips excluded;
    None without shading."""
    if model.shading is None:
        return None
    ratios = model.shading.ratios
    cached = _fold_regions.get(id(ratios))
    if cached is not None and cached[0] is ratios:
        return cached[1]
    size = ratios.shape[1]
    happy = EMOTIONS["happy"]
    smile = np.zeros(len(AU_NAMES), np.float32)
    smile[[_AU06, _AU12]] = happy[[_AU06, _AU12]]
    darkening = -model.shading.log_shading(np.zeros_like(smile), smile)
    region = np.clip(darkening / FOLD_DARKENING, 0.0, 1.0)
    points = template_pixels(size)
    rows = np.arange(size, dtype=np.float32)[:, None]
    region *= np.clip((rows - points[NOSE_TIP, 1]) / (0.03 * size), 0.0, 1.0)
    # Not between the wings of the nose: the shadow under the nose is the nose's, not a fold.
    columns = np.abs(np.arange(size, dtype=np.float32)[None, :] - points[NOSE_TIP, 0])
    half = 0.5 * abs(points[_NOSE_WINGS[1], 0] - points[_NOSE_WINGS[0], 0])
    region *= np.clip((columns - 0.8 * half) / (0.25 * half), 0.0, 1.0)
    lips = np.zeros((size, size), np.uint8)
    cv2.fillPoly(lips, [np.round(points[list(OUTER_LIP)]).astype(np.int32)], 255)
    lips = cv2.dilate(lips, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    region *= 1.0 - cv2.GaussianBlur(lips.astype(np.float32) / 255.0, (0, 0), 0.01 * size)
    region = region.astype(np.float32)
    _fold_regions[id(ratios)] = (ratios, region)
    return region


def _soften_smile_folds(model: GeometryModel, pixels: NDArray[np.uint8], field: WarpField, target: NDArray,
                        source_aus: NDArray, target_aus: NDArray) -> NDArray[np.bool_] | None:
    """Give back the light the photo's smile folds take, as far as the target relaxes the smile."""
    relaxing = FOLD_SOFTENING * smile_relaxing(source_aus, target_aus)
    region = fold_region(model)
    if relaxing <= 0 or region is None:
        return None
    from facexpr.face.folds import soften_folds

    weight = _texture_to_box(region, field, target) * np.float32(relaxing)
    width = float(np.ptp(np.asarray(target, np.float64)[:MESH_POINTS, 0]))
    # Off the target's own lips too: the map is carried on the coarse grid, a few pixels loose at
    # the mouth corners, where a relaxed smile's lips end.
    outline = np.asarray(target, np.float64)[list(OUTER_LIP), :2] - field.box[:2]
    reach = max(0.01 * width, 1.0)
    # Drawn, grown and blurred in a box around the lips only (past the blur's reach the mask is 0).
    pad = int(reach) + int(np.ceil(4.0 * reach)) + 2
    h, w = weight.shape
    x0, y0 = max(int(np.floor(outline[:, 0].min())) - pad, 0), max(int(np.floor(outline[:, 1].min())) - pad, 0)
    x1, y1 = min(int(np.ceil(outline[:, 0].max())) + pad + 1, w), min(int(np.ceil(outline[:, 1].max())) + pad + 1, h)
    if x1 > x0 and y1 > y0:
        lips = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(lips, [np.round((outline - (x0, y0)) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        lips = cv2.GaussianBlur(cv2.dilate(lips, np.ones((2 * int(reach) + 1,) * 2, np.uint8)).astype(np.float32), (0, 0), reach)
        weight[y0:y1, x0:x1] *= 1.0 - np.minimum(2.0 * lips, 1.0)
    return soften_folds(pixels, weight, width, FOLD_SCALE)


def edit_face(model: GeometryModel, image: NDArray[np.uint8], landmarks: NDArray,
              source_aus: NDArray, target_aus: NDArray, look: FaceLook | None = None) -> GeometryEdit | None:
    """Edit one face of ``image`` (H, W, 3 uint8); None when the target changes nothing. ``look``:
    the face's :func:`face_look` in this same photo, when the caller kept it from an earlier edit."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    look = look if look is not None else face_look(model, image, landmarks)
    colours = look.eye_colours
    target = target_landmarks(model, landmarks, source_aus, target_aus, colours is not None, look.hair)
    timings["rig"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    texcoords = None
    if model.shading is not None:  # texture coordinates and visibility ride on the warp's mesh
        texcoords = np.concatenate([template_pixels(model.shading.ratios.shape[1])[:MESH_POINTS],
                                    pose_and_visibility(landmarks)[1][:, None]], axis=1)
    sample_from = landmarks
    closing = closing_amount(source_aus, target_aus)
    opens = opens_mouth(source_aus, target_aus)
    photo_open = lip_opening_ratio(landmarks) > OPEN_LIPS
    from facexpr.face.mouth_interior import photo_teeth_colour

    # The photo's teeth and cavity that its inner contour misses, found once and only when asked
    # for: lips shut over them or around a mouth drawn over them are sampled clear of them, a
    # drawn snarl keeps the teeth among them, and the lips' finishing fills what the warp still
    # carries of them into the lips.
    remnants = functools.cache(lambda: opening_remnants(image, landmarks))
    teeth = functools.cache(lambda: photo_teeth_colour(image, landmarks))  # (the photo's teeth colour, when asked for)
    covers = teeth_shown(target_aus) < 0.5 * teeth_shown(source_aus)
    drawn_mouth = model.config.mouth == "drawn" and draws_mouth(model, landmarks, target, opens, covers, teeth)

    if closing > 0 and photo_open:
        margins = lip_edge_margins(landmarks, remnants())
        sample_from = lip_sampling_source(landmarks, closing, LIP_MARGIN if margins is None else margins)
    elif opens and model.config.mouth == "drawn" and not photo_open:
        sample_from = lip_sampling_source(landmarks, 1.0, SEAM_MARGIN)
    elif drawn_mouth and photo_open:
        # Lips around a mouth drawn over the photo's opening are sampled clear of its teeth and
        # cavity, as lips shut over them are: from the inner contour, which runs inside the
        # teeth at a smile's sides, the warp carried them into the lips, where the finishing
        # could only fill them flat (a pale patch at each corner of a smile made surprised).
        margins = lip_edge_margins(landmarks, remnants())
        sample_from = lip_sampling_source(landmarks, 1.0, LIP_MARGIN if margins is None else margins)
    # The lips' field is computed exactly unless shut lips stay shut (it jumps where lips part).
    field = mesh_warp_field(sample_from, target, image.shape, grid_cells=model.config.grid_cells, extra=texcoords,
                            stretch_eyes=colours is None,
                            exact_lips=not stays_shut(landmarks, source_aus, target_aus),
                            facing=pose_and_visibility(landmarks)[1])
    if field is None:
        grid = face_grid(landmarks, target, image.shape, model.config.grid_cells)
        if grid is None:
            return None
        h, w = grid.box[3] - grid.box[1], grid.box[2] - grid.box[0]
        field = WarpField(grid, np.zeros((h, w, 2), np.float32), np.zeros((h, w), bool))
    x0, y0, x1, y1 = field.box
    original = image[y0:y1, x0:x1, :3]
    pixels = apply_field(image[..., :3], field) if field.moved.any() else original.copy()
    timings["warp"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mask = field.moved.copy()
    shading = _shading_map(model, field, target, source_aus, target_aus, look.hair)
    shaded = np.abs(shading) > MIN_SHADING if shading is not None else None
    if shaded is not None and shaded.any():  # (a small face can carry a map with nothing above it)
        ys, xs = np.nonzero(shaded.any(axis=1))[0], np.nonzero(shaded.any(axis=0))[0]
        sub = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
        # A shadow in the skin's own, redder tint (SHADOW_TINT), more light in its colour (a
        # black-and-white photo's shadows stay grey).
        view = np.ascontiguousarray(pixels[sub])
        log_s = shading[sub]
        darker = np.minimum(log_s, np.float32(0.0))
        lighter = log_s - darker
        tint = (1.0, 1.0, 1.0) if is_grey(view) else SHADOW_TINT.tolist()
        # (Plane by plane in OpenCV: numpy's temporaries over a face box cost 5x the time.)
        planes = [cv2.multiply(plane, cv2.exp(darker * np.float32(k) + lighter), dtype=cv2.CV_32F)
                  for plane, k in zip(cv2.split(view), tint)]
        pixels[sub] = cv2.merge([cv2.convertScaleAbs(p) for p in planes])
        mask |= shaded
    softened = _soften_smile_folds(model, pixels, field, target, source_aus, target_aus)
    if softened is not None:
        mask |= softened
    timings["shading"] = time.perf_counter() - t0

    if colours is not None:
        t0 = time.perf_counter()
        _paint_eyes(pixels, mask, image, colours, landmarks, target, (x0, y0))
        timings["eyes"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    filled = False
    drawn = None
    # Only an expression that opens the mouth gets a mouth interior; the inner-lip polygon of
    # one that pulls the corners (a frown, a stretch) can grow without the lips parting.
    if model.config.mouth == "drawn":
        if drawn_mouth:  # (decided before the warp: draws_mouth)
            drawn = _draw_mouth(model, pixels, mask, image, landmarks, target, (x0, y0), teeth_shown(target_aus),
                                bite=teeth_together(target_aus), remnants=remnants, teeth=teeth,
                                white=None if colours is None else float(colours[0].sclera @ LUMA))  # (same_white: both alike)
        filled = drawn is not None
    elif model.mouth is not None and opens:
        filled = _fill_mouth(model, pixels, mask, landmarks, target, (x0, y0))
    shut = shut_amount(landmarks, source_aus, target_aus)
    if (filled or shut >= 0.5) and photo_open:
        # The photo's opening moved: no tooth of it left in the lips beside a drawn mouth or in
        # lips shut over it, and a seam where shut lips meet. (A mouth that stays open keeps the
        # teeth it shows, even those the inner contour misses at a smile's corners; lips shut in
        # the photo hide no teeth: the dark line where they meet, taken for an opening's
        # remnant, was filled with a flat band of lip colour along a drawn mouth's upper edge.)
        drawn_over = None if drawn is None else pixels[drawn.box[1]:drawn.box[3], drawn.box[0]:drawn.box[2]].copy()
        finished = finish_lips(pixels, remnants(), field.offsets, (x0, y0), target,
                               seam=0.0 if filled else shut,
                               drawn=None if drawn is None else drawn.covered(pixels.shape))
        if finished is not None:
            if drawn is not None:
                drawn.redraw_rim(pixels, drawn_over)
            mask |= finished
    if filled and model.config.mouth == "drawn":  # after the lips are finished: their edge
        from facexpr.face.mouth_interior import shade_opening_edge

        edge = shade_opening_edge(pixels, np.asarray(target, np.float64)[:, :2] - (x0, y0))
        if edge is not None:
            mask |= edge
    timings["mouth"] = time.perf_counter() - t0
    if not mask.any():
        return None
    copy_where(pixels, original, ~mask)
    return GeometryEdit(field.box, pixels, mask, target, timings, filled)


def _paint_eyes(pixels: NDArray[np.uint8], mask: NDArray[np.bool_], image: NDArray[np.uint8],
                colours: tuple[EyeColours, ...], source: NDArray, target: NDArray, origin: tuple[int, int]) -> None:
    """Paint the eyeball each raised upper lid uncovers (in place); the warp kept the eyes rigid,
    shifted by the mean motion of their corners."""
    src = np.asarray(source, np.float64)
    dst = np.asarray(target, np.float64)
    for eye, lids in enumerate(EYES):
        shift = dst[list(lids.corners), :2].mean(0) - src[list(lids.corners), :2].mean(0)
        changed = open_eye(pixels, image, colours[eye], src, dst, shift, eye, origin)
        if changed is not None:
            mask |= changed


#: A photo that shows teeth keeps them (warped) while the opening grows by at most this factor
#: in area and the lips part by at most :data:`REUSE_TEETH_STRETCH` times as far: beyond that the
#: warp draws the photo's teeth out into long streaks (a grin asked to become angry parts the lips
#: further but narrows the mouth, so its area hardly grows).
REUSE_TEETH_RATIO = 1.8
REUSE_TEETH_STRETCH = 1.4
#: The inner-lip pairs in the middle of the mouth, where the teeth show.
_MID_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))


def teeth_stretch(source: NDArray, target: NDArray) -> float:
    """How many times further apart the lips are in the middle of the mouth in ``target`` than in
    ``source``: how much the warp would stretch the photo's teeth vertically."""
    def gap(lm: NDArray) -> float:
        lm = np.asarray(lm, np.float64)
        return float(np.mean([np.linalg.norm(lm[a, :2] - lm[b, :2]) for a, b in _MID_LIP_PAIRS]))
    return gap(target) / max(gap(source), 1e-6)


def teeth_shown(target_aus: NDArray) -> float:
    """0..1: how much of the upper teeth the target's upper lip uncovers. The upper lip covers
    the crowns unless it is raised (AU10) or pulled into a smile (AU12); a dropped jaw alone
    shows only their edges."""
    return float(np.clip(max(float(target_aus[_AU10]), float(target_aus[_AU12])) / 3.0, 0.0, 1.0))


def teeth_together(target_aus: NDArray) -> float:
    """0..1: how closed the target's jaw is: lips parted without the jaw dropping (AU25 without
    AU26: a snarl, a grin) show the lower teeth under the upper ones."""
    return float(np.clip(1.0 - float(target_aus[_AU26]) / 1.5, 0.0, 1.0))


def _opens_wider(model: GeometryModel, source: NDArray, target: NDArray) -> bool:
    """Whether the target's lips open wider than the photo's (by ``mouth_open_ratio``)."""
    from facexpr.face.mouth import lip_opening

    before = lip_opening(source)
    return lip_opening(target) > max(before * model.config.mouth_open_ratio, before + 0.002)


def _mouth_box(target: NDArray, origin: tuple[int, int], shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The box (in the warped box's pixels) around the target's lips where a mouth fill
    happens: the lips grown by 0.7 of their width (a network's mouth crop fits inside); None
    when it is degenerate."""
    lips = np.asarray(target, np.float64)[list(OUTER_LIP), :2] - origin
    pad = 0.7 * float(np.ptp(lips[:, 0]))
    h, w = shape[:2]
    x0, y0 = max(int(lips[:, 0].min() - pad), 0), max(int(lips[:, 1].min() - pad), 0)
    x1, y1 = min(int(lips[:, 0].max() + pad) + 1, w), min(int(lips[:, 1].max() + pad) + 1, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    return x0, y0, x1, y1


@dataclass
class DrawnMouth:
    """A mouth interior drawn into the warped pixels (:func:`_draw_mouth`): over ``box`` (x0, y0,
    x1, y1 in those pixels), its blend ``weight`` (1 inside the opening, between 0 and 1 along its
    anti-aliased rim) and the pixels it was drawn over (``under``)."""

    box: tuple[int, int, int, int]
    weight: NDArray[np.float32]
    under: NDArray[np.uint8]

    def covered(self, shape: tuple[int, ...]) -> NDArray[np.bool_]:
        """(H, W) over pixels of ``shape``: what the drawing covers whole (its rim left out)."""
        x0, y0, x1, y1 = self.box
        out = np.zeros(shape[:2], bool)
        out[y0:y1, x0:x1] = self.weight >= 1.0
        return out

    def redraw_rim(self, pixels: NDArray[np.uint8], drawn: NDArray[np.uint8]) -> None:
        """Blend the drawing's rim again over what changed under it since it was drawn, in place:
        ``pixels`` over :attr:`box` held ``drawn`` (``weight`` of the drawing over :attr:`under`),
        and a rim pixel that has since been refilled (the lip finished around the opening) takes
        the drawing's share over its new value. (Left as drawn, the rim kept the photo's teeth
        and cavity that the warp had carried under it: a line of light and dark pixels stepping
        along the drawn opening's smooth edge.)"""
        x0, y0, x1, y1 = self.box
        view = pixels[y0:y1, x0:x1]
        rim = (self.weight > 0) & (self.weight < 1) & (view != drawn).any(axis=2)
        if not rim.any():
            return
        keep = (1.0 - self.weight[rim])[:, None]
        new = drawn[rim].astype(np.float32) + keep * (view[rim].astype(np.float32) - self.under[rim].astype(np.float32))
        view[rim] = np.clip(new + 0.5, 0, 255).astype(np.uint8)


def draws_mouth(model: GeometryModel, source: NDArray, target: NDArray, opens: bool, covers: bool,
                teeth: Callable[[], NDArray[np.float32] | None]) -> bool:
    """Whether :func:`_draw_mouth` is asked to draw an interior into the target's opening
    rather than leave the warped photo's there: the lips part further (``opens``) and
    wider than the photo's by ``mouth_open_ratio``, or the warp would stretch the photo's teeth
    beyond :data:`REUSE_TEETH_STRETCH`, or the target's upper lip ``covers`` the crowns the photo
    shows while the lips part further; but not where the photo's own teeth (``teeth()``: their
    colour, None where it shows none; asked for only when it matters) stretch over an opening at
    most :data:`REUSE_TEETH_RATIO` times the photo's, nor where the photo shows no teeth and the
    lips part no wider. Known before the warp, which samples the lips around a drawn mouth clear
    of the photo's opening."""
    from facexpr.face.mouth import lip_opening

    wider = opens and _opens_wider(model, source, target)
    stretch = teeth_stretch(source, target) > REUSE_TEETH_STRETCH
    if not (wider or stretch or (covers and opens)):
        return False  # (whatever teeth the photo shows: their colour is not looked for)
    colour = teeth()
    covers = covers and opens and colour is not None
    if colour is None and not (wider or stretch):
        return False  # no teeth of the photo's to keep, and the lips part no further
    # (Otherwise the warp stretches the photo's own teeth over a moderately wider opening.)
    return not (colour is not None and not stretch and not covers
                and lip_opening(target) <= REUSE_TEETH_RATIO * lip_opening(source))


def _draw_mouth(model: GeometryModel, pixels: NDArray[np.uint8], mask: NDArray[np.bool_], image: NDArray[np.uint8],
                source: NDArray, target: NDArray, origin: tuple[int, int], show: float = 1.0,
                bite: float = 0.0, white: float | None = None, *,
                remnants: Callable[[], tuple[NDArray[np.bool_], tuple[int, int]] | None],
                teeth: Callable[[], NDArray[np.float32] | None]) -> DrawnMouth | None:
    """Draw teeth, cavity and tongue in the target inner-lip polygon (in place;
    :mod:`facexpr.face.mouth_interior`), for a mouth :func:`draws_mouth` says is drawn: the lips
    part wider than in the photo, or the warp would stretch the photo's teeth beyond
    :data:`REUSE_TEETH_STRETCH` (then they are drawn even when the target's AUs do not open the
    mouth: a grin turned into a snarl), or the target's upper lip covers the crowns the photo
    shows (a laugh made surprised keeps only the teeth's edges: the laugh's whole row of teeth
    would keep it a laugh); a photo's teeth stretched over an opening at most
    :data:`REUSE_TEETH_RATIO` times its own are kept, warped, and nothing is drawn. A drawn
    mouth whose jaw stays closed (``bite``)
    shows the photo's teeth where they are (:func:`_keep_still_teeth`), found among ``remnants()``
    (the photo's :func:`~facexpr.face.closed_lips.opening_remnants`, found once per edit); ``teeth()``
    is their colour (:func:`draws_mouth`). ``white`` is the luma of
    the photo's eye whites (drawn teeth are lit like them), or None. Returns what was drawn
    (:class:`DrawnMouth`), or None."""
    from facexpr.face.mouth import lip_opening
    from facexpr.face.mouth_interior import draw_mouth_interior, mouth_look, opening_polygon

    box = _mouth_box(target, origin, pixels.shape)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    local = np.asarray(target, np.float64)[:, :2] - (origin[0] + x0, origin[1] + y0)
    view = pixels[y0:y1, x0:x1]
    # Teeth glimpsed between barely parted lips are in their shade and take their tint: the
    # drawing takes its own colour balance then (GLIMPSE).
    look = mouth_look(view, local, teeth() if lip_opening(source) >= GLIMPSE else None, show, bite, white)
    at = (origin[0] + x0, origin[1] + y0)
    still, width = None, 0.0
    if teeth() is not None and bite >= STILL_BITE:
        width = mouth_axes(source)[3]  # (the photo's mouth)
        still = _still_teeth(image, remnants(), width, at, view.shape[:2])
    edge = None
    if still is not None:  # (its upper row's edge within the opening drawn: the mask can reach the lips)
        opening = np.zeros(still.shape, np.uint8)
        cv2.fillPoly(opening, [np.round(opening_polygon(local) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        edge = _upper_row_edge(still * opening)
        if edge is None:  # patches that are no row of teeth: kept amid a drawn row, they floated over it
            still = None
    drawn, weight = draw_mouth_interior(np.ascontiguousarray(view), local, look, seed=int(x1 - x0), held_edge=edge)
    if still is not None:
        kept = _keep_still_teeth(drawn, weight, view, image, still, width, at)
        if kept is None and edge is not None:  # too few of them to keep: drawn whole after all
            drawn, weight = draw_mouth_interior(np.ascontiguousarray(view), local, look, seed=int(x1 - x0))
        elif kept is not None:
            drawn = kept
    if is_grey(view):  # a black-and-white photo gets a black-and-white mouth
        drawn[...] = cv2.cvtColor(drawn, cv2.COLOR_RGB2GRAY)[..., None]
    changed = weight > 0
    if not changed.any():
        return None
    under = view.copy()
    view[...] = drawn
    mask[y0:y1, x0:x1] |= changed
    return DrawnMouth((x0, y0, x1, y1), weight, under)


#: A photo whose lips part less than this (:func:`~facexpr.face.mouth.lip_opening`) shows its teeth
#: only in a glimpse, whose colour is not theirs: the median colour of the teeth-like pixels there
#: is 0.68-0.76 of the drawing's light for the teeth on three of the four shared portraits with
#: such a glimpse (lips parted 0.015-0.022; 051340's lavender-grey, 172559's brown), against
#: 0.81-1.07 (median 0.93) where a smile shows a row (0.029 and more); drawn in it, the teeth were
#: grey-brown.
GLIMPSE = 0.025
#: A drawn mouth whose jaw stays closed (``bite`` from this) keeps the teeth the photo shows where
#: they are (:func:`_keep_still_teeth`) when they cover at least :data:`STILL_SHARE` of the
#: drawn opening; patches of them smaller than :data:`STILL_PATCH` of the mouth width squared
#: (a glimpse between the lips, a highlight on them) are drawn over.
STILL_BITE = 0.5
STILL_SHARE = 0.3
STILL_PATCH = 0.08
#: A row's edge strays from its fitted curve by at most this share of the row's width (median).
TEETH_EDGE_SPREAD = 0.02
#: The kept teeth's outline is pulled in by this fraction of the mouth width and feathered.
STILL_INSET = 0.01


def _still_teeth(image: NDArray[np.uint8], remnants: tuple[NDArray[np.bool_], tuple[int, int]] | None,
                 width: float, at: tuple[int, int], shape: tuple[int, int]) -> NDArray[np.float32] | None:
    """The teeth the photo shows (``remnants``: its
    :func:`~facexpr.face.closed_lips.opening_remnants`) over a box of ``shape`` at ``at`` (image
    pixels), 0 or 1, without patches smaller than :data:`STILL_PATCH` of the mouth ``width``
    (the photo's, :func:`~facexpr.face.mouth.mouth_axes`) squared (a glimpse between the lips, a
    highlight on them); None where none show."""
    from facexpr.face.closed_lips import shown_teeth

    found = shown_teeth(image, remnants)
    if found is None:
        return None
    shown, (sx, sy) = found
    h, w = shape
    ox, oy = sx - at[0], sy - at[1]  # the mask's origin in the box
    ya, xa = max(oy, 0), max(ox, 0)
    yb, xb = min(oy + shown.shape[0], h), min(ox + shown.shape[1], w)
    if yb <= ya or xb <= xa:
        return None
    keep = np.zeros((h, w), np.uint8)
    keep[ya:yb, xa:xb] = shown[ya - oy:yb - oy, xa - ox:xb - ox]
    _, labels, stats, _ = cv2.connectedComponentsWithStats(keep, connectivity=8)
    large = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= (STILL_PATCH * width) ** 2)
    keep = np.isin(labels, large[large > 0]).astype(np.float32)
    return keep if keep.any() else None


def _upper_row_edge(teeth: NDArray[np.float32]) -> NDArray[np.float64] | None:
    """Where the upper row of ``teeth`` (a 0/1 mask) ends, as a smooth curve of (x, y) pixel
    points over its columns: per column the bottom of the first run of teeth from the top, fitted
    with a parabola (the row's edges follow the smile's curve; the notches between two crowns,
    a lip's highlight cutting a run short, are not the row's edge); None for too few columns.
    (Where the photo shows both rows touching, the run takes in the lower one: its edge is
    then the lower row's, and the drawn teeth are hidden behind the photo's there anyway.)"""
    m = teeth > 0.5
    cols = np.flatnonzero(m.any(axis=0))
    if len(cols) < 8:
        return None
    m = m[:, cols]
    rows = np.arange(m.shape[0])[:, None]
    below_top = rows >= m.argmax(axis=0)[None, :]
    run = m & below_top & (np.cumsum(~m & below_top, axis=0) == 0)
    bottom = (m.shape[0] - 1 - run[::-1].argmax(axis=0)).astype(np.float64) + 0.5
    x = cols.astype(np.float64)
    use = np.ones(len(x), bool)
    for _ in range(3):  # refitted without the columns far above the curve (cut-short runs)
        fit = np.polyfit(x[use], bottom[use], 2)
        off = bottom - np.polyval(fit, x)
        spread = float(np.median(np.abs(off[use])))
        use = off > -2.5 * max(spread, 0.5)
    # Not a row's edge at all (the mask is no row of teeth): nothing is held. (Half a pixel
    # is within any row's reach: a small face's row is a few dozen columns wide.)
    if use.mean() < 0.6 or spread > max(TEETH_EDGE_SPREAD * len(cols), 0.5):
        return None
    return np.stack([x, np.polyval(fit, x)], axis=1)


def _keep_still_teeth(drawn: NDArray[np.uint8], weight: NDArray[np.float32], view: NDArray[np.uint8],
                      image: NDArray[np.uint8], keep: NDArray[np.float32], width: float,
                      at: tuple[int, int]) -> NDArray[np.uint8] | None:
    """``drawn`` (a mouth interior drawn over ``view``, with its blend ``weight``) showing the
    photo's own teeth ``keep`` (:func:`_still_teeth`) where the photo shows them: the upper teeth
    are fixed to the skull and, while the jaw stays, the lower ones too, so lips parting further
    (a grin made into a snarl) uncover more of the same teeth, at their place and size, not new
    ones. Only what the photo does not show is drawn (more crown, the lower row, the corners).
    ``at``: ``view``'s origin in ``image``; ``width``: the photo's mouth width. None when the
    photo shows too little of its teeth (less than :data:`STILL_SHARE` of the drawn opening)."""
    if keep.sum() < STILL_SHARE * float((weight > 0.5).sum()):
        return None
    h, w = view.shape[:2]
    k = max(int(round(STILL_INSET * width)), 1)
    keep = cv2.erode(keep, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    keep = cv2.GaussianBlur(keep, (0, 0), max(0.5 * k, 0.7))[..., None]
    photo = image[at[1]:at[1] + h, at[0]:at[0] + w, :3].astype(np.float32)
    alpha = weight[..., None]  # the opening's anti-aliased edge blends the photo's teeth like the drawing
    out = drawn * (1.0 - keep) + keep * (alpha * photo + (1.0 - alpha) * view)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _fill_mouth(model: GeometryModel, pixels: NDArray[np.uint8], mask: NDArray[np.bool_], source: NDArray,
                target: NDArray, origin: tuple[int, int]) -> bool:
    """Fill the target inner-lip polygon in ``pixels`` (in place) when the lips open wider."""
    from facexpr.face.align import matrix_scale
    from facexpr.face.mouth import mouth_frame
    from facexpr.models.mouth import fill_mouth

    if not _opens_wider(model, source, target):
        return False
    box = _mouth_box(target, origin, pixels.shape)
    if box is None:
        return False
    x0, y0, x1, y1 = box
    local = np.asarray(target, np.float64).copy()
    local[:, 0] -= origin[0] + x0
    local[:, 1] -= origin[1] + y0
    view = pixels[y0:y1, x0:x1]
    with _torch_threads(1):  # a 64 px network: threads only add synchronisation (and stall on a busy CPU)
        filled = fill_mouth(model.mouth, np.ascontiguousarray(view), local)
    fill = (filled != view).any(axis=2)
    if not fill.any():
        return False
    cfg = model.mouth.config
    magnification = 1.0 / matrix_scale(mouth_frame(local, cfg.size, width_fraction=cfg.width_fraction))
    filled = _match_detail(filled, view, fill, magnification)
    if is_grey(view):  # a black-and-white photo gets a black-and-white mouth
        filled[...] = cv2.cvtColor(filled, cv2.COLOR_RGB2GRAY)[..., None]
    view[...] = filled
    mask[y0:y1, x0:x1] |= fill
    return True


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _match_detail(filled: NDArray[np.uint8], photo: NDArray[np.uint8], fill: NDArray[np.bool_],
                  magnification: float) -> NDArray[np.uint8]:
    """Give an upsampled mouth fill the photo's crispness and grain.

    The network paints a 64 px mouth crop; on a large face that is magnified several times and
    reads as out of focus next to sharp lips. An unsharp mask at the magnification's scale
    restores edges (the teeth band, the cavity's rim), noise with the photo's own high-frequency
    level on the lips keeps the fill from looking smoothed over, and a soft shadow along the lips
    (an opening is darkest at its rim and corners) seats the fill inside the mouth. ``magnification``
    is photo pixels per network pixel.
    """
    if magnification < 1.5:
        return filled
    ys, xs = np.nonzero(fill)
    pad = int(3 * magnification) + 2
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, fill.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, fill.shape[1])
    sub = filled[y0:y1, x0:x1].astype(np.float32)
    sigma = 0.8 * magnification
    sharp = sub + 1.5 * (sub - cv2.GaussianBlur(sub, (0, 0), sigma))
    # Grain: the photo's own high-frequency level just around the opening.
    ref = photo[y0:y1, x0:x1].astype(np.float32)
    hf = ref - cv2.GaussianBlur(ref, (0, 0), 1.0)
    around = ~fill[y0:y1, x0:x1]
    level = float(np.median(np.abs(hf[around]))) * 1.25 if around.any() else 0.0
    rng = np.random.default_rng(int(fill.sum()))
    noise = rng.normal(0.0, level, sub.shape[:2]).astype(np.float32)[..., None]
    # Ambient occlusion: an opening is shadowed along the lips and deepest in the corners.
    sel = fill[y0:y1, x0:x1]
    depth = cv2.distanceTransform(sel.astype(np.uint8), cv2.DIST_L2, 5)
    t = np.clip(depth / max(float(depth.max()) * 0.6, 1e-6), 0.0, 1.0)
    shade = (0.6 + 0.4 * t * t * (3 - 2 * t))[..., None]
    out = filled.copy()
    out[y0:y1, x0:x1][sel] = np.clip(sharp * shade + noise, 0, 255)[sel].astype(np.uint8)
    return out


def is_grey(rgb: NDArray[np.uint8]) -> bool:
    """Whether every pixel of an RGB(A) image has R == G == B."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
