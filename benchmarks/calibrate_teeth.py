"""How dark the gaps between teeth are: real smiles against drawn ones (the figures behind
``facexpr.face.mouth_interior.UPPER_GAP_SHADE``).

Along a line through the upper teeth (``--depth`` of the way from the upper inner lip to the
lower one, corner to corner), every local minimum of the luma that is at least 4 levels below
the brighter of its two sides (6 px each way) counts as a gap between two teeth; its depth is
that drop over the brightest luma around it. Real: the shared 1024 px portraits whose lips are
apart (they show their own teeth). Drawn: the portraits with shut lips, made happy at full
intensity with the default model (the drawn opening's line, from the edit's target landmarks).
Prints the count of gaps and the median and 75th percentile of their depth::

    python benchmarks/calibrate_teeth.py [--depth 0.25 0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "inputs" / "portraits_1024"


def teeth_line(image: np.ndarray, landmarks: np.ndarray, depth: float) -> np.ndarray:
    """Luma along the line ``depth`` of the way down the opening, one sample per pixel (the three
    landmarks nearest each corner left out: the corners are shadow, not teeth)."""
    from facexpr.face.mouth import LOWER_INNER_LIP, UPPER_INNER_LIP

    upper = landmarks[list(UPPER_INNER_LIP), :2]
    lower = landmarks[list(LOWER_INNER_LIP), :2][::-1]
    line = upper + depth * (lower - upper)
    xs = np.arange(line[3, 0], line[-4, 0], 1.0)
    ys = np.interp(xs, line[:, 0], line[:, 1])
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.remap(grey, xs.astype(np.float32)[None], ys.astype(np.float32)[None], cv2.INTER_LINEAR)[0]


def gap_depths(line: np.ndarray) -> list[float]:
    """Each gap's drop below the brighter side, over the brightest luma within 6 px."""
    smooth = np.convolve(line, np.ones(3) / 3, mode="same")
    depths = []
    for i in range(6, len(smooth) - 6):
        win = smooth[i - 6:i + 7]
        if smooth[i] == win.min():
            drop = min(win[:6].max(), win[7:].max()) - smooth[i]
            if drop > 4:
                depths.append(float(drop / max(win.max(), 1.0)))
    return depths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--portraits", type=Path, default=SHARED)
    ap.add_argument("--depth", type=float, nargs="+", default=[0.25, 0.5])
    args = ap.parse_args()

    from facexpr.face.mouth import lip_opening
    from facexpr.imageio import load_image
    from facexpr.pipeline import Editor, EmotionTarget
    from facexpr.pipeline.geometry import edit_face

    real: dict[float, list[float]] = {d: [] for d in args.depth}
    drawn: dict[float, list[float]] = {d: [] for d in args.depth}
    with Editor.from_pretrained(None) as editor:
        for path in sorted(args.portraits.glob("*.jpg")):
            image = load_image(path).rgb
            faces = editor.faces(image)
            if not faces:
                continue
            face = faces[0]
            opening = lip_opening(face.landmarks)
            if opening > 0.05:  # lips apart: the photo's own teeth
                for d in args.depth:
                    real[d] += gap_depths(teeth_line(image, face.landmarks, d))
            elif opening < 0.01:  # shut: a drawn smile
                out = editor.edit_faces(image, [face], [EmotionTarget("happy", 1.0)])
                done = out.faces[0]
                target = edit_face(editor.geometry, image, face.landmarks, done.source_aus, done.target_aus).target_landmarks
                for d in args.depth:
                    drawn[d] += gap_depths(teeth_line(out.image, np.asarray(target, np.float64), d))
    print("depth  real: gaps median p75   drawn: gaps median p75")
    for d in args.depth:
        r, w = np.array(real[d]), np.array(drawn[d])
        print(f"{d:5.2f}  {len(r):10d} {np.median(r):6.3f} {np.percentile(r, 75):5.3f}"
              f"   {len(w):11d} {np.median(w):6.3f} {np.percentile(w, 75):5.3f}")


if __name__ == "__main__":
    main()
