"""Video benchmark: reenactment speed at 512 and 1024 px, and temporal stability (prints figures).

Speed: a portrait reenacted by the shared talking-face video, end to end (decode, driving-face
analysis, edit, encode), per stage and in frames per second, on this machine's cores.

Stability: the output face's landmarks are re-measured on every output frame and their
frame-to-frame jitter (mean |second difference|, in % of the inter-ocular distance) is reported
next to the driving face's own, with and without the One-Euro smoothing.

Usage::

    python benchmarks/bench_video.py [--frames N] [--speed-only]
    python benchmarks/bench_video.py --edit-video CLIP.mp4

``--edit-video`` instead times ``facexpr edit CLIP.mp4 --emotion happy`` end to end through
``pipeline.video.edit_video`` (e.g. a 4K clip: the analysis runs on a downscaled copy, the warp at
full resolution) and prints frames/s and the stages per frame; ``finish`` is the wait, after the
last frame, for ffmpeg to encode the frames it still holds.
"""

from __future__ import annotations

import argparse
import tempfile
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "inputs"


def jitter(landmarks: list[np.ndarray]) -> float:
    """Mean |x[t+1] - 2 x[t] + x[t-1]| over points and frames, % of the inter-ocular distance."""
    lm = np.stack(landmarks)[:, :468, :2].astype(np.float64)
    iod = np.linalg.norm(lm[:, 263] - lm[:, 33], axis=1).mean()
    acc = lm[2:] - 2 * lm[1:-1] + lm[:-2]
    return float(100 * np.linalg.norm(acc, axis=2).mean() / iod)


def edit_speed(clip: Path) -> None:
    """frames/s and ms per frame of each stage for ``facexpr edit CLIP --emotion happy``."""
    import os

    from facexpr.pipeline import Editor
    from facexpr.pipeline import video as V
    from facexpr.pipeline.targets import EmotionTarget

    info = V.probe(clip)
    with Editor.from_pretrained() as editor, tempfile.TemporaryDirectory() as tmp:
        report = V.edit_video(editor, clip, Path(tmp) / "out.mp4", EmotionTarget("happy"))
    per = {k: 1000 * v / report.frames for k, v in report.stages.items()}
    print(f"{clip.name} {info.size[0]}x{info.size[1]}: {report.frames} frames, {report.speed:.2f} frames/s end to "
          f"end; ms per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in per.items())
          + f"; load {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=240, help="driving frames to use")
    ap.add_argument("--speed-only", action="store_true", help="skip the stability measurement")
    ap.add_argument("--edit-video", type=Path, metavar="CLIP", help="time editing this video instead")
    args = ap.parse_args()
    if args.edit_video:
        edit_speed(args.edit_video)
        return
    driving = DATA / "misc" / "WolfgangLanger_Pexels.mp4"
    portrait = DATA / "portraits_1024" / "ref_male_137590.jpg"
    if not driving.is_file() or not portrait.is_file():
        print(f"skipped: shared data not found under {DATA}")
        return

    from facexpr.face.detect import FaceAnalyzer
    from facexpr.imageio import load_image
    from facexpr.pipeline import Editor
    from facexpr.pipeline import video as V

    photo = load_image(portrait).rgb
    info = V.probe(driving)
    frames = list(islice(V.read_frames(driving), args.frames))
    print(f"driving: {driving.name} {info.size[0]}x{info.size[1]} {info.fps:g} fps, {len(frames)} frames")
    with Editor.from_pretrained() as editor, tempfile.TemporaryDirectory() as tmp:
        for side in (512, 1024):
            img = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
            stats: dict[str, float] = {}
            seq = V.reenact_frames(editor, img, iter(frames), info.fps, stats=stats)
            report = V._run(seq, Path(tmp) / f"r{side}.mp4", (side, side), info, None, stats)
            per = {k: 1000 * v / report.frames for k, v in report.stages.items()}
            print(f"{side} px: {report.speed:.1f} frames/s end to end (decode + analysis + edit + encode); "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in per.items()))
        if args.speed_only:
            return
        img = cv2.resize(photo, (512, 512), interpolation=cv2.INTER_AREA)
        with FaceAnalyzer(max_faces=1, fallback="none", tiles=False) as fa:
            drv = [fa.analyze(f)[0].landmarks for f in frames]
            print(f"\njitter (% of inter-ocular distance per frame^2), driving face: {jitter(drv):.3f}")
            for smooth in (False, True):
                out = V.reenact_frames(editor, img, iter(frames), info.fps, smooth=smooth)
                lms = [fa.analyze(f)[0].landmarks for f in out]
                print(f"  output face, smoothing {'on ' if smooth else 'off'}: {jitter(lms):.3f}")


if __name__ == "__main__":
    main()
