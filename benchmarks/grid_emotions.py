"""Side-by-side grid: each photo, then the same photo edited to every emotion (a PNG to look at).

One row per photo: the input, then happy, sad, angry, surprised, fearful, disgusted, neutral at
the given intensity. A photo with one face is cropped around it (edited at full resolution,
the crop is only for viewing); a photo with several faces edits all of them and shows the whole
photo.

``--zoom mouth`` or ``--zoom eyes`` shows that part of the largest face at the photo's own
resolution instead (no downscaling: at 1024 px, what a viewer zooming in sees).

Usage::

    python benchmarks/grid_emotions.py OUT.png PHOTO... [--model NAME_OR_PATH] [--intensity 1]
                                       [--zoom mouth|eyes] [--emotions happy,angry]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

EMOTIONS = ("happy", "sad", "angry", "surprised", "fearful", "disgusted", "neutral")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("photos", nargs="+", type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--intensity", type=float, default=1.0)
    ap.add_argument("--cell", type=int, default=256, help="cell width in pixels")
    ap.add_argument("--zoom", choices=("mouth", "eyes"), default=None,
                    help="show the mouth or the eyes at full resolution instead of the face")
    ap.add_argument("--emotions", default=",".join(EMOTIONS), help="comma-separated emotions (columns)")
    args = ap.parse_args()
    emotions = tuple(e.strip() for e in args.emotions.split(",") if e.strip())

    from facexpr.imageio import load_image, save_image
    from facexpr.pipeline import Editor, EmotionTarget

    rows = []
    with Editor.from_pretrained(args.model) as editor:
        for path in args.photos:
            img = load_image(path).rgb
            faces = editor.faces(img)
            if args.zoom is not None:
                faces = faces[:1]
                lm = faces[0].landmarks
                pts = lm[[61, 291, 0, 17, 152], :2] if args.zoom == "mouth" else lm[[33, 133, 362, 263, 105, 334, 145, 374], :2]
                pad = 0.12 * float(np.ptp(lm[:468, 0]))
                (x0, y0), (x1, y1) = pts.min(0) - pad, pts.max(0) + pad
                box = (max(int(x0), 0), max(int(y0), 0), min(int(x1), img.shape[1]), min(int(y1), img.shape[0]))
            elif len(faces) == 1:
                x0, y0, x1, y1 = faces[0].box
                w = x1 - x0
                box = (max(int(x0 - 0.3 * w), 0), max(int(y0 - 0.35 * w), 0),
                       min(int(x1 + 0.3 * w), img.shape[1]), min(int(y1 + 0.15 * w), img.shape[0]))
            else:
                box = (0, 0, img.shape[1], img.shape[0])
            cells = [img]
            for emo in emotions:
                cells.append(editor.edit_faces(img, faces, [EmotionTarget(emo, args.intensity)] * len(faces)).image)
            x0, y0, x1, y1 = box
            cell = (x1 - x0) if args.zoom else args.cell  # a zoom keeps the photo's own pixels
            h = int(round(cell * (y1 - y0) / (x1 - x0)))
            row = [cv2.resize(c[y0:y1, x0:x1], (cell, h), interpolation=cv2.INTER_AREA) for c in cells]
            if rows and row[0].shape[1] != rows[0].shape[1] // len(cells):  # zooms: one width for all rows
                w0 = rows[0].shape[1] // len(cells)
                row = [cv2.resize(r, (w0, int(round(w0 * r.shape[0] / r.shape[1]))), interpolation=cv2.INTER_AREA)
                       for r in row]
            rows.append(np.concatenate(row, axis=1))
            print(f"{path.name}: {len(faces)} face(s)")
    width = rows[0].shape[1]
    step = width // (len(emotions) + 1)
    header = np.full((28, width, 3), 255, np.uint8)
    for k, name in enumerate(("input",) + emotions):
        cv2.putText(header, name, (k * step + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    save_image(args.out, np.concatenate([header, *rows], axis=0))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
