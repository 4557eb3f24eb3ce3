"""Full-resolution benchmark of an editing model on the 1024 px portraits (prints its figures).

For every portrait and emotion it edits the photo as ``facexpr edit`` does (the file is written
in the input's format and read back), then reports per emotion and overall:

* per-stage time of the edit (analysis, rig, warp, shading, mouth, paste; or the crop
  generator's stages), median seconds;
* the FER2013 judge's generation rate on the edited face: on the aligned crop of the output
  (framed by the landmarks, as ``facexpr evaluate`` does), and on dlib's HOG box of the output
  (tighter, brows to chin; the framing of evaluations that run a FER judge on detector boxes);
* dlib identity distance input vs output and the verification rate (< 0.6);
* sharpness ratio inside the face (median |Laplacian|, output / input, full resolution);
* share of pixels outside the face (landmark hull grown by 4 % of the face) that changed by
  more than 2 levels in the *written file* vs the decoded input; and the same outside both the
  photo's face and the edited face (the landmarker run again on the written file): a jaw that
  drops moves the chin below the photo's hull, and the first figure counts the moved chin;
* the judge's rate split by the portrait's own expression: edits from faces the judge reads as
  neutral (how the target is usually asked for) and from the others (mostly smiles).

Usage::

    python benchmarks/bench_geometry.py [--model NAME_OR_PATH] [--start N] [--limit N] [--emotions a,b]
                                        [--size PX]

``--size 675`` edits each portrait shrunk to 675 px first (area-averaged, then written as JPEG
quality 95 and read back as the input): a mid-size photo instead of a 1024 px one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = REPO.parent / "shared" / "data" / "inputs" / "portraits_1024"
EMOTIONS = ("happy", "sad", "angry", "surprised", "fearful", "disgusted", "neutral")


def hull_masks(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    m = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(m, cv2.convexHull(np.round(landmarks[:468, :2]).astype(np.int32)), 1)
    size = float(np.ptp(landmarks[:468, 0]))
    k = max(int(round(0.04 * size)), 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    return cv2.erode(m, kernel) > 0, cv2.dilate(m, kernel) == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model name or folder (default: the shipped default)")
    ap.add_argument("--start", type=int, default=0,
                    help="skip the first N portraits (geometry-v2's settings were chosen on the first 20)")
    ap.add_argument("--limit", type=int, default=None, help="at most N portraits")
    ap.add_argument("--emotions", default=",".join(EMOTIONS))
    ap.add_argument("--size", type=int, default=None, help="shrink each portrait to this many px first")
    args = ap.parse_args()
    if not PORTRAITS.is_dir():
        print(f"skipped: {PORTRAITS} not found (the shared face data)")
        return

    import dlib

    from facexpr.evaluation.judge import ExpressionJudge, dlib_box_crop
    from facexpr.evaluation.metrics import changed_outside, sharpness_ratio
    from facexpr.face.align import align_face
    from facexpr.face.identity import IdentityEncoder
    from facexpr.imageio import load_image, save_image
    from facexpr.pipeline import Editor, EmotionTarget

    paths = sorted(PORTRAITS.glob("*.jpg"))[args.start:][: args.limit]
    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()]
    judge = ExpressionJudge.from_pretrained("fer")
    hog = dlib.get_frontal_face_detector()
    keys = ("hit", "box", "id", "sharp", "out", "out_both", "neutral")
    stats: dict[str, dict[str, list[float]]] = {e: {k: [] for k in keys} for e in emotions}
    stages: dict[str, list[float]] = {}
    missed = 0  # edited faces dlib's detector does not find (counted as not recognised on boxes)
    totals: list[float] = []
    with Editor.from_pretrained(args.model) as editor, IdentityEncoder() as ids, tempfile.TemporaryDirectory() as tmp:
        print(f"model {editor.info.name} ({editor.info.family}, backend {editor.backend}); "
              f"{len(paths)} portraits x {len(emotions)} emotions")
        editor.edit(load_image(paths[0]).rgb, EmotionTarget("happy", 1.0))  # warm-up
        for path in paths:
            loaded = load_image(path)
            if args.size:
                small = cv2.resize(loaded.rgb, (args.size, args.size), interpolation=cv2.INTER_AREA)
                path = Path(tmp) / f"in{path.suffix}"
                save_image(path, small, quality=95)
                loaded = load_image(path)
            img = loaded.rgb
            face = editor.faces(img)[0]
            inside, outside = hull_masks(face.landmarks, img.shape)
            emb_in = ids.embed(img, face.landmarks[:, :2])
            own = judge.predict_proba(align_face(img, face.landmarks, 128).crop[None])[0]
            source_neutral = float(own.argmax() == judge.class_index("neutral"))
            for emo in emotions:
                t0 = time.perf_counter()
                res = editor.edit(img, EmotionTarget(emo, 1.0), faces="largest", details=True)
                totals.append(time.perf_counter() - t0)
                for k, v in res.timings.items():
                    stages.setdefault(k, []).append(v)
                out_path = Path(tmp) / f"out{path.suffix}"
                save_image(out_path, res.image, like=loaded)
                written = load_image(out_path).rgb
                crop = align_face(written, face.landmarks, 128).crop
                p = judge.predict_proba(crop[None])[0]
                want = judge.class_index(emo)
                st = stats[emo]
                st["hit"].append(float(p.argmax() == want))
                boxed = dlib_box_crop(written, judge.config, detector=hog)
                st["box"].append(0.0 if boxed is None else float(judge.predict_proba(boxed[None])[0].argmax() == want))
                missed += boxed is None
                st["neutral"].append(source_neutral)
                st["id"].append(float(np.linalg.norm(ids.embed(written, face.landmarks[:, :2]) - emb_in)))
                st["sharp"].append(sharpness_ratio(img, written, inside))
                st["out"].append(changed_outside(img, written, outside))
                edited = editor.faces(written)  # (none found: left out of that figure)
                st["out_both"].append(changed_outside(img, written, outside & hull_masks(edited[0].landmarks, img.shape)[1])
                                      if edited else float("nan"))

    print(f"\nper-stage median seconds per {args.size or 1024} px edit (2 CPU cores):")
    for k, v in stages.items():
        print(f"  {k:10s} {np.median(v):.4f}")
    print(f"  {'total':10s} {np.median(totals):.4f}  (edit() end to end, median of {len(totals)})")
    print("\n| emotion | judge rate | on dlib boxes | identity dist. | verified | sharpness | changed outside (%) "
          "| outside the face before and after (%) | n |")
    print("|---|---|---|---|---|---|---|---|---|")
    allv = {k: [] for k in ("hit", "box", "id", "sharp", "out", "out_both")}
    for emo, st in stats.items():
        for k in allv:
            allv[k] += st[k]
        ident = np.array(st["id"])
        print(f"| {emo} | {np.mean(st['hit']):.1%} | {np.mean(st['box']):.1%} | {ident.mean():.3f} | {(ident < 0.6).mean():.1%} | "
              f"{np.nanmean(st['sharp']):.3f} | {100 * np.nanmean(st['out']):.3f} | {100 * np.nanmean(st['out_both']):.3f} "
              f"| {len(ident)} |")
    ident = np.array(allv["id"])
    print(f"| all | {np.mean(allv['hit']):.1%} | {np.mean(allv['box']):.1%} | {ident.mean():.3f} | {(ident < 0.6).mean():.1%} | "
          f"{np.nanmean(allv['sharp']):.3f} | {100 * np.nanmean(allv['out']):.3f} | {100 * np.nanmean(allv['out_both']):.3f} "
          f"| {len(ident)} |")
    print(f"(on dlib boxes, {missed} edited faces dlib's detector did not find count as not recognised)")
    print("\njudge rate on the portraits whose own expression the judge reads as neutral "
          "(editing from a neutral face; the others mostly smile):")
    print("| emotion | from neutral (aligned / dlib box) | n | from other expressions (aligned / dlib box) | n |")
    print("|---|---|---|---|---|")
    for emo, st in stats.items():
        hit, box, neu = np.array(st["hit"]), np.array(st["box"]), np.array(st["neutral"]) > 0
        a = f"{hit[neu].mean():.1%} / {box[neu].mean():.1%}" if neu.any() else "-"
        b = f"{hit[~neu].mean():.1%} / {box[~neu].mean():.1%}" if (~neu).any() else "-"
        print(f"| {emo} | {a} | {int(neu.sum())} | {b} | {int((~neu).sum())} |")


if __name__ == "__main__":
    main()
