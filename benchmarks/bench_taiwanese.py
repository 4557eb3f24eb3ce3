"""Edits of neutral studio faces beside the same people's real posed expressions (prints its figures).

Each performer of the shared Taiwanese set is edited from their first neutral photo (256 px) to
every emotion, written and read back as ``facexpr edit`` does. The same person's real posed
photos of that emotion are the reference, measured the same way:

* the FER2013 judge's rate, on the aligned crop (landmark framing) and on dlib's HOG box
  (detector framing, tighter);
* dlib identity distance to the neutral photo and the verification rate (< 0.6): what the
  identity of a real change of expression costs, next to an edit's.

Their real smiles are also made neutral ("neutral, from their smiles"): judged as neutral and
measured against the neutral photo, beside their other real neutral photos.

Read the figures with care: the default model's rig and shading were fitted on these people
(all but performers 25 and 29), so this is not a held-out test of the model. What it gives
that the held-out portraits cannot is the real expression of the same face to compare with.

Usage::

    python benchmarks/bench_taiwanese.py [--model NAME_OR_PATH] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TAIWANESE = REPO.parent / "shared" / "data" / "taiwanese"
EMOTIONS = ("happy", "sad", "angry", "surprised", "fearful", "disgusted", "neutral")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model name or folder (default: the shipped default)")
    ap.add_argument("--limit", type=int, default=None, help="at most N performers")
    args = ap.parse_args()
    if not (TAIWANESE / "manifest.csv").is_file():
        print(f"skipped: {TAIWANESE} not found (the shared face data)")
        return

    import dlib

    from facexpr.evaluation.judge import ExpressionJudge, dlib_box_crop
    from facexpr.face.align import align_face
    from facexpr.face.identity import IdentityEncoder
    from facexpr.imageio import load_image, save_image
    from facexpr.pipeline import Editor, EmotionTarget

    photos: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    with open(TAIWANESE / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            photos[row["identity"]][row["expression"]].append(TAIWANESE / row["file"])
    people = sorted(p for p in photos if photos[p]["neutral"])[: args.limit]
    judge = ExpressionJudge.from_pretrained("fer")
    hog = dlib.get_frontal_face_detector()
    keys = ("aligned", "box", "missed", "id")
    edit = {e: {k: [] for k in keys} for e in EMOTIONS}
    real = {e: {k: [] for k in keys} for e in EMOTIONS}
    relaxed: dict[str, list[float]] = {k: [] for k in keys}  # their smiles made neutral
    smiles: list[float] = []  # identity distance of their smiles as photographed

    def judged(rgb: np.ndarray, landmarks: np.ndarray, emotion: str, into: dict[str, list[float]]) -> None:
        want = judge.class_index(emotion)
        p = judge.predict_proba(align_face(rgb, landmarks, 128).crop[None])[0]
        into["aligned"].append(float(p.argmax() == want))
        boxed = dlib_box_crop(rgb, judge.config, detector=hog)
        into["box"].append(0.0 if boxed is None else float(judge.predict_proba(boxed[None])[0].argmax() == want))
        into["missed"].append(float(boxed is None))

    with Editor.from_pretrained(args.model) as editor, IdentityEncoder() as ids, tempfile.TemporaryDirectory() as tmp:
        print(f"model {editor.info.name}; {len(people)} performers x {len(EMOTIONS)} emotions")
        for who in people:
            source = sorted(photos[who]["neutral"])[0]
            loaded = load_image(source)
            faces = editor.faces(loaded.rgb)
            if not faces:
                print(f"  performer {who}: no face found in {source.name}, skipped")
                continue
            face = faces[0]
            emb = ids.embed(loaded.rgb, face.landmarks[:, :2])
            for emo in EMOTIONS:
                out = Path(tmp) / f"out{source.suffix}"
                save_image(out, editor.edit(loaded.rgb, EmotionTarget(emo, 1.0), faces="largest"), like=loaded)
                written = load_image(out).rgb
                judged(written, face.landmarks, emo, edit[emo])
                edit[emo]["id"].append(float(np.linalg.norm(ids.embed(written, face.landmarks[:, :2]) - emb)))
                for path in sorted(photos[who][emo]):
                    if path == source:
                        continue
                    img = load_image(path).rgb
                    found = editor.faces(img)
                    if not found:
                        continue
                    judged(img, found[0].landmarks, emo, real[emo])
                    real[emo]["id"].append(float(np.linalg.norm(ids.embed(img, found[0].landmarks[:, :2]) - emb)))
            # Their smiles made neutral, against their own neutral photo (``source``).
            for path in sorted(photos[who]["happy"]):
                smiling = load_image(path)
                found = editor.faces(smiling.rgb)
                if not found:
                    continue
                lm = found[0].landmarks
                out = Path(tmp) / f"out{path.suffix}"
                save_image(out, editor.edit(smiling.rgb, EmotionTarget("neutral", 1.0), faces="largest"), like=smiling)
                written = load_image(out).rgb
                judged(written, lm, "neutral", relaxed)
                relaxed["id"].append(float(np.linalg.norm(ids.embed(written, lm[:, :2]) - emb)))
                smiles.append(float(np.linalg.norm(ids.embed(smiling.rgb, lm[:, :2]) - emb)))

    print("\n| emotion | judge, edit (aligned / dlib box) | judge, real (aligned / dlib box) | "
          "identity dist. edit (verified) | identity dist. real (verified) | n edit | n real |")
    print("|---|---|---|---|---|---|---|")

    def row(name: str, a: dict[str, list[float]], b: dict[str, list[float]]) -> str:
        if not a["id"] or not b["id"]:
            return f"| {name} | - | - | - | - | {len(a['id'])} | {len(b['id'])} |"
        ia, ib = np.array(a["id"]), np.array(b["id"])
        return (f"| {name} | {np.mean(a['aligned']):.1%} / {np.mean(a['box']):.1%} | "
                f"{np.mean(b['aligned']):.1%} / {np.mean(b['box']):.1%} | {ia.mean():.3f} ({(ia < 0.6).mean():.1%}) | "
                f"{ib.mean():.3f} ({(ib < 0.6).mean():.1%}) | {len(ia)} | {len(ib)} |")

    for emo in EMOTIONS:
        print(row(emo, edit[emo], real[emo]))
    five = ("happy", "sad", "angry", "surprised", "neutral")
    print(row("the five", {k: sum((edit[e][k] for e in five), []) for k in keys},
              {k: sum((real[e][k] for e in five), []) for k in keys}))
    print(row("neutral, from their smiles", relaxed, real["neutral"]))
    print("(real neutral: the performer's other neutral photos; a face dlib's detector misses counts as not "
          f"recognised: {int(sum(sum(d['missed']) for d in edit.values()) + sum(relaxed['missed']))} edits, "
          f"{int(sum(sum(d['missed']) for d in real.values()))} real photos. \"From their smiles\": each of "
          "their happy photos made neutral; identity against the neutral photo edited above, where their smiles "
          f"as photographed are {np.mean(smiles) if smiles else float('nan'):.3f})")


if __name__ == "__main__":
    main()
