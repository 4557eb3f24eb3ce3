"""Throughput of ``facexpr prepare`` on UTKFace crops (200 px), with 1 and 2 worker processes.

    python benchmarks/bench_prepare.py [--n 200] [--workers 1 2] [--size 128]

Prints, per worker count: end-to-end images/s (including worker start-up), steady images/s
(from the first finished photo to the last) and the time per photo of each stage (read, detect,
aus, align, encode, write; summed over the workers, so with 2 workers the stages add up to about
twice the wall time). Needs the shared face data (``../shared/data`` or FACEXPR_SHARED_DATA);
writes only to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

from facexpr.data.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FACEXPR_SHARED_DATA", REPO.parent / "shared" / "data"))


def run(n: int, workers: int, size: int) -> dict[str, float]:
    utk = DATA / "utkface"
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        manifest = Path(tmp) / "subset.csv"
        with open(utk / "manifest.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        with open(manifest, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows[: n + 1])
        stamps: list[float] = []
        t0 = time.perf_counter()
        summary = prepare(
            utk, Path(tmp) / "out", sizes=(size,), manifest=manifest, workers=workers, progress=False,
            on_result=lambda _: stamps.append(time.perf_counter()),
        )[size]
        total = time.perf_counter() - t0
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    out = {"end_to_end": n / total, "steady": steady, "kept": summary.kept, "seconds": total}
    out.update({f"ms_{k}": 1000 * v / max(n, 1) for k, v in summary.stage_seconds.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="UTKFace photos (default 200)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    if not (DATA / "utkface" / "manifest.csv").exists():
        sys.exit(f"shared face data not found at {DATA} (set FACEXPR_SHARED_DATA)")
    print(f"prepare {args.n} UTKFace photos (200 px) at {args.size} px; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    stages = ["read", "detect", "aus", "align", "encode", "write"]
    print(f"{'workers':>7} {'img/s e2e':>9} {'img/s steady':>12} {'kept':>5}  " + " ".join(f"{s:>7}" for s in stages)
          + "   (ms per photo)")
    for w in args.workers:
        r = run(args.n, w, args.size)
        print(f"{w:>7} {r['end_to_end']:>9.1f} {r['steady']:>12.1f} {int(r['kept']):>5}  "
              + " ".join(f"{r.get('ms_' + s, 0.0):>7.1f}" for s in stages))


if __name__ == "__main__":
    main()
