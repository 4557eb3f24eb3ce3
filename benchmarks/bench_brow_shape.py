"""How far the outer brow raiser reads above the inner one, real and at rest (prints its figures).

The AU estimator reads high-arched or groomed brows as an outer-brow raise (AU02) with the inner
brows (AU01) at rest; a brow raise lifts both. ``expression.brow_shape`` keeps the part of AU02
above AU01 + ``OUTER_BROW_ALONE`` in every emotion target. This prints the evidence and the
effect, with the same landmarker and estimator the editor uses:

* AU02 - AU01 on the shared Taiwanese performers' neutral, surprised and fearful photos
  (median, 90th percentile, largest) and the share of photos whose brow shape reads above 0;
* every shared 1024 px portrait whose brow shape reads above 0: its AU01, AU02 and shape;
* for the portraits whose brow shape reads ``--shape`` or more: how far the default model's
  target moves the brows (their upper edge above the eye corners, over the outer eye corners'
  distance) made neutral, sad and surprised; with ``OUTER_BROW_ALONE`` set very high the same
  edits without the kept shape, side by side.

Usage::

    python benchmarks/bench_brow_shape.py [--shape 2.5]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EDITS = ("neutral", "sad", "surprised")

sys.path.insert(0, str(REPO / "tests"))
from helpers import brow_height  # noqa: E402  (the tests' own measure of the brows' height)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=float, default=2.5, help="brow shape from which a portrait's edits are measured")
    args = ap.parse_args()
    taiwanese, portraits = DATA / "taiwanese", DATA / "inputs" / "portraits_1024"
    if not taiwanese.is_dir() or not portraits.is_dir():
        print(f"skipped: {taiwanese} or {portraits} not found (the shared face data)")
        return

    import facexpr.expression as expression
    import facexpr.pipeline.geometry as geo
    from facexpr.expression import AU_NAMES, brow_shape, emotion_aus
    from facexpr.face.aus import aus_from_blendshapes
    from facexpr.imageio import load_image
    from facexpr.pipeline import Editor

    au01, au02 = AU_NAMES.index("AU01"), AU_NAMES.index("AU02")
    with Editor.from_pretrained(None) as editor:
        read: dict[str, list[np.ndarray]] = {}
        with open(taiwanese / "manifest.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["expression"] in ("neutral", "surprised", "fearful"):
                    faces = editor.faces(load_image(taiwanese / row["file"]).rgb)
                    if faces:
                        read.setdefault(row["expression"], []).append(
                            aus_from_blendshapes(faces[0].blendshapes, faces[0].landmarks))
        print(f"AU02 - AU01 on the Taiwanese performers' photos (OUTER_BROW_ALONE = {expression.OUTER_BROW_ALONE:g})")
        print("| photos | n | median | 90th percentile | largest | brow shape above 0 |")
        print("|---|---|---|---|---|---|")
        for name, rows in read.items():
            aus = np.stack(rows)
            gap = aus[:, au02] - aus[:, au01]
            print(f"| {name} | {len(aus)} | {np.median(gap):.2f} | {np.percentile(gap, 90):.2f} | {gap.max():.2f} "
                  f"| {100 * np.mean(brow_shape(aus) > 0):.0f} % |")

        measured = []
        print("\nportraits whose brow shape reads above 0")
        print("| portrait | AU01 | AU02 | brow shape |")
        print("|---|---|---|---|")
        for path in sorted(portraits.glob("*.jpg")):
            img = load_image(path).rgb
            face = editor.faces(img)[0]
            lm = np.asarray(face.landmarks, np.float64)
            src = aus_from_blendshapes(face.blendshapes, lm)
            shape = float(brow_shape(src))
            if shape > 0:
                print(f"| {path.stem} | {src[au01]:.1f} | {src[au02]:.1f} | {shape:.1f} |")
            if shape >= args.shape:
                measured.append((img, lm, src))

        kept = expression.OUTER_BROW_ALONE
        moves: dict[str, dict[str, list[float]]] = {"kept": {}, "relaxed": {}}
        for label, allowance in (("kept", kept), ("relaxed", 1e9)):
            expression.OUTER_BROW_ALONE = allowance
            try:
                for img, lm, src in measured:
                    paint = geo.paintable_eyes(editor.geometry, img, lm)
                    for emotion in EDITS:
                        target = geo.target_landmarks(editor.geometry, lm, src, emotion_aus(emotion, 1.0, src), paint)
                        moves[label].setdefault(emotion, []).append(brow_height(target) - brow_height(lm))
            finally:
                expression.OUTER_BROW_ALONE = kept
        print(f"\nbrow height change (over the eye distance) on the {len(measured)} portraits whose shape reads "
              f"{args.shape:g} or more, min..max (median)")
        print("| target | the shape relaxed as an expression | the shape kept (now) |")
        print("|---|---|---|")
        for emotion in EDITS:
            cells = [f"{min(v):+.3f}..{max(v):+.3f} ({np.median(v):+.3f})"
                     for v in (moves["relaxed"].get(emotion, [0.0]), moves["kept"].get(emotion, [0.0]))]
            print(f"| {emotion} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
