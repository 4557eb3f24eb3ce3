"""End-to-end edit time per 1024 px portrait, split by stage, for torch and onnxruntime.

    python benchmarks/bench_edit.py [--model default] [--photos 8] [--repeats 3] [--threads N]

Prints, per backend, the median seconds of analysis (MediaPipe + fallback detectors), alignment
(AU estimation, target, crop), generator, paste-back (full-resolution composition + blend) and
the end-to-end total, over the shared 1024 px portraits. A CUDA device adds batched generator
throughput. Reads ../shared/data in place.
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
from facexpr.pipeline.targets import EmotionTarget

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STAGES = ("analysis", "alignment", "generator", "paste")


def bench(editor: Editor, photos: list[np.ndarray], repeats: int) -> dict[str, float]:
    target = EmotionTarget("happy", 0.8)
    editor.edit_array(photos[0], target)  # warm-up: graph init, first allocations
    rows: dict[str, list[float]] = {s: [] for s in STAGES + ("total",)}
    for _ in range(repeats):
        for img in photos:
            t0 = time.perf_counter()
            res = editor.edit_array(img, target)
            rows["total"].append(time.perf_counter() - t0)
            for s in STAGES:
                rows[s].append(res.timings.get(s, 0.0))
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
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
    print(f"{'backend':<12}" + "".join(f"{s:>11}" for s in STAGES + ("total",)))
    for backend in ("torch", "onnxruntime"):
        try:
            editor = Editor.from_pretrained(args.model, backend=backend)
        except Exception as exc:  # report and go on with the other backend
            print(f"{backend:<12} unavailable: {exc}")
            continue
        with editor:
            med = bench(editor, photos, args.repeats)
        print(f"{backend:<12}" + "".join(f"{med[s]:>11.3f}" for s in STAGES + ("total",)))
    if torch.cuda.is_available():
        from facexpr.models import from_pretrained
        from facexpr.pipeline.registry import resolve_model

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
