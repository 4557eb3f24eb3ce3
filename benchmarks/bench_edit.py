"""End-to-end edit time per 1024 px portrait, split by stage, for torch and onnxruntime.

    python benchmarks/bench_edit.py [--model default] [--photos 8] [--repeats 3] [--threads N] [--faces all]

Prints, per backend, the median seconds of analysis (MediaPipe + fallback detectors), alignment
(AU estimation, target, crop), generator, paste-back (full-resolution composition + blend) and
the end-to-end total, over the shared 1024 px portraits. The geometry family (the default) runs
one way only and prints its own stages instead: analysis, targets, rig, warp, shading, eyes,
mouth, paste, the edit without the analysis ("edit"), the CPU seconds of the whole edit on all
threads ("cpu": what a busy machine cannot hide) and the total. ``--faces largest`` skips
the small-face detectors. A CUDA device adds batched generator throughput. Reads ../shared/data
in place.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--faces", default="all", help="all (every face, small ones too) or largest")
    args = ap.parse_args()
    folder = SHARED / "inputs" / "portraits_1024"
    if not folder.is_dir():
        print(f"shared portraits not found at {folder}; nothing to measure", file=sys.stderr)
        return 1
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
