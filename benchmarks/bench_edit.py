"""End-to-end edit time per 1024 px portrait, split by stage, for torch and onnxruntime.

    python benchmarks/bench_edit.py [--model default] [--photos 8] [--repeats 3] [--threads N] [--faces all]
    python benchmarks/bench_edit.py --batch 24 [--workers 2] [--rounds 3]

Prints, per backend, the median seconds of analysis (MediaPipe + fallback detectors), alignment
(AU estimation, target, crop), generator, paste-back (full-resolution composition + blend) and
the end-to-end total, over the shared 1024 px portraits. The geometry family (the default) runs
one way only and prints its own stages instead: analysis, targets, rig, warp, shading, eyes,
mouth, paste, the edit without the analysis ("edit"), the CPU seconds of the whole edit on all
threads ("cpu": what a busy machine cannot hide) and the total. ``--faces largest`` skips
the small-face detectors. A CUDA device adds batched generator throughput. Reads ../shared/data
in place.

``--against REV`` runs the same measurement with the code of git revision REV too, the two in
turn ``--rounds`` times in fresh processes (a change in the machine's load hits both), and prints
each stage's median over the rounds side by side with the ratio; it also edits the portraits with
every emotion at two intensities (``--identity-photos``, default 12) with both versions and says
whether every edited photo is byte-identical: ``python benchmarks/bench_edit.py --faces largest
--against main``.

``--batch N`` measures batches instead: ``pipeline.batch.run_batch`` (what ``facexpr edit``
runs) on the first N portraits, files in and files out, serially, with a pool of ``--workers``
threads and with a pool of ``--workers`` processes (the caller plus spawned workers, their start
included), the three run in turn ``--rounds`` times; it prints photos/s (median, min-max) side by
side with the ratio to the serial run, and checks that every pool wrote the serial run's bytes.
With ``--against REV`` it runs REV's code and this code in turn instead (serial and threads, fresh
processes, ``--rounds`` times), prints their photos/s side by side, and checks that both wrote the
same bytes: ``python benchmarks/bench_edit.py --batch 24 --against main``.
"""

from __future__ import annotations

import argparse
import hashlib
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

from facexpr.imageio import load_image
from facexpr.pipeline.editor import Editor
from facexpr.pipeline.registry import resolve_model
from facexpr.pipeline.targets import EmotionTarget

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STAGES = ("analysis", "alignment", "generator", "paste")
GEOMETRY_STAGES = ("analysis", "targets", "rig", "warp", "shading", "eyes", "mouth", "paste", "edit", "cpu")


def bench(editor: Editor, photos: list[np.ndarray], repeats: int, stages: tuple[str, ...] = STAGES,
          faces: str = "all") -> dict[str, float]:
    target = EmotionTarget("happy", 0.8)
    editor.edit_array(photos[0], target, faces)  # warm-up: graph init, first allocations
    rows: dict[str, list[float]] = {s: [] for s in stages + ("total",)}
    for _ in range(repeats):
        for img in photos:
            t0, c0 = time.perf_counter(), time.process_time()
            res = editor.edit_array(img, target, faces)
            rows["total"].append(time.perf_counter() - t0)
            res.timings["cpu"] = time.process_time() - c0
            res.timings["edit"] = rows["total"][-1] - res.timings.get("analysis", 0.0)
            for s in stages:
                rows[s].append(res.timings.get(s, 0.0))
    return {k: statistics.median(v) for k, v in rows.items()}


#: The identity check's targets: every emotion, strong and moderate (different stages run).
IDENTITY_EMOTIONS = ("happy", "sad", "angry", "surprised", "fearful", "disgusted", "neutral")
IDENTITY_INTENSITIES = (1.0, 0.6)


def identity_hashes(editor: Editor, photos: list[np.ndarray], names: list[str], faces: str) -> dict[str, str]:
    """SHA-256 of every edited photo, per ``portrait|emotion@intensity``."""
    out = {}
    for name, img in zip(names, photos):
        for emotion in IDENTITY_EMOTIONS:
            for intensity in IDENTITY_INTENSITIES:
                result = editor.edit_array(img, EmotionTarget(emotion, intensity), faces)
                out[f"{name}|{emotion}@{intensity:g}"] = hashlib.sha256(result.image.tobytes()).hexdigest()
    return out


def in_turn(rev: str, rounds: int, worker_args: Callable[[int], list[str]]) -> tuple[dict[str, list[dict]], list[float]]:
    """REV's code and this code run in turn, ``rounds`` times, each as a fresh process of this
    script with ``worker_args(round)`` and ``--worker-json``: each side's JSON results, round by
    round (keys ``rev`` and ``"now"``), and the load average before and after every run."""
    from revisions import export_src

    here = Path(__file__).resolve()
    results: dict[str, list[dict]] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        sides = {rev: export_src(rev, Path(tmp)), "now": here.parents[1] / "src"}
        for r in range(rounds):
            for side, src in sides.items():
                out = Path(tmp) / f"{side.replace('/', '_')}.json"
                subprocess.run([sys.executable, str(here), *worker_args(r), "--worker-json", str(out)],
                               env={**os.environ, "PYTHONPATH": str(src)}, check=True, stdout=subprocess.DEVNULL)
                results.setdefault(side, []).append(json.loads(out.read_text()))
                loads.append(os.getloadavg()[0])
    return results, loads


