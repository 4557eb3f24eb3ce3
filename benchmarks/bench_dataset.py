"""CPU seconds to open a prepared dataset of 15 000 label rows (prints its figures).

    python benchmarks/bench_dataset.py [--rows 15000] [--repeats 5]

Writes a synthetic prepared dataset (labels only, 52 blendshapes, 17 AUs) to a temporary folder,
then opens it with ``PreparedDataset`` ``--repeats`` times and prints the CPU time of each
opening (process time, so other jobs on the machine count less) and their median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from facexpr.data.dataset import PreparedDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_dataset import write_big_dataset  # noqa: E402  (the tests' own dataset writer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=15000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_dataset_") as tmp:
        write_big_dataset(Path(tmp) / "big", args.rows)
        times = []
        for _ in range(args.repeats):
            t = time.process_time()
            PreparedDataset(Path(tmp) / "big")
            times.append(time.process_time() - t)
    print(f"opening {args.rows} label rows: " + ", ".join(f"{t:.3f}" for t in times)
          + f" s of CPU; median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
