#!/usr/bin/env python
"""Fit ``facexpr.face.identity_net.CROP_TO_CHIP`` and measure how well the fixed map agrees with dlib.

Usage::

    .venv/bin/python scripts/fit_crop_to_chip.py --out /tmp/crop_chip          # fit + measure
    .venv/bin/python scripts/fit_crop_to_chip.py --measure-only --out DIR      # measure the shipped constant

**Fit.** On real training crops of the prepared Taiwanese and LFW sets (the identity-disjoint split
``facexpr train`` uses), dlib's 5-point predictor runs inside the box of each crop's MediaPipe
landmarks, exactly as :class:`facexpr.face.identity.IdentityEncoder` is called on crops by the
evaluation. ``dlib.get_face_chip`` with those 5 points is applied to a coordinate-ramp image of
the crop's size (red = x, green = y), so the chip's pixels *are* the crop coordinates dlib sampled;
a least-squares affine over the chip gives dlib's exact chip -> crop map (pixel conventions
included). Each map is written in ``grid_sample`` units and the constant is their mean, projected
to a similarity.

**Measure.** On validation crops (other people), at several crop sizes (each crop resized the
way training resizes it): dlib's descriptor of the crop (``IdentityEncoder.embed`` with the
crop's landmarks) vs ``IdentityNet(crop_to_chip(crop))``: the distance between the two descriptors
of one face, and over all pairs of faces the correlation and mean absolute difference of the
pairwise distances, and how often both agree on same / different person at 0.6.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

CHIP = 150


def ramp_image(size: int) -> np.ndarray:
    """uint8 image whose red channel encodes x and green y (0..255 over the crop) and blue is 255
    (so chip pixels sampled outside the crop, black in dlib's chip, can be told apart). One level
    is ~size/255 px; the least-squares fit over ~22500 chip pixels averages the rounding out."""
    t = np.arange(size, dtype=np.float64)
    ramp = np.zeros((size, size, 3), np.uint8)
    ramp[..., 0] = np.round(t[None, :] * 255 / (size - 1))
    ramp[..., 1] = np.round(t[:, None] * 255 / (size - 1))
    ramp[..., 2] = 255
    return ramp


def dlib_map(chipper, size: int, points: np.ndarray) -> np.ndarray:
    """dlib's chip -> crop affine (2x3, pixel units) for 5 points on a ``size`` crop."""
    chip = chipper.chip(ramp_image(size), points).astype(np.float64)
    inside = chip[..., 2] > 250  # chip pixels that sampled inside the crop
    r, c = np.mgrid[0:CHIP, 0:CHIP]
    a = np.stack([c[inside], r[inside], np.ones(inside.sum())], 1)
    x = chip[..., 0][inside] * (size - 1) / 255
    y = chip[..., 1][inside] * (size - 1) / 255
    mx = np.linalg.lstsq(a, x, rcond=None)[0]
    my = np.linalg.lstsq(a, y, rcond=None)[0]
    return np.stack([mx, my])


def to_theta(m: np.ndarray, size: int) -> np.ndarray:
    """A chip -> crop pixel map as an ``affine_grid`` theta (normalised, align_corners=False)."""
    out_inv = np.array([[CHIP / 2, 0, (CHIP - 1) / 2], [0, CHIP / 2, (CHIP - 1) / 2], [0, 0, 1]])
    to_in = np.array([[2 / size, 0, 1 / size - 1], [0, 2 / size, 1 / size - 1], [0, 0, 1]])
    full = to_in @ np.vstack([m, [0, 0, 1]]) @ out_inv
    return full[:2]


def similarity(theta: np.ndarray) -> np.ndarray:
    a = (theta[0, 0] + theta[1, 1]) / 2
    b = (theta[1, 0] - theta[0, 1]) / 2
    return np.array([[a, -b, theta[0, 2]], [b, a, theta[1, 2]]])


def pick(rows: np.ndarray, n: int) -> list[int]:
    rows = np.asarray(rows)
    if len(rows) <= n:
        return [int(r) for r in rows]
    return [int(rows[int(k)]) for k in np.linspace(0, len(rows) - 1, n).round()]


def by_set(prepared, rows: np.ndarray) -> dict[str, np.ndarray]:
    names = np.array([prepared._parts[int(p)].name for p in prepared._part_index])
    return {name: rows[names[rows] == name] for name in sorted(set(names[rows].tolist()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["/work/prepared/taiwanese", "/work/prepared/lfw"])
    ap.add_argument("--fit-per-set", type=int, default=200)
    ap.add_argument("--measure-per-set", type=int, default=75)
    ap.add_argument("--sizes", default="256,128,64")
    ap.add_argument("--measure-only", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from facexpr.data.dataset import PreparedDataset
    from facexpr.data.landmarks import dataset_landmarks
    from facexpr.face import identity_net
    from facexpr.face.identity import IdentityEncoder
    from facexpr.face.identity_net import FaceChipper, IdentityNet, crop_to_chip
    from facexpr.training.data import resize_rgb, to_tensor_image

    args.out.mkdir(parents=True, exist_ok=True)
    prepared = PreparedDataset.merge(args.data)
    train, val = prepared.split(0.1, 0)
    landmarks = dataset_landmarks(prepared, progress=False)
    ok = ~np.isnan(landmarks).any(axis=(1, 2))
    chipper = FaceChipper()
    report: dict = {"data": args.data}

    if not args.measure_only:
        t0 = time.time()
        thetas, names = [], []
        for name, rows in by_set(prepared, train[ok[train]]).items():
            for i in pick(rows, args.fit_per_set):
                img = prepared.image(i)
                pts = chipper.landmarks(img, landmarks[i][:, :2])
                thetas.append(to_theta(dlib_map(chipper, img.shape[0], pts), img.shape[0]))
                names.append(name)
        thetas_a = np.stack(thetas)
        theta = similarity(thetas_a.mean(0))
        # per-crop deviation of dlib's own map from the constant: mean displacement over the chip
        g = np.stack(np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16)), -1).reshape(-1, 2)
        gh = np.concatenate([g, np.ones((len(g), 1))], 1)
        dev = np.array([np.linalg.norm(gh @ (t - theta).T, axis=1).mean() / 2 for t in thetas_a])
        # in units of the chip: a theta maps chip units to crop units; divide by the scale
        scale = float(np.hypot(theta[0, 0], theta[1, 0]))
        dev_chip = dev / scale
        report["fit"] = {
            "crops": len(thetas), "per_set": {n: names.count(n) for n in sorted(set(names))},
            "theta": theta.round(6).tolist(), "scale_crop_per_chip": scale,
            "rotation_deg": float(np.degrees(np.arctan2(theta[1, 0], theta[0, 0]))),
            "mean_affine": thetas_a.mean(0).round(6).tolist(),
            "deviation_fraction_of_chip": {"median": float(np.median(dev_chip)), "p90": float(np.quantile(dev_chip, 0.9)),
                                           "max": float(dev_chip.max())},
            "seconds": round(time.time() - t0, 1),
        }
        print(json.dumps(report["fit"], indent=1))
        identity_net.CROP_TO_CHIP = tuple(tuple(float(v) for v in row) for row in theta)  # measure the fit

    report["theta_measured"] = [list(r) for r in identity_net.CROP_TO_CHIP]
    net = IdentityNet.from_pretrained()
    rows = [i for rows in by_set(prepared, val[ok[val]]).values() for i in pick(rows, args.measure_per_set)]
    ids = np.array([prepared.identities[i] or f"file:{i}" for i in rows])
    report["measure"] = {"crops": len(rows), "people": len(set(ids.tolist()))}
    same = ids[:, None] == ids[None]
    iu = np.triu_indices(len(rows), 1)
    with IdentityEncoder() as enc:
        for size in [int(s) for s in args.sizes.split(",")]:
            t0 = time.time()
            ref, ours = [], []
            for i in rows:
                img = resize_rgb(prepared.image(i), size)
                lm = landmarks[i][:, :2] * size / prepared.size
                ref.append(enc.embed(img, lm))
                with torch.no_grad():
                    ours.append(net(crop_to_chip(to_tensor_image(img)[None]))[0].numpy())
            ref_a, ours_a = np.stack(ref).astype(np.float64), np.stack(ours).astype(np.float64)
            d_ref = np.linalg.norm(ref_a[:, None] - ref_a[None], axis=-1)[iu]
            d_ours = np.linalg.norm(ours_a[:, None] - ours_a[None], axis=-1)[iu]
            self_d = np.linalg.norm(ref_a - ours_a, axis=1)
            s = same[iu]
            res = {
                "self_distance": {"mean": float(self_d.mean()), "median": float(np.median(self_d)),
                                  "p90": float(np.quantile(self_d, 0.9)), "max": float(self_d.max())},
                "pair_distance_pearson": float(np.corrcoef(d_ref, d_ours)[0, 1]),
                "pair_distance_mean_abs_diff": float(np.abs(d_ref - d_ours).mean()),
                "pair_distance_p90_abs_diff": float(np.quantile(np.abs(d_ref - d_ours), 0.9)),
                "pair_distance_mean_diff": float((d_ours - d_ref).mean()),
                "same_person_pairs": int(s.sum()), "pairs": len(s),
                "verification_agreement_0.6": float(((d_ref < 0.6) == (d_ours < 0.6)).mean()),
                "dlib_same_mean": float(d_ref[s].mean()), "ours_same_mean": float(d_ours[s].mean()),
                "dlib_diff_mean": float(d_ref[~s].mean()), "ours_diff_mean": float(d_ours[~s].mean()),
                "seconds": round(time.time() - t0, 1),
            }
            report["measure"][str(size)] = res
            print(size, json.dumps(res, indent=1))
    (args.out / "crop_to_chip.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'crop_to_chip.json'}")


if __name__ == "__main__":
    main()