def against(args: argparse.Namespace) -> int:
    """``--against REV``: this code and REV's, in turn, in fresh processes; 1 when edits differ."""
    results, loads = in_turn(args.against, args.rounds, lambda r: [
        "--model", args.model, "--photos", str(args.photos), "--repeats", str(args.repeats), "--faces", args.faces,
        "--identity-photos", str(args.identity_photos if r == 0 else 0)])  # bytes: once
    medians: dict[str, dict[str, list[float]]] = {}
    hashes: dict[str, dict[str, str]] = {}
    for side, runs in results.items():
        for got in runs:
            for stage, value in got["medians"].items():
                medians.setdefault(side, {}).setdefault(stage, []).append(value)
            if "hashes" in got:
                hashes[side] = got["hashes"]
    before, after = medians[args.against], medians["now"]
    print(f"{args.photos} portraits x {args.repeats} repeats, happy @ 0.8, faces {args.faces}; {args.against} and "
          f"this code in turn, {args.rounds} rounds; load {min(loads):.2f}-{max(loads):.2f} "
          f"on {len(os.sched_getaffinity(0))} cores")
    print(f"{'stage':<10}{args.against:>12}{'now':>12}{'now/before':>12}   median of the rounds' medians, seconds")
    for stage in GEOMETRY_STAGES + ("total",):
        b, a = statistics.median(before[stage]), statistics.median(after[stage])
        print(f"{stage:<10}{b:>12.4f}{a:>12.4f}{(a / b if b else float('nan')):>12.2f}")
    same = hashes[args.against] == hashes["now"]
    differ = [k for k in hashes["now"] if hashes["now"][k] != hashes[args.against].get(k)]
    print(f"{len(hashes['now'])} edits ({args.identity_photos} portraits x {len(IDENTITY_EMOTIONS)} emotions x "
          f"{len(IDENTITY_INTENSITIES)} intensities) byte-identical to {args.against}'s: "
          + ("yes" if same else f"NO ({len(differ)} differ, e.g. {differ[:3]})"))
    return 0 if same else 1


def against_batch(args: argparse.Namespace, count: int) -> int:
    """``--batch N --against REV``: REV's code and this code in turn, in fresh processes, each a
    serial batch and a pool of ``--workers`` threads; photos/s side by side, and whether both
    wrote the same bytes. 1 when they did not."""
    results, loads = in_turn(args.against, args.rounds, lambda r: [
        "--model", args.model, "--batch", str(count), "--workers", str(args.workers)])
    rates: dict[str, dict[str, list[float]]] = {}
    hashes: dict[str, dict[str, str]] = {}
    for side, runs in results.items():
        for got in runs:
            for name, values in got["rates"].items():
                rates.setdefault(side, {}).setdefault(name, []).extend(values)
        hashes[side] = runs[0]["hashes"]
    print(f"batches of {count} portraits, happy @ 0.8, model {args.model}; {args.against} and this code in turn, "
          f"{args.rounds} rounds; load {min(loads):.2f}-{max(loads):.2f} on {len(os.sched_getaffinity(0))} cores")
    print(f"{'photos/s':<14}{args.against:>20}{'now':>20}{'now/before':>12}   median (min-max) of the rounds")
    for name in rates["now"]:
        b, a = rates[args.against][name], rates["now"][name]
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"{name:<14}{f'{mb:.2f} ({min(b):.2f}-{max(b):.2f})':>20}{f'{ma:.2f} ({min(a):.2f}-{max(a):.2f})':>20}"
              f"{ma / mb:>12.2f}")
    differ = [k for k in hashes["now"] if hashes["now"][k] != hashes[args.against].get(k)]
    same = not differ and len(hashes["now"]) == len(hashes[args.against])
    print(f"{len(hashes['now'])} written photos byte-identical to {args.against}'s: "
          + ("yes" if same else f"NO ({len(differ)} differ)"))
    return 0 if same else 1


