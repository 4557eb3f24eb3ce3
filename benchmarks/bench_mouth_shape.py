"""The mouth's proportions in real posed expressions beside the default's edits (prints its figures).

Yardsticks of how real the mouth's shape is, measured with the same landmarker:

* how far the lips part: the inner-lip gap in the middle of the mouth (landmarks 13-14) over the
  mouth's width (61-291), with the share of faces whose lips part at all (more than
  ``PARTED`` of the width);
* how thick the lower lip is in the middle of the mouth (landmarks 14-17, across the mouth in its
  own frame, over the outer eye corners' distance), against the same face's: a real performer's
  own neutral photos (their median), an edit's photo. (The columns toward the corners are a few
  pixels thick on a smile, too thin to divide by.)
* how wide the mouth is (61-291 over the outer eye corners' distance) for every emotion, the
  edits split by the photo's own expression (a resting face or a smile, AU12 from 2).

Real: the shared Taiwanese performers' posed photos (256 px, studio). Edited: where the default
model's rig moves the landmarks of the 1024 px portraits (``--start`` / ``--limit``; the first 20
are the ones the defaults were tuned on), the target of ``facexpr edit --emotion E`` at
``--intensity`` (default 1).

Usage::

    python benchmarks/bench_mouth_shape.py [--start N] [--limit N] [--emotions a,b] [--intensity X]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EMOTIONS = ("happy", "angry", "surprised", "fearful", "disgusted")
#: Every emotion, for the mouth's width.
WIDTH_EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised", "fearful", "disgusted")
#: Lips part when the gap in the middle is more than this share of the mouth's width.
PARTED = 0.05


def lower_lip(lm: np.ndarray) -> float:
    """The lower lip's thickness in the middle of the mouth (14 to 17), across the mouth, over the
    outer eye corners' distance (a size the expression does not change)."""
    from facexpr.face.mouth import inter_ocular, mouth_axes

    lm = np.asarray(lm, np.float64)[:, :2]
    return float((lm[17] - lm[14]) @ mouth_axes(lm)[2]) / inter_ocular(lm)


def mouth_width(lm: np.ndarray) -> float:
    """The mouth's width, corner to corner (61-291), over the outer eye corners' distance."""
    from facexpr.face.mouth import inter_ocular, mouth_axes

    return mouth_axes(lm)[3] / inter_ocular(lm)


