"""Speed of the face pipeline: analysis per photo, alignment and paste-back.

Run: ``nice python benchmarks/bench_face.py [--data ../shared/data] [--n 100]``.
Prints milliseconds per call (median and mean over the photos) for

- ``analyze`` on the 1024 px portraits, on 200 px UTKFace crops (the ``prepare`` workload: the
  budget is ~20 ms per image so 2 cores reach >= 30 images/s), on 150 px LFW crops and on the
  multi-face group photo (the slow path: HOG + tiles + crop re-landmarking);
- ``align_face`` at 128 and 256 px from a 1024 px portrait (area-averaged downscale);
- ``paste_back`` of a 256 px crop into the 1024 px portrait, and ``face_mask``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facexpr.face import align as A
from facexpr.face.detect import FaceAnalyzer
from facexpr.imageio import load_image


def _time(fn: Callable[[], object], repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1000.0


def _report(name: str, times_ms: list[float], extra: str = "") -> None:
    print(
        f"{name:<38} n={len(times_ms):<4} median {statistics.median(times_ms):7.1f} ms   "
        f"mean {statistics.fmean(times_ms):7.1f} ms   max {max(times_ms):7.1f} ms  {extra}"
    )


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEXPR_SHARED_DATA", here.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=100, help="dataset crops to time per set")
    args = ap.parse_args()
    data: Path = args.data
    if not (data / "README.md").exists():
        raise SystemExit(f"shared data not found at {data}; pass --data")
    print(f"threads: cv2 {__import__('cv2').getNumThreads()}, cores {os.cpu_count()}")

    portraits = sorted((data / "inputs" / "portraits_1024").glob("*"))
    utk = sorted((data / "utkface" / "images").glob("*.jpg"))[: args.n]
    lfw = sorted((data / "lfw" / "images").glob("*.jpg"))[: args.n]
    misc = data / "inputs" / "misc"

    with FaceAnalyzer() as fa:
        fa.analyze(load_image(portraits[0]).rgb)  # warm-up (graph init, XNNPACK)

        for label, files in (("analyze 1024 px portraits", portraits), ("analyze 200 px UTKFace", utk),
                             ("analyze 150 px LFW", lfw)):
            images = [load_image(p).rgb for p in files]
            counts: list[int] = []
            times = [_time(lambda im=im: counts.append(len(fa.analyze(im)))) for im in images]
            _report(label, times, f"faces/image {np.mean(counts):.2f}")

        group = load_image(misc / "multi_face.jpg").rgb
        n_found: list[int] = []
        _report("analyze multi_face.jpg (1000x667)", [_time(lambda: n_found.append(len(fa.analyze(group)))) for _ in range(5)],
                f"faces {n_found[-1]}")
        bw = load_image(misc / "BWPictureHuman.jpg").rgb
        _report("analyze BWPictureHuman.jpg (2560x1912)", [_time(lambda: fa.analyze(bw)) for _ in range(3)])

        t0 = time.perf_counter()
        for p in utk:
            rgb = load_image(p).rgb
            for f in fa.analyze(rgb):
                A.align_face(rgb, f.landmarks, 128)
        per = (time.perf_counter() - t0) / len(utk)
        print(f"load+analyze+align 200 px, 1 process: {1 / per:.1f} images/s ({per * 1000:.1f} ms/image)")

        rgb = load_image(portraits[0]).rgb
        face = fa.analyze(rgb)[0]

    for size in (128, 256, 512):
        _report(f"align_face 1024 px -> {size}", [_time(lambda s=size: A.align_face(rgb, face.landmarks, s), 20) for _ in range(5)])
    al = A.align_face(rgb, face.landmarks, 256)
    _report("face_mask 256", [_time(lambda: A.face_mask(al.landmarks, 256), 20) for _ in range(5)])
    mask = A.face_mask(al.landmarks, 256)
    _report("paste_back 256 -> 1024 px photo", [_time(lambda: A.paste_back(rgb, al.crop, al.matrix, mask), 20) for _ in range(5)])
    _report("warp_to_image 256 -> 1024 px", [_time(lambda: A.warp_to_image(mask, al.matrix, rgb.shape), 20) for _ in range(5)])


if __name__ == "__main__":
    main()
