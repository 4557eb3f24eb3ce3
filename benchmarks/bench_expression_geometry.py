"""How far each emotion moves the face, real posed photos beside the default's edits (prints its figures).

For every Taiwanese performer with a neutral photo, each posed emotion's change from that
neutral photo (the mean over the performer's photos of the emotion) is set beside the change
the default model makes when it edits the same neutral photo to that emotion (``facexpr edit
--emotion E``; the edited photo's landmarks read back by the same landmarker). Changes are in
units of the outer eye corners' distance (the eyes' opening in units of each eye's width), so a
performer's face size does not count:

* mouth width: the corners' distance (``bench_mouth_shape.mouth_width``);
* corners: how far the corners sit below the middle of the lips (13-14); > 0 turned down;
* upper lip: how far the upper lip's top (0) sits below the nose tip (1); < 0 raised;
* lip gap: the inner lips' opening in the middle (13-14);
* lower lip, chin: how far the lower lip's bottom (17) and the chin (152) sit below the base of
  the nose (2); > 0 lowered (a smile parts its lips with the upper lip more than the jaw);
* brows: how far the brows sit above the eye corners (:func:`brow_height`); < 0 lowered;
* eyes: the lids' opening in the middle of each eye over the eye's width
  (:func:`facexpr.face.eyes.eye_opening`, both eyes' mean); < 0 narrowed.

With ``--from-smiles`` each performer's smiles are also made neutral, and the change from each
smile is set beside the change from that smile to the performer's neutral photo.

Each cell is the median over performers with the quartiles. The prototypes of the default's
emotion targets (``facexpr.expression.EMOTIONS``) were checked against it; the FER2013 judge's
rates are ``bench_geometry.py``'s.

Usage::

    python benchmarks/bench_expression_geometry.py [--emotions a,b] [--intensity X] [--from-smiles]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "tests"))
EMOTIONS = ("happy", "sad", "angry", "surprised", "fearful", "disgusted")
MEASURES = ("mouth width", "corners", "upper lip", "lip gap", "lower lip", "chin", "brows", "eyes")
#: The section of ``--from-smiles``: each performer's happy photos made neutral, the change from
#: each smile (their own neutral photo as the real change).
SMILES = "neutral, from their smiles"


def measures(landmarks: np.ndarray) -> np.ndarray:
    """The :data:`MEASURES` of one face (see the module's docstring for their units)."""
    from bench_mouth_shape import mouth_width
    from facexpr.face.eyes import eye_opening
    from facexpr.face.mouth import inter_ocular
    from helpers import brow_height

    lm = np.asarray(landmarks, np.float64)[:, :2]
    iod = inter_ocular(lm)
    middle = 0.5 * (lm[13] + lm[14])
    return np.array([
        mouth_width(lm),
        (0.5 * (lm[61, 1] + lm[291, 1]) - middle[1]) / iod,
        (lm[0, 1] - lm[1, 1]) / iod,
        (lm[14, 1] - lm[13, 1]) / iod,
        (lm[17, 1] - lm[2, 1]) / iod,
        (lm[152, 1] - lm[2, 1]) / iod,
        brow_height(lm),
        0.5 * (eye_opening(lm, 0) + eye_opening(lm, 1)),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emotions", default=",".join(EMOTIONS))
    ap.add_argument("--intensity", type=float, default=1.0, help="the edits' intensity (0..1)")
    ap.add_argument("--from-smiles", action="store_true",
                    help="also make each performer's smiles neutral: the change from the smile, their neutral photo beside it")
    args = ap.parse_args()
    taiwanese = SHARED / "taiwanese"
    if not (taiwanese / "manifest.csv").is_file():
        print(f"skipped: the shared face data is not at {SHARED}")
        return

    from bench_mouth_shape import describe
    from facexpr.imageio import load_image
    from facexpr.pipeline import Editor, EmotionTarget

    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()]
    with open(taiwanese / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["expression"] in {"neutral", "happy", *emotions}]
    files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        files[row["identity"]][row["expression"]].append(row["file"])
    real: dict[str, list[np.ndarray]] = defaultdict(list)
    edited: dict[str, list[np.ndarray]] = defaultdict(list)
    people = 0
    with Editor.from_pretrained() as editor:
        def read(img: np.ndarray) -> np.ndarray | None:
            faces = editor.faces(img)
            return measures(faces[0].landmarks) if faces else None

        for person in files.values():
            if not person["neutral"]:
                continue
            neutral = load_image(taiwanese / person["neutral"][0]).rgb
            rest = read(neutral)
            if rest is None:
                continue
            people += 1
            for emotion in emotions:
                posed = [m for m in (read(load_image(taiwanese / f).rgb) for f in person[emotion]) if m is not None]
                if not posed:
                    continue
                real[emotion].append(np.mean(posed, axis=0) - rest)
                out = read(editor.edit(neutral, EmotionTarget(emotion, args.intensity), faces="largest"))
                if out is not None:
                    edited[emotion].append(out - rest)
            if args.from_smiles:
                # Their smiles made neutral: the change from each smile, real (their neutral
                # photo) and edited, the mean over their smiles.
                real_change, edit_change = [], []
                for f in person["happy"]:
                    smile = load_image(taiwanese / f).rgb
                    start, out = read(smile), None
                    if start is not None:
                        out = read(editor.edit(smile, EmotionTarget("neutral", args.intensity), faces="largest"))
                    if out is not None:
                        real_change.append(rest - start)
                        edit_change.append(out - start)
                if real_change:
                    real[SMILES].append(np.mean(real_change, axis=0))
                    edited[SMILES].append(np.mean(edit_change, axis=0))

    print(f"{people} Taiwanese performers, each emotion's change from the performer's own neutral photo "
          f"(over the outer eye corners' distance; the eyes' opening over the eye's width): real posed photos / "
          f"the default's edit of the neutral photo at intensity {args.intensity:g}; median (quartiles) over "
          f"performers\n")
    for emotion in emotions + ([SMILES] if args.from_smiles else []):
        r, e = np.array(real[emotion]), np.array(edited[emotion])
        print(f"{emotion} ({len(r)} performers)\n")
        print("| measure | real | edited |")
        print("|---|---|---|")
        for k, name in enumerate(MEASURES):
            print(f"| {name} | {describe(r[:, k] if len(r) else [], signed=True)} "
                  f"| {describe(e[:, k] if len(e) else [], signed=True)} |")
        print()


if __name__ == "__main__":
    main()