def describe(values: list[float], signed: bool = False) -> str:
    """Median (quartiles) of ``values``; ``signed`` writes the sign and "to" between the
    quartiles (changes, which may be negative)."""
    v = np.asarray(values, np.float64)
    if not len(v):
        return "-"
    med, lo, hi = np.median(v), np.percentile(v, 25), np.percentile(v, 75)
    if signed:
        return f"{med:+.3f} ({lo:+.3f} to {hi:+.3f})"
    return f"{med:.3f} ({lo:.3f}-{hi:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", type=int, default=0, help="skip the first N portraits")
    ap.add_argument("--limit", type=int, default=None, help="at most N portraits")
    ap.add_argument("--emotions", default=",".join(EMOTIONS))
    ap.add_argument("--intensity", type=float, default=1.0, help="the edits' intensity (0..1)")
    args = ap.parse_args()
    taiwanese, portraits = SHARED / "taiwanese", SHARED / "inputs" / "portraits_1024"
    if not (taiwanese / "manifest.csv").is_file() or not portraits.is_dir():
        print(f"skipped: the shared face data is not at {SHARED}")
        return

    from facexpr.expression import AU_NAMES
    from facexpr.imageio import load_image
    from facexpr.pipeline import Editor, EmotionTarget
    from facexpr.pipeline.geometry import lip_opening_ratio as opening  # gap 13-14 / width 61-291
    from facexpr.pipeline.geometry import SMILE_AU12  # a photo reading this or more smiles (as the editor takes it)
    from facexpr.pipeline.geometry import paintable_eyes, target_landmarks

    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()]
    real_open: dict[str, list[float]] = defaultdict(list)
    real_parted: dict[str, list[bool]] = defaultdict(list)
    real_thick: dict[str, list[float]] = defaultdict(list)
    edit_open: dict[str, list[float]] = defaultdict(list)
    edit_parted: dict[str, list[bool]] = defaultdict(list)
    edit_thick: dict[str, list[float]] = defaultdict(list)
    real_width: dict[str, list[float]] = defaultdict(list)
    edit_width: dict[tuple[str, bool], list[float]] = defaultdict(list)  # (emotion, from a smile)
    with Editor.from_pretrained() as editor:
        with open(taiwanese / "manifest.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        measured: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            if row["expression"] not in set(emotions) | set(WIDTH_EMOTIONS):
                continue
            faces = editor.faces(load_image(taiwanese / row["file"]).rgb)
            if faces:
                measured[row["identity"]][row["expression"]].append(faces[0].landmarks)
        for person in measured.values():
            for emotion in WIDTH_EMOTIONS:  # each performer's median, so no one weighs more
                if person[emotion]:
                    real_width[emotion].append(float(np.median([mouth_width(lm) for lm in person[emotion]])))
            if not person["neutral"]:
                continue
            rest = float(np.median([lower_lip(lm) for lm in person["neutral"]]))
            for emotion in emotions:
                for lm in person[emotion]:
                    gap = opening(lm)
                    real_parted[emotion].append(gap > PARTED)
                    if gap > PARTED:
                        real_open[emotion].append(gap)
                        real_thick[emotion].append(lower_lip(lm) / rest)

        paths = sorted(portraits.glob("*.jpg"))[args.start:][: args.limit]
        for path in paths:
            img = load_image(path).rgb
            faces = editor.faces(img)
            if not faces:
                continue
            face = faces[0]
            paint = paintable_eyes(editor.geometry, img, face.landmarks)
            before = lower_lip(face.landmarks)
            for emotion in dict.fromkeys([*emotions, *WIDTH_EMOTIONS]):
                done = editor.edit_faces(img, [face], [EmotionTarget(emotion, args.intensity)]).faces[0]
                t = target_landmarks(editor.geometry, face.landmarks, done.source_aus, done.target_aus, paint)
                smiling = float(done.source_aus[AU_NAMES.index("AU12")]) >= SMILE_AU12
                edit_width[emotion, smiling].append(mouth_width(t))
                if emotion not in emotions:
                    continue
                gap = opening(t)
                edit_parted[emotion].append(gap > PARTED)
                if gap > PARTED:
                    edit_open[emotion].append(gap)
                    edit_thick[emotion].append(lower_lip(t) / before)

    print(f"real: {len(measured)} Taiwanese performers' posed photos; edited: {len(paths)} portraits "
          f"(from #{args.start}), the default's target landmarks at intensity {args.intensity:g}")
    print("opening = inner-lip gap / mouth width where the lips part; lower lip = its thickness in the middle "
          "against the same face's (real: the performer's neutral; edited: the photo); median (quartiles)\n")
    print("| emotion | lips parted, real / edited | opening, real | opening, edited | lower lip, real | "
          "lower lip, edited (largest) |")
    print("|---|---|---|---|---|---|")
    for emotion in emotions:
        thick = edit_thick[emotion]
        print(f"| {emotion} | {np.mean(real_parted[emotion]):.0%} of {len(real_parted[emotion])} / "
              f"{np.mean(edit_parted[emotion]):.0%} of {len(edit_parted[emotion])} | {describe(real_open[emotion])} | "
              f"{describe(edit_open[emotion])} | {describe(real_thick[emotion])} | {describe(thick)}"
              f"{f' ({max(thick):.2f})' if thick else ''} |")
    print("\nmouth width = corners' distance / outer eye corners' distance; real: each performer's median, then "
          "the median (quartiles) over performers; edited: the portraits' targets, by the photo's own expression\n")
    print("| emotion | real | edited from a resting face | edited from a smile |")
    print("|---|---|---|---|")
    for emotion in WIDTH_EMOTIONS:
        rest, smile = edit_width[emotion, False], edit_width[emotion, True]
        print(f"| {emotion} | {describe(real_width[emotion])} | {describe(rest)} (n={len(rest)}) | "
              f"{describe(smile)} (n={len(smile)}) |")


if __name__ == "__main__":
    main()
