"""Calibrate and check facexpr.face.aus (MediaPipe blendshapes -> OpenFace-scale AUs).

Reads the shared face data in place (``../shared/data`` or $FACEXPR_SHARED_DATA) and prints:

1. which video the OpenFace CSV belongs to (frame count, fps, face position/scale, blink timing);
2. the fitted constants (OFFSET, GAIN, lip-gap mix) to paste into ``facexpr/face/aus.py``;
3. per-AU tables before (the raw one-blendshape-x5 mapping of the design notes) and after
   calibration: Pearson r and MAE against EMFACS prototype targets on the fit and held-out
   identities of the Taiwanese posed set; OpenFace's resting levels (CSV) against ours on a
   talking-face video; MAE against the 4 GANimation images that carry real OpenFace vectors;
4. the LFW check: AU12 higher on an identity's happy photo than on its neutral one.

Per-image landmarks and blendshapes are cached under /tmp/facexpr_calibration (never in the
repository). Run with ``nice python benchmarks/calibrate_aus.py [--plot out.png]``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import pickle
import sys
from pathlib import Path

import cv2
import numpy as np

from facexpr.expression import AU_NAMES, EMOTION_AU_COMBINATIONS, EMOTIONS
from facexpr.face import aus as aus_mod
from facexpr.face.aus import au_signals, lip_gap, raw_aus_from_blendshapes

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACEXPR_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path("/tmp/facexpr_calibration")
HELD_OUT_FRACTION = 0.3
PRIOR_AUS = ("AU09", "AU14", "AU45")  # no isolating posed emotion / not an emotion AU
GAIN_RANGE = (5.0, 10.0)
POSED_PERCENTILE = 95  # "clearly activated" level among posed faces whose emotion has the AU
NEAR_CONSTANT_STD = 0.05  # OpenFace AU std below this on the CSV: correlation meaningless

# OpenFace 68-point indices -> MediaPipe mesh indices (standard correspondence), to compare the
# CSV's landmarks with MediaPipe's on the videos.
MP_OF_68 = [127, 234, 93, 132, 58, 172, 136, 150, 152, 377, 365, 397, 288, 361, 323, 454, 356,
            70, 63, 105, 66, 107, 336, 296, 334, 293, 300, 168, 197, 5, 4, 75, 97, 2, 326, 305,
            33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380, 61, 39, 37, 0, 267, 269,
            291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87]


# ----------------------------------------------------------------------------- extraction
def _analyzer():  # type: ignore[no-untyped-def]
    from facexpr.face.detect import FaceAnalyzer

    return FaceAnalyzer(max_faces=1, fallback="none", tiles=False)


def _faces_to_arrays(frames: list) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    bs = np.full((len(frames), 52), np.nan, np.float32)
    lm = np.full((len(frames), 478, 3), np.nan, np.float32)
    for i, faces in enumerate(frames):
        if faces:
            bs[i] = faces[0].blendshapes
            lm[i] = faces[0].landmarks
    return bs, lm


def extract_images(name: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Blendshapes (N, 52) and landmarks (N, 478, 3) of the largest face per image (NaN: none)."""
    key = hashlib.sha1("\n".join(map(str, files)).encode()).hexdigest()[:12]
    path = CACHE / f"{name}-{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["bs"], z["lm"]
    from facexpr.imageio import load_image

    results = []
    with _analyzer() as fa:
        for f in files:
            results.append(fa.analyze(load_image(f).rgb))
    bs, lm = _faces_to_arrays(results)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, bs=bs, lm=lm)
    return bs, lm


def extract_video(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    cache = CACHE / f"video-{path.name}.npz"
    if cache.exists():
        z = np.load(cache)
        return z["bs"], z["lm"], float(z["fps"])
    cap = cv2.VideoCapture(str(path))
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    results = []
    with _analyzer() as fa:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            results.append(fa.analyze(np.ascontiguousarray(frame[:, :, ::-1])))
    cap.release()
    bs, lm = _faces_to_arrays(results)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, bs=bs, lm=lm, fps=fps)
    return bs, lm, fps


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """GANimation's AU pickle holds a dict of numpy arrays: allow nothing else to be built."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("builtins", "dict")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an AU pickle")
        return super().find_class(module, name)


def read_openface(path: Path) -> dict[str, np.ndarray]:
    """Columns by name (OpenFace pads header names with spaces)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = [h.strip() for h in rows[0]]
    data = np.array([[float(v) for v in r] for r in rows[1:] if r], dtype=np.float64)
    return {h: data[:, i] for i, h in enumerate(header)}


