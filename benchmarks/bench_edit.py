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

``--batch N`` measures batches instead: ``pipeline.batch.run_batch`` (what ``facexpr edit``
runs) on the first N portraits, files in and files out, serially, with a pool of ``--workers``
threads and with a pool of ``--workers`` processes (the caller plus spawned workers, their start
included), the three run in turn ``--rounds`` times; it prints photos/s (median, min-max) side by
side with the ratio to the serial run, and checks that every pool wrote the serial run's bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
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


def bench_batch(model: str, files: list[Path], workers: int, rounds: int) -> int:
    """Photos/s of serial and pooled batches, run in turn; 1 when a pool wrote other bytes."""
    from facexpr.pipeline.batch import EditorSpec, plan_jobs, run_batch

    target = EmotionTarget("happy", 0.8)
    configs = [("serial", 1, "thread"), (f"{workers} threads", workers, "thread"),
               (f"{workers} processes", workers, "process")]
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
                elif written != reference:
                    same = False
                    print(f"round {r}, {name}: the outputs differ from the serial run's")
                for j in jobs:
                    j.output.unlink(missing_ok=True)
                print(f"round {r} {name:<14} {report.photos_per_second:6.2f} photos/s "
                      f"({len(report.edited)} edited, {report.seconds:.2f} s)", flush=True)
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
    ap.add_argument("--rounds", type=int, default=3, help="rounds of serial / threads / processes for --batch")
    args = ap.parse_args()
    folder = SHARED / "inputs" / "portraits_1024"
    if not folder.is_dir():
        print(f"shared portraits not found at {folder}; nothing to measure", file=sys.stderr)
        return 1
    if args.batch:
        return bench_batch(args.model, sorted(folder.glob("*"))[: args.batch], args.workers, args.rounds)
    import torch  # not at the top: a spawned batch worker imports this module again, and needs no torch

    if args.threads:
        torch.set_num_threads(args.threads)
    photos = [load_image(p).rgb for p in sorted(folder.glob("*"))[: args.photos]]
    print(f"{len(photos)} portraits of {photos[0].shape[1]}x{photos[0].shape[0]} px, model {args.model}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats; median seconds per photo")
    if resolve_model(args.model).family == "geometry":  # numpy/OpenCV: no backend to choose
        with Editor.from_pretrained(args.model) as editor:
            med = bench(editor, photos, args.repeats, GEOMETRY_STAGES, args.faces)
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
