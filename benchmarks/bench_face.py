"""Speed of the face pipeline: analysis per photo, alignment and paste-back.

Run: ``nice python benchmarks/bench_face.py [--data ../shared/data] [--n 100]``.
Prints milliseconds per call (median and mean over the photos) for

- ``analyze`` on the 1024 px portraits, on 200 px UTKFace crops (the ``prepare`` workload: the
  budget is ~20 ms per image so 2 cores reach >= 30 images/s), on 150 px LFW crops and on the
  multi-face group photo (the slow path: the small-face pyramid + crop re-landmarking);
- ``align_face`` at 128 and 256 px from a 1024 px portrait (area-averaged downscale);
- ``paste_back`` of a 256 px crop into the 1024 px portrait, and ``face_mask``;
- small faces and crowds (``--small-faces``, or alone with ``--small-faces-only``): the detection
  rate of CelebA-HQ portraits pasted with a 120 px face (and 40-80 px faces) into a 3000 px photo,
  a composed 12-person group photo (faces found and edited, time per face, pixels changed outside
  the faces) and the detection time on a 4000 px photo, with and without the small-face pyramid;
- detection time alone (``--detect-speed``): ``FaceAnalyzer.analyze`` on a 4000x3000 photo with
  one big face, with 8 faces of 120-300 px and with none, on a 3000 px photo with one 120 px face
  and on a 1024 px portrait (every face looked for, as ``--faces all``): median wall and CPU
  milliseconds (CPU: the whole process, onnxruntime's and MediaPipe's threads included), faces
  found. ``--against REV`` runs the same scenes with the code of git revision REV too (its
  ``src`` exported to a temporary folder), the two alternating in separate processes, and prints
  them side by side: ``python benchmarks/bench_face.py --detect-speed --against HEAD~1``, with the
  load average of other jobs before and after. Measured on two shared cores when the pyramid
  started running beside the whole-image pass and faces were landmarked on both cores (four runs,
  load 1.4-1.5 at their start; ms wall before -> after, the median of the runs' medians and the
  fastest run's): one 1200 px face 429 -> 353 (301 -> 281), 8 faces 533 -> 408 (507 -> 298),
  no face 396 -> 314 (233 -> 243), 3000 px with a 120 px face 312 -> 309 (203 -> 199), 1024 px
  portrait 51 -> 48 (42 -> 40); CPU the same (~430, 535, 400, 330, 53 ms). With the second core
  busy (wall close to CPU) both versions take the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facexpr.face import align as A
from facexpr.face.detect import FaceAnalyzer
from facexpr.imageio import load_image
from revisions import export_src


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


PORTRAIT_FACE = 0.6  # face size (landmark box) over the side of a CelebA-HQ portrait


def _canvas(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour noise: texture for the detector to be fooled by (a flat fill would not be)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (max(h // 64, 2), max(w // 64, 2), 3), dtype=np.uint8)
    bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return np.clip(bg + rng.normal(0, 6, (h, w, 1)), 0, 255).astype(np.uint8)


def _paste(canvas: np.ndarray, portrait: np.ndarray, face_px: float, cx: int, cy: int) -> tuple[int, int, int, int]:
    import cv2

    side = int(round(face_px / PORTRAIT_FACE))
    canvas[cy - side // 2:cy - side // 2 + side, cx - side // 2:cx - side // 2 + side] = cv2.resize(
        portrait, (side, side), interpolation=cv2.INTER_AREA)
    return cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side


def _hit(faces: list, square: tuple[int, int, int, int]) -> bool:
    x0, y0, x1, y1 = square
    return any(x0 <= (f.box[0] + f.box[2]) / 2 <= x1 and y0 <= (f.box[1] + f.box[3]) / 2 <= y1 for f in faces)


def small_faces(portraits: list[Path], n: int) -> None:
    """Detection of small faces in big photos, a group photo edited, detection time at 4000 px."""
    from facexpr.face.limits import refusals
    from facexpr.pipeline.editor import Editor
    from facexpr.pipeline.targets import EmotionTarget

    images = [load_image(p).rgb for p in portraits]
    rng = np.random.default_rng(0)
    with FaceAnalyzer() as fa:
        fa.analyze(images[0])
        for label, lo, hi in (("120 px faces in 3000 px photos", 120, 120), ("40-80 px faces in 3000 px photos", 40, 80)):
            found = editable = 0
            times: list[float] = []
            for k in range(n):
                canvas = _canvas(3000, 3000, k)
                px = float(rng.uniform(lo, hi))
                cx, cy = (int(v) for v in rng.integers(300, 2700, 2))
                square = _paste(canvas, images[k % len(images)], px, cx, cy)
                t0 = time.perf_counter()
                faces = fa.analyze(canvas)
                times.append((time.perf_counter() - t0) * 1000)
                hit = [i for i, f in enumerate(faces) if _hit([f], square)]
                found += bool(hit)
                editable += bool(hit) and hit[0] not in refusals(faces, 3000, 3000)
            _report(f"analyze, {label}", times,
                    f"found {found}/{n} ({100 * found / n:.0f} %), editable {editable}/{n}")

        for label, side, with_face in (("4000x3000 photo, one 300 px face", 4000, True),
                                       ("4000x3000 photo, no face", 4000, False)):
            canvas = _canvas(3000, side, 99)
            if with_face:
                _paste(canvas, images[1], 300, 2000, 1500)
            times = [_time(lambda: fa.analyze(canvas)) for _ in range(3)]
            _report(f"analyze {label}", times, f"faces {len(fa.analyze(canvas))}")
    with FaceAnalyzer(min_face=None) as fa:
        fa.analyze(images[0])
        canvas = _canvas(3000, 4000, 99)
        _paste(canvas, images[1], 300, 2000, 1500)
        _report("analyze 4000x3000, no pyramid (min_face=None)", [_time(lambda: fa.analyze(canvas)) for _ in range(3)])

    canvas = _canvas(2000, 3000, 7)
    sizes = [120, 160, 200, 90, 250, 140]
    squares = [_paste(canvas, images[k % len(images)], sizes[k % 6], 400 + (k % 4) * 730, 400 + (k // 4) * 600)
               for k in range(12)]
    with Editor.from_pretrained("default") as editor:
        editor.edit_array(images[0], EmotionTarget("happy", 1.0))  # warm-up
        t0 = time.perf_counter()
        result = editor.edit_array(canvas, EmotionTarget("happy", 1.0))
        total = time.perf_counter() - t0
    changed = np.any(result.image != canvas, axis=2)
    edited = sum(bool(changed[y0:y1, x0:x1].any()) for x0, y0, x1, y1 in squares)
    inside = np.zeros(changed.shape, bool)
    for f in editor_faces_boxes(result):
        x0, y0, x1, y1 = f
        inside[max(y0, 0):y1, max(x0, 0):x1] = True
    print(f"group photo 3000x2000, 12 faces of 90-250 px: {len(result.faces)} edited, {len(result.refused)} refused, "
          f"{edited}/12 pasted faces changed; {int((changed & ~inside).sum())} px changed outside the faces "
          f"(box + 1/3 of its size); {total:.2f} s in all ({result.timings.get('analysis', 0):.2f} s analysis), "
          f"{(total - result.timings.get('analysis', 0)) / max(len(result.faces), 1):.3f} s per face edit")


def _speed_scenes(portraits: list[Path]) -> list[tuple[str, np.ndarray]]:
    """The photos ``--detect-speed`` times, built the same way in every process."""
    images = [load_image(p).rgb for p in portraits[:12]]
    one = _canvas(3000, 4000, 99)
    _paste(one, images[1], 1200, 2000, 1500)
    many = _canvas(3000, 4000, 5)
    for k, px in enumerate((120, 160, 200, 250, 300, 140, 180, 220)):
        _paste(many, images[k], px, 500 + (k % 4) * 950, 700 + (k // 4) * 1500)
    small = _canvas(3000, 3000, 7)
    _paste(small, images[3], 120, 1900, 1300)
    return [("4000x3000, one 1200 px face", one), ("4000x3000, 8 faces of 120-300 px", many),
            ("4000x3000, no face", _canvas(3000, 4000, 11)), ("3000x3000, one 120 px face", small),
            ("1024 px portrait", images[2])]


def detect_speed_worker(portraits: list[Path], runs: int) -> None:
    """Time ``analyze`` on each scene ``runs`` times (after one untimed call); one JSON line each."""
    scenes = _speed_scenes(portraits)
    with FaceAnalyzer() as fa:
        fa.analyze(scenes[-1][1])  # graphs started, XNNPACK and onnxruntime warm
        for name, rgb in scenes:
            faces = fa.analyze(rgb)
            wall, cpu = [], []
            for _ in range(runs):
                c0, t0 = time.process_time(), time.perf_counter()
                faces = fa.analyze(rgb)
                wall.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
            print(json.dumps({"scene": name, "wall": wall, "cpu": cpu, "faces": len(faces)}), flush=True)


def detect_speed(data: Path, runs: int, rounds: int, against: str | None) -> None:
    """``--detect-speed``: this code's detection times, and REV's beside them with ``--against``."""
    here = Path(__file__).resolve()
    load0 = os.getloadavg()[0]  # other jobs on the cores: the spread of the figures
    sides = {"now": here.parents[1] / "src"}
    with tempfile.TemporaryDirectory() as tmp:
        if against:
            sides = {against: export_src(against, Path(tmp)), **sides}
        results: dict[str, dict[str, dict[str, list[float]]]] = {k: {} for k in sides}
        for _ in range(rounds):  # alternate, so a change in the machine's load hits both sides
            for side, src in sides.items():
                env = {**os.environ, "PYTHONPATH": str(src)}
                out = subprocess.run([sys.executable, str(here), "--data", str(data), "--detect-speed-worker",
                                      "--runs", str(runs)], env=env, capture_output=True, text=True, check=True).stdout
                for line in out.splitlines():
                    if line.startswith("{"):
                        r = json.loads(line)
                        acc = results[side].setdefault(r["scene"], {"wall": [], "cpu": [], "faces": []})
                        acc["wall"] += r["wall"]
                        acc["cpu"] += r["cpu"]
                        acc["faces"].append(r["faces"])
    print(f"analyze, every face; median of {rounds} x {runs} runs per scene, ms (wall / CPU of the process); "
          f"load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)")
    head = "".join(f"{side:>24}" for side in sides)
    print(f"{'scene':<36}{head}" + ("   after/before (wall)" if against else ""))
    for scene in results["now"]:
        walls = {side: statistics.median(results[side][scene]["wall"]) for side in sides}
        row = "".join(f"{walls[side]:8.0f} /{statistics.median(results[side][scene]['cpu']):6.0f}, "
                      f"{max(results[side][scene]['faces']):2d} faces" for side in sides)
        ratio = f"   {walls['now'] / walls[against]:.2f}" if against else ""
        print(f"{scene:<36}{row}{ratio}")


def editor_faces_boxes(result: object) -> list[tuple[int, int, int, int]]:
    """Each edited face's landmark box grown by a third of its size: the face's own region."""
    out = []
    for e in result.faces:  # type: ignore[attr-defined]
        x0, y0, x1, y1 = (float(v) for v in e.box)
        g = ((x1 - x0) * (y1 - y0)) ** 0.5 / 3
        out.append((int(x0 - g), int(y0 - g), int(x1 + g) + 1, int(y1 + g) + 1))
    return out


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEXPR_SHARED_DATA", here.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=100, help="dataset crops to time per set")
    ap.add_argument("--small-faces", action="store_true", help="also measure small faces and crowds")
    ap.add_argument("--small-faces-only", action="store_true", help="only measure small faces and crowds")
    ap.add_argument("--n-small", type=int, default=40, help="photos per small-face detection rate")
    ap.add_argument("--detect-speed", action="store_true", help="only time detection on big and small photos")
    ap.add_argument("--against", metavar="REV", help="with --detect-speed: also time git revision REV, side by side")
    ap.add_argument("--runs", type=int, default=3, help="with --detect-speed: timed calls per scene and process")
    ap.add_argument("--rounds", type=int, default=3, help="with --detect-speed: processes per side, alternating")
    ap.add_argument("--detect-speed-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data: Path = args.data
    if not (data / "README.md").exists():
        raise SystemExit(f"shared data not found at {data}; pass --data")
    print(f"threads: cv2 {__import__('cv2').getNumThreads()}, cores {os.cpu_count()}")

    portraits = sorted((data / "inputs" / "portraits_1024").glob("*"))
    if args.detect_speed_worker:
        detect_speed_worker(portraits, args.runs)
        return
    if args.detect_speed:
        detect_speed(data, args.runs, args.rounds, args.against)
        return
    if args.small_faces or args.small_faces_only:
        small_faces(portraits, args.n_small)
        if args.small_faces_only:
            return
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