# ----------------------------------------------------------------------------- helpers
def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) < 1e-9 or np.std(b) < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def procrustes_residual(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Relative residual after the best similarity transform b -> a, and its scale."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    u, _, vt = np.linalg.svd(b.T @ a)
    r = u @ vt
    s = np.trace((b @ r).T @ a) / np.sum(b * b)
    return float(np.linalg.norm(a - s * b @ r) / np.linalg.norm(a)), float(s)


def fmt(x: float) -> str:
    return "   -  " if not np.isfinite(x) else f"{x:6.2f}"


# ----------------------------------------------------------------------------- stages
def video_match(of: dict[str, np.ndarray]) -> None:
    print("== 1. Which video does OpenFace_Test.csv belong to? ==")
    n_of = len(of["frame"])
    dt = np.diff(of["timestamp"])
    print(f"CSV: {n_of} frames, timestamp step {np.median(dt):.3f} s "
          f"(fps {1 / np.median(dt):.0f}), mean confidence {of['confidence'].mean():.2f}")
    of_pts = np.stack([np.stack([of[f"x_{i}"], of[f"y_{i}"]], -1) for i in range(68)], 1)
    centre = of_pts[0].mean(0)
    print(f"CSV face: centre ({centre[0]:.0f}, {centre[1]:.0f}) px, "
          f"jaw width {np.ptp(of_pts[0][:17, 0]):.0f} px; AU45 peaks at frames "
          f"{[int(i) for i in np.nonzero(of['AU45_r'] > 0.8)[0]]}")
    self_res = np.median([procrustes_residual(of_pts[0], of_pts[i])[0] for i in range(n_of)])
    matches = []
    for video in sorted((DATA / "inputs" / "misc").glob("*.mp4")):
        bs, lm, fps = extract_video(video)
        found = ~np.isnan(bs[:, 0])
        line = f"{video.name}: {len(bs)} frames at {fps:.2f} fps, face in {found.sum()}"
        if found.any():
            pts = lm[found][:, MP_OF_68, :2]
            res = min(procrustes_residual(of_pts[0], p)[0] for p in pts[:: max(1, len(pts) // 20)])
            c = pts[0].mean(0)
            blink = (bs[found, 9] + bs[found, 10]) / 2
            line += (f"; face centre ({c[0]:.0f}, {c[1]:.0f}), jaw width "
                     f"{np.ptp(pts[0][:17, 0]):.0f} px; shape residual vs CSV {res:.3f} (CSV "
                     f"frame-to-frame {self_res:.3f}); blinks (eyeBlink>0.35) at frames "
                     f"{[int(i) for i in np.nonzero(blink > 0.35)[0]][:12]}")
            # Same recording: same number of frames, and the face where OpenFace saw it.
            if abs(len(bs) - n_of) <= 1 and np.linalg.norm(c - centre) < 10 and res < 2 * self_res:
                matches.append(video.name)
        print(line)
    if matches:
        print(f"-> the CSV matches {matches}; a per-frame fit against it would be possible.\n")
    else:
        print("-> no video matches: frame counts differ, the CSV's face sits elsewhere at another "
              "scale, and the blink timing differs. The CSV is used only for OpenFace's resting "
              "levels and AU variability on a near-neutral talking face, not for a per-frame "
              "fit.\n")


def load_sets() -> dict[str, dict[str, np.ndarray]]:
    sets: dict[str, dict[str, np.ndarray]] = {}
    rows = list(csv.DictReader(open(DATA / "taiwanese" / "manifest.csv", newline="")))
    bs, lm = extract_images("taiwanese", [DATA / "taiwanese" / r["file"] for r in rows])
    sets["taiwanese"] = dict(
        bs=bs, lm=lm, expression=np.array([r["expression"] for r in rows]),
        identity=np.array([r["identity"] for r in rows]),
        rated=np.array([float(r["rated_intensity"] or "nan") for r in rows]),
    )
    rows = [r for r in csv.DictReader(open(DATA / "lfw" / "manifest.csv", newline=""))
            if r["expression"] in ("happy", "neutral")]
    bs, lm = extract_images("lfw", [DATA / "lfw" / r["file"] for r in rows])
    sets["lfw"] = dict(bs=bs, lm=lm, expression=np.array([r["expression"] for r in rows]),
                       identity=np.array([r["identity"] for r in rows]))
    files = sorted((DATA / "ganimation_sample" / "imgs").glob("*.jpg"))
    bs, lm = extract_images("ganimation", files)
    with open(DATA / "ganimation_sample" / "aus_openface.pkl", "rb") as fh:
        table = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
    sets["ganimation"] = dict(bs=bs, lm=lm,
                              openface=np.stack([np.asarray(table[f.stem], float) for f in files]))
    for s in sets.values():
        s["ok"] = ~np.isnan(s["bs"][:, 0])
    return sets


def identity_split(ids: np.ndarray) -> np.ndarray:
    """True for fit identities: the first 70 % of identities in sorted order."""
    uniq = sorted(set(ids.tolist()))
    n_fit = int(round(len(uniq) * (1 - HELD_OUT_FRACTION)))
    return np.isin(ids, uniq[:n_fit])


def prototype_targets(expr: np.ndarray, rated: np.ndarray | None = None) -> np.ndarray:
    """EMFACS prototype of each image's posed emotion (optionally x observer-rated intensity)."""
    t = np.stack([EMOTIONS.get(e, EMOTIONS["neutral"]) for e in expr]).astype(np.float64)
    if rated is not None:
        r = np.where(np.isfinite(rated), rated, 1.0)
        t = t * np.clip(r / np.nanmedian(rated), 0.0, 1.5)[:, None]
    return np.clip(t, 0, 5)


def fit(sets: dict[str, dict[str, np.ndarray]]) -> dict[str, object]:
    tw, lfw = sets["taiwanese"], sets["lfw"]
    tw_fit = tw["ok"] & identity_split(tw["identity"])
    lfw_fit = lfw["ok"] & identity_split(lfw["identity"])

    # Lip gap from blendshapes (used when no landmarks are passed).
    def mix_inputs(bs: np.ndarray) -> np.ndarray:
        m = lambda *n: bs[:, [aus_mod._B[x] for x in n]].mean(1)  # noqa: E731
        return np.stack([m("jawOpen"), m("mouthLowerDownLeft", "mouthLowerDownRight"),
                         m("mouthUpperUpLeft", "mouthUpperUpRight"), np.ones(len(bs))], 1)

    x = np.concatenate([mix_inputs(tw["bs"][tw_fit]), mix_inputs(lfw["bs"][lfw_fit])])
    y = np.concatenate([lip_gap(tw["lm"][tw_fit]), lip_gap(lfw["lm"][lfw_fit])])
    mix = np.linalg.lstsq(x, y, rcond=None)[0]

    sig_tw = au_signals(tw["bs"][tw_fit], tw["lm"][tw_fit])
    sig_lfw = au_signals(lfw["bs"][lfw_fit], lfw["lm"][lfw_fit])
    neutral = np.concatenate([sig_tw[tw["expression"][tw_fit] == "neutral"],
                              sig_lfw[lfw["expression"][lfw_fit] == "neutral"]])
    offset = np.median(neutral, axis=0)
    gain = np.full(17, 5.0)
    expr = tw["expression"][tw_fit]
    for k, au in enumerate(AU_NAMES):
        if au in PRIOR_AUS:
            offset[k] = 0.0
            continue
        emos = [e for e, combo in EMOTION_AU_COMBINATIONS.items() if au in combo and e in expr]
        sel = np.isin(expr, emos)
        if not sel.any():
            offset[k] = 0.0
            continue
        target = np.mean([EMOTION_AU_COMBINATIONS[e][au] for e in emos])
        level = np.percentile(sig_tw[sel, k], POSED_PERCENTILE) - offset[k]
        gain[k] = np.clip(target / max(level, 1e-6), *GAIN_RANGE)
    return dict(offset=offset, gain=gain, mix=mix)


def apply(sig: np.ndarray, cal: dict[str, object]) -> np.ndarray:
    return np.clip((sig - cal["offset"]) * cal["gain"], 0, 5)  # type: ignore[operator]


def calibrated(bs: np.ndarray, lm: np.ndarray | None, cal: dict[str, object]) -> np.ndarray:
    return apply(au_signals(bs, lm), cal)


def report(sets: dict[str, dict[str, np.ndarray]], of: dict[str, np.ndarray],
           cal: dict[str, object], plot: Path | None) -> None:
    tw = sets["taiwanese"]
    fit_ids = identity_split(tw["identity"])
    target = prototype_targets(tw["expression"])
    raw = raw_aus_from_blendshapes(tw["bs"])
    new = calibrated(tw["bs"], tw["lm"], cal)
    print("== 3. Per-AU agreement with EMFACS prototype targets (Taiwanese posed photos) ==")
    print(f"fit identities: {len(set(tw['identity'][fit_ids]))}, held-out identities: "
          f"{len(set(tw['identity'][~fit_ids]))}; target = prototype of the posed emotion")
    print("AU    | r fit raw  cal | r held raw  cal | MAE held raw  cal | OpenFace CSV mean std | "
          "single_face raw cal")
    bs_v, lm_v, _ = extract_video(DATA / "inputs" / "misc" / "single_face.mp4")
    ok_v = ~np.isnan(bs_v[:, 0])
    raw_v = raw_aus_from_blendshapes(bs_v[ok_v])
    new_v = calibrated(bs_v[ok_v], lm_v[ok_v], cal)
    rows = []
    for k, au in enumerate(AU_NAMES):
        m_fit = tw["ok"] & fit_ids
        m_held = tw["ok"] & ~fit_ids
        ofc = of[f"{au}_r"]
        r = (pearson(raw[m_fit, k], target[m_fit, k]), pearson(new[m_fit, k], target[m_fit, k]),
             pearson(raw[m_held, k], target[m_held, k]), pearson(new[m_held, k], target[m_held, k]))
        mae = (np.abs(raw[m_held, k] - target[m_held, k]).mean(),
               np.abs(new[m_held, k] - target[m_held, k]).mean())
        flag = " (near-constant)" if ofc.std() < NEAR_CONSTANT_STD else ""
        rows.append((au, r, mae))
        print(f"{au}  | {fmt(r[0])} {fmt(r[1])} | {fmt(r[2])} {fmt(r[3])} | "
              f"   {fmt(mae[0])} {fmt(mae[1])} | {ofc.mean():6.2f} {ofc.std():5.2f}{flag:16s}| "
              f"{raw_v[:, k].mean():6.2f} {new_v[:, k].mean():6.2f}")
    valid = [(r, m) for _, r, m in rows if np.isfinite(r[3]) and np.isfinite(r[2])]
    print(f"mean over AUs with a target: r held-out raw {np.mean([r[2] for r, _ in valid]):.2f} "
          f"-> calibrated {np.mean([r[3] for r, _ in valid]):.2f}; MAE held-out raw "
          f"{np.mean([m[0] for _, _, m in rows]):.2f} -> calibrated {np.mean([m[1] for _, _, m in rows]):.2f}")
    rest_raw = np.abs(raw_v.mean(0) - np.array([of[f'{a}_r'].mean() for a in AU_NAMES])).mean()
    rest_new = np.abs(new_v.mean(0) - np.array([of[f'{a}_r'].mean() for a in AU_NAMES])).mean()
    print(f"resting level (OpenFace CSV face vs ours on single_face.mp4, both near-neutral talking "
          f"faces), mean |difference| over AUs: raw {rest_raw:.2f} -> calibrated {rest_new:.2f}\n")

    g = sets["ganimation"]
    print("== 4. The 4 GANimation images with real OpenFace vectors ==")
    raw_g = raw_aus_from_blendshapes(g["bs"])
    new_g = calibrated(g["bs"], g["lm"], cal)
    ofg = g["openface"]
    print(f"MAE over 4x17 values: raw {np.abs(raw_g - ofg).mean():.2f}, calibrated "
          f"{np.abs(new_g - ofg).mean():.2f}, all-zeros {np.abs(ofg).mean():.2f}; Pearson over "
          f"the 68 values: raw {pearson(raw_g.ravel(), ofg.ravel()):.2f}, calibrated "
          f"{pearson(new_g.ravel(), ofg.ravel()):.2f}")
    for i in range(len(ofg)):
        print("  OpenFace " + " ".join(f"{v:4.1f}" for v in ofg[i]))
        print("  ours     " + " ".join(f"{v:4.1f}" for v in new_g[i]))
    print()

    lfw = sets["lfw"]
    print("== 5. LFW: AU12 on an identity's happy vs neutral photo (mean per identity) ==")
    for label, est in (("raw", raw_aus_from_blendshapes(lfw["bs"])),
                       ("calibrated", calibrated(lfw["bs"], lfw["lm"], cal))):
        wins = []
        for ident in sorted(set(lfw["identity"].tolist())):
            m = (lfw["identity"] == ident) & lfw["ok"]
            h, n = m & (lfw["expression"] == "happy"), m & (lfw["expression"] == "neutral")
            if h.any() and n.any():
                wins.append(est[h, 8].mean() > est[n, 8].mean())
        print(f"{label}: {np.mean(wins) * 100:.1f} % of {len(wins)} identities")
    print()

    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        show = ["AU01", "AU02", "AU04", "AU23", "AU26", "AU45"]
        fig, axes = plt.subplots(len(show), 1, figsize=(9, 2 * len(show)), sharex=True)
        t_of = np.arange(len(of["frame"])) / len(of["frame"])
        t_v = np.arange(len(new_v)) / len(new_v)
        for ax, au in zip(axes, show):
            k = AU_NAMES.index(au)
            ax.plot(t_of, of[f"{au}_r"], label="OpenFace (CSV)")
            ax.plot(t_v, new_v[:, k], label="ours, single_face.mp4 (calibrated)")
            ax.plot(t_v, raw_v[:, k], ":", label="ours (raw mapping)")
            ax.set_ylabel(au)
            ax.set_ylim(-0.1, 5)
        axes[0].legend(fontsize=7, loc="upper right")
        axes[-1].set_xlabel("fraction of clip (the CSV and the video are different recordings)")
        fig.tight_layout()
        fig.savefig(plot, dpi=80)
        print(f"plot written to {plot}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plot", type=Path, help="PNG with OpenFace vs estimated AU curves")
    args = ap.parse_args()
    if not (DATA / "README.md").exists():
        print(f"shared face data not found at {DATA} (set FACEXPR_SHARED_DATA)", file=sys.stderr)
        return 2
    of = read_openface(DATA / "inputs" / "misc" / "OpenFace_Test.csv")
    video_match(of)
    sets = load_sets()
    cal = fit(sets)
    print("== 2. Fitted constants (paste into src/facexpr/face/aus.py) ==")
    print("LIPGAP_FROM_BLENDSHAPES = (" + ", ".join(f"{v:.3f}" for v in cal["mix"]) + ")")  # type: ignore[union-attr]
    print("OFFSET = (" + ", ".join(f"{v:.3f}" for v in cal["offset"]) + ")")  # type: ignore[union-attr]
    print("GAIN = (" + ", ".join(f"{v:.2f}" for v in cal["gain"]) + ")")  # type: ignore[union-attr]
    in_code = np.allclose(aus_mod.OFFSET, cal["offset"], atol=2e-3) and np.allclose(
        aus_mod.GAIN, cal["gain"], atol=1e-2)
    print(f"constants in the code {'match' if in_code else 'DIFFER from'} this fit\n")
    report(sets, of, cal, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