def bench_batch(model: str, files: list[Path], workers: int, rounds: int, worker_json: str | None = None) -> int:
    """Photos/s of serial and pooled batches, run in turn; 1 when a pool wrote other bytes.

    ``worker_json`` (one side of ``--batch N --against REV``): serial and threads only, the rates
    and the SHA-256 of every file the serial run wrote, to that file."""
    from facexpr.pipeline.batch import EditorSpec, plan_jobs, run_batch

    target = EmotionTarget("happy", 0.8)
    configs = [("serial", 1, "thread"), (f"{workers} threads", workers, "thread"),
               (f"{workers} processes", workers, "process")]
    if worker_json:
        configs = configs[:2]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    reference: dict[str, bytes] | None = None
    same = True
    load = os.getloadavg()[0]
    print(f"{len(files)} portraits per batch, model {model}, {rounds} rounds of serial / threads / processes "
          f"in turn; {len(os.sched_getaffinity(0))} cores, load {load:.2f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, n, kind in configs:
                jobs = plan_jobs(files, Path(tmp) / f"{r}-{n}-{kind}")
                with Editor.from_pretrained(model) as editor:  # loaded before the clock, as in `facexpr edit`
                    report = run_batch(editor, jobs, target, workers=n, spec=EditorSpec(model), kind=kind)
                rates[name].append(report.photos_per_second)
                written = {j.output.name: j.output.read_bytes() for j in jobs if j.output.exists()}
                if reference is None:
                    reference = written
                    digests = {k: hashlib.sha256(v).hexdigest() for k, v in written.items()}
                elif written != reference:
                    same = False
                    print(f"round {r}, {name}: the outputs differ from the serial run's")
                for j in jobs:
                    j.output.unlink(missing_ok=True)
                print(f"round {r} {name:<14} {report.photos_per_second:6.2f} photos/s "
                      f"({len(report.edited)} edited, {report.seconds:.2f} s)", flush=True)
    if worker_json:
        Path(worker_json).write_text(json.dumps({"rates": rates, "hashes": digests}))
        return 0 if same else 1
    base = statistics.median(rates["serial"])
    print(f"load {os.getloadavg()[0]:.2f} at the end; photos/s, median (min-max) of {rounds}:")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:<14} {med:6.2f} ({min(values):.2f}-{max(values):.2f})   x{med / base:.2f}")
    print("every pooled output byte-identical to the serial run's: " + ("yes" if same else "NO"))
    return 0 if same else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--faces", default="all", help="all (every face, small ones too) or largest")
    ap.add_argument("--batch", type=int, default=0, help="photos per batch: measure batches (photos/s) instead")
    ap.add_argument("--workers", type=int, default=2, help="pool size for --batch")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of serial / threads / processes for --batch, of REV / this code for --against")
    ap.add_argument("--against", metavar="REV",
                    help="also measure git revision REV, in turn, and compare the edits' bytes")
    ap.add_argument("--identity-photos", type=int, default=12, help="portraits edited for --against's byte comparison")
    ap.add_argument("--worker-json", help=argparse.SUPPRESS)  # one side of --against: results to this file
    args = ap.parse_args()
    folder = SHARED / "inputs" / "portraits_1024"
    if not folder.is_dir():
        print(f"shared portraits not found at {folder}; nothing to measure", file=sys.stderr)
        return 1
    if args.batch and args.against:
        return against_batch(args, args.batch)
    if args.batch:
        return bench_batch(args.model, sorted(folder.glob("*"))[: args.batch], args.workers,
                           1 if args.worker_json else args.rounds, args.worker_json)
    if args.against:
        return against(args)
    import torch  # not at the top: a spawned batch worker imports this module again, and needs no torch

    if args.threads:
        torch.set_num_threads(args.threads)
    photos = [load_image(p).rgb for p in sorted(folder.glob("*"))[: args.photos]]
    print(f"{len(photos)} portraits of {photos[0].shape[1]}x{photos[0].shape[0]} px, model {args.model}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats; median seconds per photo")
    if resolve_model(args.model).family == "geometry":  # numpy/OpenCV: no backend to choose
        with Editor.from_pretrained(args.model) as editor:
            med = bench(editor, photos, args.repeats, GEOMETRY_STAGES, args.faces)
            if args.worker_json:
                record: dict[str, object] = {"medians": med}
                if args.identity_photos:
                    files = sorted(folder.glob("*"))
                    step = max(len(files) // args.identity_photos, 1)  # spread over the set
                    chosen = files[::step][: args.identity_photos]
                    record["hashes"] = identity_hashes(editor, [load_image(p).rgb for p in chosen],
                                                       [p.name for p in chosen], args.faces)
                Path(args.worker_json).write_text(json.dumps(record))
        print(f"{'geometry':<12}" + "".join(f"{s:>9}" for s in GEOMETRY_STAGES + ("total",)))
        print(f"{'':<12}" + "".join(f"{med[s]:>9.4f}" for s in GEOMETRY_STAGES + ("total",)))
        return 0
    print(f"{'backend':<12}" + "".join(f"{s:>11}" for s in STAGES + ("total",)))
    for backend in ("torch", "onnxruntime"):
        try:
            editor = Editor.from_pretrained(args.model, backend=backend)
        except Exception as exc:  # report and go on with the other backend
            print(f"{backend:<12} unavailable: {exc}")
            continue
        with editor:
            med = bench(editor, photos, args.repeats, faces=args.faces)
        print(f"{backend:<12}" + "".join(f"{med[s]:>11.3f}" for s in STAGES + ("total",)))
    if torch.cuda.is_available():
        from facexpr.models import from_pretrained

        info = resolve_model(args.model)
        g = from_pretrained(info.path, device="cuda")
        s = info.image_size
        for batch in (1, 64, 256):
            x = torch.zeros(batch, 3, s, s, device="cuda")
            c = torch.zeros(batch, 17, device="cuda")
            with torch.inference_mode():
                for _ in range(3):
                    g(x, c)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(10):
                    g(x, c)
                torch.cuda.synchronize()
            print(f"cuda generator batch {batch}: {10 * batch / (time.perf_counter() - t0):.0f} faces/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
