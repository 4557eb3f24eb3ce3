"""Closed-form fitting of the geometry-driven model: the expression rig and the shading layer.

Both are ridge regressions on real faces with *each person's own neutral face removed*, so what
is learned is expression, not identity:

* rig: ``canonical_shape(photo) - canonical_shape(person's neutral)`` (478 x 3 template-frame
  motion) against ``aus(photo) - aus(person's neutral)``; each AU only acts in its FACS region
  (:data:`facexpr.models.geometry.AU_BANDS`), and the basis is made left-right symmetric (our AUs
  are bilateral).
* shading: the same people's photos warped to the template geometry (a shape-free texture); the
  change of smoothed log luminance from neutral to each posed emotion, shared out among the AUs
  of that emotion's FACS prototype; eyes and lips are excluded (the eye painter and the mouth own
  them).

Only the training identities of the identity-disjoint split are used; :func:`rig_report`
measures the fit on the validation people.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from facexpr.errors import DatasetError
from facexpr.expression import AU_NAMES, EMOTIONS, emotion_aus
from facexpr.face.align import LEFT_EYE_IDX, RIGHT_EYE_IDX, mean_face, template_pixels
from facexpr.face.warp import IRIS_ANCHORS, MESH_POINTS, OUTER_LIP, face_pose, interpolate_on_mesh, mirror_pairs
from facexpr.models.geometry import ExpressionRig, ShadingLayer, band_mask, compose_unobserved, register_to_bone

#: Face regions for the fit report (template y bands and x ranges are not needed: index sets).
REGIONS: dict[str, tuple[int, ...]] = {
    "brows": (70, 63, 105, 66, 107, 55, 65, 52, 53, 46, 300, 293, 334, 296, 336, 285, 295, 282, 283, 276),
    "eyes": RIGHT_EYE_IDX + LEFT_EYE_IDX,
    "nose": (1, 2, 4, 5, 6, 45, 275, 98, 327, 97, 326, 168, 197, 195),
    "mouth": (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185,
              191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409, 415),
    "cheeks": (50, 101, 118, 117, 123, 147, 187, 205, 280, 330, 347, 346, 352, 376, 411, 425),
    "jaw": (152, 148, 176, 149, 150, 136, 172, 58, 377, 400, 378, 379, 365, 397, 288, 199, 175),
}


def canonical_shapes(landmarks: NDArray) -> NDArray[np.float64]:
    """(N, 478, 3) template-frame shapes of (N, 478, 3) landmarks (NaN rows stay NaN)."""
    out = np.full(landmarks.shape, np.nan)
    for i, lm in enumerate(landmarks):
        if np.isfinite(lm).all():
            out[i] = face_pose(lm).to_canonical(lm)
    return out


@dataclass
class Pairs:
    """Expression-minus-own-neutral samples: AU deltas and the rows they came from."""

    rows: NDArray[np.int64]  #: dataset row of the expressive photo
    neutral: list[list[int]]  #: the person's neutral rows (averaged)
    daus: NDArray[np.float32]  #: (M, 17)


def neutral_pairs(dataset: Any, rows: NDArray, ok: NDArray[np.bool_], max_yaw: float = 25.0) -> Pairs:
    """Every usable photo of a person who also has a neutral photo, against that neutral.

    Near-frontal photos only (|yaw|, |pitch| < ``max_yaw``): the far side of a turned face is
    guessed by the landmarker and would teach the rig noise.
    """
    frontal = (np.abs(dataset.poses[:, 0]) < max_yaw) & (np.abs(dataset.poses[:, 1]) < max_yaw)
    people: dict[str, list[int]] = {}
    for i in np.asarray(rows).tolist():
        if ok[i] and frontal[i] and dataset.identities[i]:
            people.setdefault(dataset.identities[i], []).append(i)
    out_rows, neutrals, daus = [], [], []
    for members in people.values():
        neu = [i for i in members if dataset.expressions[i] == "neutral"]
        if not neu:
            continue
        a0 = dataset.aus[neu].mean(0)
        for i in members:
            out_rows.append(i)
            neutrals.append(neu)
            daus.append(dataset.aus[i] - a0)
    if not out_rows:
        raise DatasetError("no person has both a neutral and another photo among the usable training "
                           "faces: the rig needs identity and expression labels (e.g. the Taiwanese or LFW sets; "
                           "a folder prepared without its manifest has none: prepare it again with --manifest)")
    return Pairs(np.array(out_rows), neutrals, np.array(daus, np.float32))


def _motion_targets(pairs: Pairs, shapes: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.stack([shapes[i] - shapes[n].mean(0) for i, n in zip(pairs.rows.tolist(), pairs.neutral)])


def fit_rig(dataset: Any, landmarks: NDArray, rows: NDArray, ridge: float = 30.0) -> tuple[ExpressionRig, dict[str, Any]]:
    """Fit the rig on ``rows`` (training identities); returns it and a summary of the data used."""
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    shapes = canonical_shapes(landmarks)
    pairs = neutral_pairs(dataset, rows, ok)
    y = _motion_targets(pairs, shapes).reshape(len(pairs.rows), -1)  # (M, 478*3)
    x = pairs.daus.astype(np.float64)
    heights = mean_face()[:, 1]
    bands = band_mask(heights)  # (17, 478)
    active = bands > 0
    basis = np.zeros((len(AU_NAMES), 478, 3))
    # Points share a regression when the same AUs may act on them: one ridge solve per pattern.
    patterns: dict[bytes, list[int]] = {}
    for p in range(478):
        patterns.setdefault(active[:, p].tobytes(), []).append(p)
    for key, points in patterns.items():
        au = np.frombuffer(key, dtype=bool)
        if not au.any():
            continue
        xs = x[:, au]
        cols = np.concatenate([np.arange(3 * p, 3 * p + 3) for p in points])
        w = np.linalg.solve(xs.T @ xs + ridge * np.eye(int(au.sum())), xs.T @ y[:, cols])
        basis[np.ix_(np.where(au)[0], points, [0, 1, 2])] = w.reshape(int(au.sum()), len(points), 3)
    basis *= bands[:, :, None]
    # Left-right symmetry: average each point's motion with its mirror's, x flipped.
    mirror = mirror_pairs()
    flipped = basis[:, mirror].copy()
    flipped[..., 0] *= -1.0
    basis = 0.5 * (basis + flipped)
    basis[:, MESH_POINTS:] = basis[:, list(IRIS_ANCHORS)]
    basis = compose_unobserved(register_to_bone(basis))
    used = {"samples": int(len(pairs.rows)), "people": int(len({dataset.identities[i] for i in pairs.rows})),
            "ridge": ridge}
    return ExpressionRig(basis.astype(np.float32)), used


def rig_report(rig: ExpressionRig, dataset: Any, landmarks: NDArray, rows: NDArray) -> dict[str, Any]:
    """Held-out fit: mean landmark error (x, y) without motion vs with the rig, per region.

    Errors are in percent of the inter-ocular distance of the template (so 1 % is ~1 px in a
    256 px crop's eye distance of ~100 px).
    """
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    shapes = canonical_shapes(landmarks)
    pairs = neutral_pairs(dataset, rows, ok)
    truth = _motion_targets(pairs, shapes)
    pred = np.tensordot(pairs.daus, rig.basis, axes=(1, 0))
    t = mean_face()
    iod = float(np.linalg.norm(t[list(RIGHT_EYE_IDX), :2].mean(0) - t[list(LEFT_EYE_IDX), :2].mean(0)))
    expressive = np.array([dataset.expressions[i] != "neutral" for i in pairs.rows])
    report: dict[str, Any] = {"people": int(len({dataset.identities[i] for i in pairs.rows})),
                              "photos": int(expressive.sum()), "unit": "% of inter-ocular distance"}
    for name, idx in {"all": tuple(range(MESH_POINTS)), **REGIONS}.items():
        e0 = np.linalg.norm(truth[expressive][:, list(idx), :2], axis=2).mean()
        e1 = np.linalg.norm((truth - pred)[expressive][:, list(idx), :2], axis=2).mean()
        report[name] = {"no_motion": round(100 * e0 / iod, 2), "rig": round(100 * e1 / iod, 2)}
    return report


# -- shading -----------------------------------------------------------------------------------


def shape_free_texture(rgb: NDArray[np.uint8], landmarks: NDArray, size: int) -> NDArray[np.float32]:
    """The face warped onto the template geometry: (size, size) float32 log luminance."""
    grid_src = template_pixels(size)[:MESH_POINTS]
    lm = np.asarray(landmarks, np.float64)[:MESH_POINTS, :2]
    where, inside = interpolate_on_mesh(grid_src, lm, (size, size))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    tex = cv2.remap(grey, where[..., 0], where[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out = np.log(tex + 8.0)
    out[~inside] = np.nan
    return out


def texture_region(size: int) -> NDArray[np.float32]:
    """Where shading may act in the texture frame: the face minus eyes and lips, feathered."""
    pts = template_pixels(size)
    hull = cv2.convexHull(np.round(pts[:MESH_POINTS, :2] * 16).astype(np.int32))
    m = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(m, hull, 255, lineType=cv2.LINE_AA, shift=4)
    k = 2 * round(size / 64) + 1  # 5 px at 128 px: the same margin at every size
    m = cv2.erode(m, np.ones((k, k), np.uint8))
    holes = np.zeros_like(m)
    for idx in (RIGHT_EYE_IDX, LEFT_EYE_IDX, OUTER_LIP):
        poly = pts[list(idx), :2]
        c = poly.mean(0)
        poly = poly[np.argsort(np.arctan2(poly[:, 1] - c[1], poly[:, 0] - c[0]))]
        cv2.fillPoly(holes, [np.round(poly * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    holes = cv2.dilate(holes, np.ones((k - 2, k - 2), np.uint8))
    region = (m.astype(np.float32) / 255.0) * (1.0 - holes.astype(np.float32) / 255.0)
    return cv2.GaussianBlur(region, (0, 0), sigmaX=size / 96)


#: Width (template heights) of the ramp over which an AU's share of the shading fades in at the
#: edges of its FACS band (:data:`facexpr.models.geometry.AU_BANDS`). 0.04 is the rig's hard
#: edge (geometry-v3's shading, fitted with AUs on or off per row, had steps at each edge).
SHADING_BAND_SOFTNESS = 0.12


def emotion_ratio_images(dataset: Any, landmarks: NDArray, rows: NDArray, size: int = 128, blur: float = 1.5,
                         progress: bool = True) -> tuple[dict[str, NDArray[np.float32]], dict[str, int]]:
    """Each posed emotion's *expression ratio image*: (size, size) log-luminance change from a
    person's neutral texture to their texture of that emotion, smoothed (Gaussian, ``blur`` px at
    ``size``), less its face mean (a global exposure change is not expression), averaged over the
    people of ``rows`` who posed both. Returns the images and how many people each rests on."""
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    pairs = neutral_pairs(dataset, rows, ok)
    region = texture_region(size)
    sel = region > 0.05
    emotions = [e for e in EMOTIONS if e != "neutral"]
    groups: dict[tuple[int, ...], dict[str, list[int]]] = {}  # neutral rows -> emotion -> rows
    for i, neu in zip(pairs.rows.tolist(), pairs.neutral):
        if dataset.expressions[i] in emotions:
            groups.setdefault(tuple(neu), {}).setdefault(dataset.expressions[i], []).append(i)
    needed = sorted({i for neu, by in groups.items() for i in (*neu, *(r for rs in by.values() for r in rs))})
    it: Any = needed
    if progress:
        from tqdm import tqdm

        it = tqdm(needed, desc="shading textures", unit="face", dynamic_ncols=True)
    tex = {i: shape_free_texture(dataset.image(i), landmarks[i], size) for i in it}
    changes: dict[str, list[NDArray]] = {e: [] for e in emotions}
    with warnings.catch_warnings():  # pixels outside every texture of a person stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        for neu, by in groups.items():
            base = np.nanmean(np.stack([tex[n] for n in neu]), axis=0)
            for emotion, members in by.items():
                diff = np.nanmean(np.stack([tex[r] for r in members]), axis=0) - base
                if np.isfinite(diff[sel]).mean() < 0.98:
                    continue  # the landmarker lost part of the face
                diff = cv2.GaussianBlur(np.nan_to_num(diff), (0, 0), sigmaX=blur)
                changes[emotion].append(diff - np.average(diff, weights=region))
    images = {e: (np.mean(c, axis=0) * region).astype(np.float32) for e, c in changes.items() if c}
    return images, {e: len(c) for e, c in changes.items()}


def fit_shading(dataset: Any, landmarks: NDArray, rows: NDArray, size: int = 128, ridge: float = 0.3,
                blur: float = 1.5, min_people: int = 3, soft: float = SHADING_BAND_SOFTNESS,
                progress: bool = True) -> tuple[ShadingLayer, dict[str, Any]]:
    """Per-AU log-luminance ratio images that give back each posed emotion's expression ratio
    image (:func:`emotion_ratio_images`) when combined by its FACS prototype.

    Per texture row, the AUs whose FACS region covers it share out the emotions' changes: the
    least-norm (ridge) solution of ``prototypes @ ratios = emotion images``. An emotion asked of a
    neutral face is then shaded as the real people posed it, with its furrows, folds and
    wrinkles; a single AU slider gets its share. (Regressing photo by photo on the *measured* AU
    changes instead taught blotches the size of a forehead: AUs that rise together split a shared
    change into large opposite parts.) Emotions posed by fewer than ``min_people`` people are
    left out. Datasets whose photos of one person were taken under different light (LFW) teach
    lighting, not wrinkles: pass studio sets (Taiwanese) here.
    """
    images, people = emotion_ratio_images(dataset, landmarks, rows, size, blur, progress)
    used = [e for e in images if people[e] >= min_people]
    if not used:
        raise DatasetError(f"no emotion is posed by {min_people} or more people who also have a neutral photo "
                           "among the training faces: the shading needs a set of posed expressions "
                           "(e.g. the Taiwanese set)")
    changes = np.stack([images[e] for e in used])  # (E, size, size)
    protos = np.stack([emotion_aus(e, 1.0) for e in used])  # (E, 17)
    ratios = prototype_shares(changes, protos, ridge, soft)
    ratios = compose_unobserved(0.5 * (ratios + ratios[:, :, ::-1]))  # symmetric, like the rig
    summary = {"people": {e: people[e] for e in used}, "ridge": ridge, "blur_px": blur,
               "band_softness": soft, "regressors": "emotion prototypes"}
    return ShadingLayer(ratios.astype(np.float32)), summary


def prototype_shares(changes: NDArray, protos: NDArray, ridge: float = 0.3,
                     soft: float = SHADING_BAND_SOFTNESS) -> NDArray[np.float64]:
    """(17, T, T) per-AU images that give back each of the ``changes`` (E, T, T) when combined by
    its prototype (a row of ``protos``, (E, 17)): per texture row, the ridge least-norm solution
    among the AUs whose FACS band covers the row, each AU weighted by how far inside its band
    the row lies (:func:`~facexpr.models.geometry.band_mask` with ramps ``soft`` wide).

    Near a band's edge its AU fades in, so the change an emotion's image gives back is
    continuous down the face. Solved with the AUs switched on or off at the band edges (the
    rig's 0.04 ramp), each edge was a visible step across the cheeks and brows: the rows on
    either side shared the same change among different AUs, with different ridge shrinkage.
    """
    changes = np.asarray(changes, np.float64)
    protos = np.asarray(protos, np.float64)
    n, size = changes.shape[0], changes.shape[-1]
    flat = changes.reshape(n, -1)
    bands = band_mask((np.arange(size) + 0.5) / size, soft=soft)  # (17, size): per texture row
    ratios = np.zeros((len(AU_NAMES), size, size))
    for y in range(size):
        weight = bands[:, y].astype(np.float64) ** 2
        au = weight > 0
        wp = weight[au, None] * protos[:, au].T  # (A, E)
        cols = slice(y * size, (y + 1) * size)
        ratios[au, y] = wp @ np.linalg.solve(protos[:, au] @ wp + ridge * np.eye(n), flat[:, cols])
    return ratios


# -- the whole fit -----------------------------------------------------------------------------


@dataclass
class GeometryFit:
    """A fitted model and what to say about it in its card."""

    model: Any  #: facexpr.models.geometry.GeometryModel
    summary: dict[str, Any]


def fit_geometry(
    data: list[str],
    shading_data: list[str] | None = None,
    mouth: Any = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    ridge: float = 30.0,
    shading_ridge: float = 0.3,
    shading_blur: float = 1.5,
    config: Any = None,
    progress: bool = True,
) -> GeometryFit:
    """Fit rig and shading on the training identities of ``data`` (merged, identity-disjoint split).

    ``shading_data`` names the folders (a subset of ``data``) whose photos of one person share
    their lighting, e.g. a studio set; by default every folder. The split is taken on the merged
    ``data`` exactly as ``facexpr train`` and ``facexpr evaluate`` take it, so evaluating with the
    same ``--data`` folders scores people the model never saw.
    """
    from pathlib import Path

    from facexpr.data.dataset import PreparedDataset
    from facexpr.data.landmarks import dataset_landmarks
    from facexpr.models.geometry import GeometryModel, recommended_config

    parts = [PreparedDataset(p) for p in data]
    merged = PreparedDataset.merge(parts)
    train_idx, val_idx = merged.split(val_fraction, split_seed)
    landmarks = dataset_landmarks(merged, progress=progress)
    rig, rig_used = fit_rig(merged, landmarks, train_idx, ridge=ridge)
    report = rig_report(rig, merged, landmarks, val_idx)
    shading_folders = [str(Path(p).resolve()) for p in (shading_data or data)]
    roots = [str(Path(r).resolve()) for r in merged.roots]
    unknown = [p for p in shading_folders if p not in roots]
    if unknown:
        raise DatasetError(f"--shading-data {unknown[0]} is not one of the --data folders")
    part_of = np.array([roots[int(k)] for k in merged._part_index])
    shade_rows = np.array([i for i in train_idx.tolist() if part_of[i] in shading_folders], np.int64)
    # A mouth network, when given, fills the mouth; otherwise it is drawn.
    config = config or recommended_config(mouth="network" if mouth is not None else "drawn")
    size = config.texture_size
    shading, shading_used = fit_shading(merged, landmarks, shade_rows, size=size, ridge=shading_ridge,
                                        blur=shading_blur * size / 128, progress=progress)
    model = GeometryModel(config, rig, shading, mouth)
    summary = {
        "data": [{"name": Path(r).name, "count": int((merged._part_index == k).sum())}
                 for k, r in enumerate(merged.roots)],
        "split": {"val_fraction": val_fraction, "seed": split_seed, "train_faces": int(len(train_idx)),
                  "val_faces": int(len(val_idx))},
        "rig": {**rig_used, "validation": report},
        "shading": {**shading_used, "folders": [Path(f).name for f in shading_folders]},
        "landmarks_found": int(np.isfinite(landmarks).all(axis=(1, 2)).sum()),
    }
    return GeometryFit(model, summary)
