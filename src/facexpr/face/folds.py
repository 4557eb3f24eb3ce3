"""Softening the skin folds a smile leaves in the photo, for an edit that relaxes the smile.

The warp moves a smile's mouth corners back and the shading lightens the average place where
smiles fold the skin, but the photo's own folds (the nasolabial creases, the bulge of a raised
cheek, the dimple at the mouth corner) are where this person's skin folded, sharper and deeper
than any average: warped along, they keep the face smiling. :func:`soften_folds` gives back the
light a fold takes from the skin around it:

* a fold is a fold-scale shadow: the luma seen at fine scale (a blur of ``FINE`` of the face
  width, against grain) falls below the luma of its surroundings (a blur of ``scale`` of the
  face width); the deficit is what the fold takes;
* hair is not skin: a dark strand, a beard or a moustache has a lower red share of R+G+B than
  the skin around it, where a shadow on skin keeps (or raises) it, so pixels whose red share
  falls below their surroundings' by ``HAIR_RED_DROP`` are left alone, and so are pixels far
  darker than any crease (``FOLD_LIGHT``: black hair of a warm tint keeps skin's red share);
* the light given back has the colour of the surrounding skin (its RGB over its luma), so a
  lifted fold turns skin-coloured rather than ashen (lifting luma alone) or red (scaling RGB of a
  deep shadow);
* a crease is redder than the skin around it (light scattered under the skin: R, G, B of a
  smile's fold at 0.60, 0.42, 0.33 of its surroundings on a 1024 px portrait), and that red goes
  with the shadow: the fold-scale colour's departure from the surroundings' chromaticity is
  taken out as far as the fold is lifted (with the light alone, a relaxed smile kept its folds
  as thin orange lines).

The caller says where (a 0..1 weight map: the pipeline uses where the model's own smile shading
darkens the skin, lips excluded) and how much.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.face.align import LUMA

__all__ = ["FINE", "FOLD_LIGHT", "HAIR_RED_DROP", "soften_folds"]

#: The blur (fraction of the face width) that the fine-scale luma takes, against grain and pores.
FINE = 0.004
#: A pixel whose red share of R+G+B is more than this below its surroundings' is taken for hair
#: by degrees (fully hair from twice this).
HAIR_RED_DROP = 0.012
#: The fine blur's sigma (px) on the copy the work is done on (see :func:`soften_folds`).
WORK_SIGMA = 0.9
#: Skin at the fold's scale is at least this share of its surroundings' luma: a smile's deepest
#: crease measured is 0.48 (142595's nasolabial fold), and of all the light the relaxed smiles of
#: the shared portraits got back, under 5 % went to pixels darker than 0.35 of their surroundings
#: (a few mouth corners) but for two faces: 77 % of 048197's went to the black hair beside its
#: cheek and 4 % of 164930's to its black beard, both as dark as skin's red share says skin is
#: (hair of a warm black). Lifted, they turned into grey-brown blurs. Pixels darker than the
#: first share of their surroundings are left as they are, fully lifted from the second.
FOLD_LIGHT = (0.25, 0.35)
#: A fold this deep (its deficit as a share of the surroundings' luma) has its colour taken out in
#: full with its shadow; shallower ones (grain, pores) in proportion.
FOLD_DEPTH = 0.1
#: Weights below this are treated as outside the region.
_MIN_WEIGHT = 0.01
_ONES = np.ones((1, 3), np.float32)


def _blur(values: NDArray[np.float32], sigma: float) -> NDArray[np.float32]:
    """Gaussian blur; a wide one runs on a copy shrunk to ~4 px per sigma and is enlarged back
    (the result is smooth at that scale: the same to a fraction of a level, ~20x faster)."""
    shrink = int(sigma // 4)
    if shrink < 2:
        return cv2.GaussianBlur(values, (0, 0), sigmaX=max(sigma, 0.3), borderType=cv2.BORDER_REFLECT)
    h, w = values.shape[:2]
    small = cv2.resize(values, (max(w // shrink, 1), max(h // shrink, 1)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / shrink, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def soften_folds(pixels: NDArray[np.uint8], weight: NDArray[np.float32], face_width: float,
                 scale: float) -> NDArray[np.bool_] | None:
    """Lighten the fold-scale shadows of ``pixels`` (H, W, 3 uint8 RGB, in place) by ``weight``,
    taking their own redder colour out with them (a channel can come down: anything on skin that
    is darker and redder than its surroundings at the fold's scale, a freckle or a mole too, is
    brought toward the skin's colour as far as it is lifted).

    Args:
        pixels: the image (or a box of it); changed in place.
        weight: (H, W) how much of each pixel's fold deficit is given back, 0..1.
        face_width: the face's width in pixels (sets the blurs).
        scale: the surroundings' blur as a fraction of the face width (the widest fold lifted).

    Returns:
        The (H, W) mask of pixels that changed, or None when none did.
    """
    inside = weight > _MIN_WEIGHT
    rows = np.flatnonzero(inside.any(axis=1))
    if not len(rows):
        return None
    coarse = scale * face_width
    pad = int(np.ceil(2.0 * coarse))
    cols = np.flatnonzero(inside[rows[0]:rows[-1] + 1].any(axis=0))
    y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, pixels.shape[0])
    x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, pixels.shape[1])
    # Worked out on a copy shrunk so the fine blur is ~1 px (a 1024 px portrait: half size), then
    # the light to add is enlarged back: 4x fewer pixels, folds a few pixels wide still resolved.
    k = max(int(FINE * face_width / WORK_SIGMA), 1)
    h, w = y1 - y0, x1 - x0
    box = pixels[y0:y1, x0:x1]
    if k > 1:
        size = (max(w // k, 1), max(h // k, 1))
        rgb = cv2.resize(box, size, interpolation=cv2.INTER_AREA).astype(np.float32)
        share = cv2.resize(np.ascontiguousarray(weight[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA)
    else:
        rgb, share = box.astype(np.float32), weight[y0:y1, x0:x1]
    width = face_width / k
    fine_rgb = _blur(rgb, FINE * width)
    fine = cv2.transform(fine_rgb, LUMA[None, :])
    around = _blur(rgb, scale * width)
    around_luma = cv2.transform(around, LUMA[None, :])
    deficit = np.maximum(around_luma - fine, 0.0)

    red = rgb[..., 0] / np.maximum(cv2.transform(rgb, _ONES), 1.0)
    red_around = around[..., 0] / np.maximum(cv2.transform(around, _ONES), 1.0)
    skin = np.clip(2.0 - (red_around - red) / HAIR_RED_DROP, 0.0, 1.0)
    skin *= np.clip((fine / np.maximum(around_luma, 1.0) - FOLD_LIGHT[0]) / (FOLD_LIGHT[1] - FOLD_LIGHT[0]), 0.0, 1.0)

    lift = deficit * skin * share
    tint = around / np.maximum(around_luma, 1.0)[..., None]
    # The fold's own colour goes with its shadow: the fine-scale colour's departure from the
    # surroundings' chromaticity at its own luma (no luma of its own: LUMA @ tint is 1), taken
    # out as far as the fold is lifted, in full from a fold FOLD_DEPTH deep.
    excess = fine_rgb - fine[..., None] * tint
    depth = np.minimum(deficit / np.maximum(FOLD_DEPTH * around_luma, 1.0), 1.0)
    add = lift[..., None] * tint - (skin * share * depth)[..., None] * excess
    peak = np.maximum(np.maximum(np.abs(add[..., 0]), np.abs(add[..., 1])), np.abs(add[..., 2]))
    if k > 1:  # (enlarged, the channels' peak bounds each channel's: the mask misses no change)
        peak = cv2.resize(peak, (w, h), interpolation=cv2.INTER_LINEAR)
        add = cv2.resize(add, (w, h), interpolation=cv2.INTER_LINEAR)
    # The change is rounded to whole levels (from half a level on): only those pixels change.
    changed = peak >= 0.5
    if not changed.any():
        return None
    out = box.astype(np.int16) + np.round(add).astype(np.int16)
    pixels[y0:y1, x0:x1] = np.clip(out, 0, 255).astype(np.uint8)
    mask = np.zeros(pixels.shape[:2], bool)
    mask[y0:y1, x0:x1] = changed
    return mask
