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

import time
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.face.align import template_pixels
from facexpr.face.warp import MESH_POINTS, WarpField, apply_field, face_grid, face_pose, mesh_warp_field, visibility
from facexpr.models.geometry import GeometryModel

#: Shading below this (|log| change, i.e. ~0.4 %) is not applied: keeps far skin byte-identical.
MIN_SHADING = 0.004


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


def target_landmarks(model: GeometryModel, landmarks: NDArray, source_aus: NDArray,
                     target_aus: NDArray) -> NDArray[np.float64]:
    """Where the face's landmarks move for ``target_aus``: (478, 3) image pixels."""
    lm = np.asarray(landmarks, np.float64)
    cfg = model.config
    motion = model.rig.motion(source_aus, target_aus).astype(np.float64) * cfg.motion_gain
    norm = np.linalg.norm(motion, axis=1, keepdims=True)
    motion *= np.minimum(1.0, cfg.max_motion / np.maximum(norm, 1e-12))
    pose = face_pose(lm)
    img_motion = pose.motion_to_image(motion)
    vis = visibility(pose)
    img_motion[:MESH_POINTS] *= vis[:, None]
    img_motion[MESH_POINTS:] = img_motion[[133] * 5 + [362] * 5]  # irises ride with their eye
    return lm + img_motion


def _shading_map(model: GeometryModel, field: WarpField, target: NDArray, source_aus: NDArray,
                 target_aus: NDArray) -> NDArray[np.float32] | None:
    """(H, W) log-luminance change over the warp box, or None when negligible."""
    if model.shading is None or model.config.shading_gain == 0:
        return None
    limit = model.config.max_shading
    log_s = np.clip(model.shading.log_shading(source_aus, target_aus) * model.config.shading_gain, -limit, limit)
    if np.abs(log_s).max() < MIN_SHADING:
        return None
    size = log_s.shape[0]
    tex, inside = field.grid.interpolate(np.asarray(target, np.float64)[:MESH_POINTS, :2],
                                         template_pixels(size)[:MESH_POINTS])
    coarse = cv2.remap(log_s, tex[..., 0], tex[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    coarse[~inside] = 0.0
    return field.grid.upsample(coarse)


def edit_face(model: GeometryModel, image: NDArray[np.uint8], landmarks: NDArray,
              source_aus: NDArray, target_aus: NDArray) -> GeometryEdit | None:
    """Edit one face of ``image`` (H, W, 3 uint8); None when the target changes nothing."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    target = target_landmarks(model, landmarks, source_aus, target_aus)
    timings["rig"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    field = mesh_warp_field(landmarks, target, image.shape, grid_cells=model.config.grid_cells)
    if field is None:
        grid = face_grid(landmarks, target, image.shape, model.config.grid_cells)
        if grid is None:
            return None
        h, w = grid.box[3] - grid.box[1], grid.box[2] - grid.box[0]
        field = WarpField(grid, np.zeros((h, w, 2), np.float32), np.zeros((h, w), bool))
    x0, y0, x1, y1 = field.box
    original = image[y0:y1, x0:x1, :3]
    warped = apply_field(image[..., :3], field) if field.moved.any() else original.astype(np.float32)
    timings["warp"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mask = field.moved.copy()
    shading = _shading_map(model, field, target, source_aus, target_aus)
    if shading is not None:
        shaded = np.abs(shading) > MIN_SHADING
        warped[shaded] *= np.exp(shading[shaded])[:, None]
        mask |= shaded
    timings["shading"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pixels = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    filled = False
    if model.mouth is not None:
        filled = _fill_mouth(model, pixels, mask, landmarks, target, (x0, y0))
    timings["mouth"] = time.perf_counter() - t0
    if not mask.any():
        return None
    pixels[~mask] = original[~mask]
    return GeometryEdit(field.box, pixels, mask, target, timings, filled)


def _fill_mouth(model: GeometryModel, pixels: NDArray[np.uint8], mask: NDArray[np.bool_], source: NDArray,
                target: NDArray, origin: tuple[int, int]) -> bool:
    """Fill the target inner-lip polygon in ``pixels`` (in place) when the lips open wider."""
    from facexpr.face.mouth import inner_lip_polygon, lip_opening, polygon_mask
    from facexpr.models.mouth import fill_mouth

    before = lip_opening(source)
    after = lip_opening(target)
    if after <= max(before * model.config.mouth_open_ratio, before + 0.002):
        return False
    local = np.asarray(target, np.float64).copy()
    local[:, 0] -= origin[0]
    local[:, 1] -= origin[1]
    fill = polygon_mask(inner_lip_polygon(local), pixels.shape[:2], feather_px=1.0)
    if not (fill > 0).any():
        return False
    pixels[...] = fill_mouth(model.mouth, pixels, local, fill)
    mask |= fill > 0
    return True
