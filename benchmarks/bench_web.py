"""Load test of ``facexpr serve``: simulated visitors uploading and editing at the same time.

    python benchmarks/bench_web.py [--users 8] [--rounds 5] [--url http://127.0.0.1:PORT/]

Without ``--url`` it starts ``facexpr serve`` itself on a free port of 127.0.0.1 and stops it at
the end. Each user is one page session (Gradio's Python client, through the same HTTP API the
page uses) and does ``--rounds`` times: upload a 1024 px portrait (analysis), press "happy"
(edit from the cached analysis), fetch the full-resolution downloads (PNG + JPEG written by the
server) and download the PNG. All users start together. Prints how many rounds succeeded and the
latency percentiles of each step and of a whole round. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STEPS = ("upload", "edit", "downloads", "fetch", "round")


def start_server(upload_mb: float) -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "facexpr.cli", "serve", "--port", str(port),
                             "--max-upload-mb", str(upload_mb)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:  # type: ignore[union-attr]
        found = re.search(r"open (http://127\.0\.0\.1:\d+/?) in a browser", line)
        if found:
            return proc, found.group(1)
    raise SystemExit("facexpr serve did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def text(output: object) -> str:
    """The status line of a response (the page's last output; an update dict or a string)."""
    last = output[-1] if isinstance(output, (list, tuple)) else output
    return str(last.get("value", "")) if isinstance(last, dict) else str(last)


def user(url: str, photos: list[Path], rounds: int, index: int, times: dict[str, list[float]],
         failures: list[str], lock: threading.Lock, start: threading.Barrier) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    start.wait()
    for r in range(rounds):
        photo = photos[(index * rounds + r) % len(photos)]
        got: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            out = client.predict(handle_file(str(photo)), "geometry-v2", api_name="/upload")
            got["upload"] = time.perf_counter() - t0
            if not text(out).startswith("Found 1 face"):
                raise RuntimeError(f"upload: {text(out)}")
            t1 = time.perf_counter()
            out = client.predict(0.8, "0", "geometry-v2", api_name="/emotion_happy")
            got["edit"] = time.perf_counter() - t1
            if not text(out).startswith("Happy"):
                raise RuntimeError(f"edit: {text(out)}")
            t2 = time.perf_counter()
            files = client.predict(api_name="/downloads")[0]
            got["downloads"] = time.perf_counter() - t2
            png = next(f for f in files if str(f.get("path", f) if isinstance(f, dict) else f).endswith(".png"))
            t3 = time.perf_counter()
            with urllib.request.urlopen(png["url"], timeout=120) as resp:
                size = len(resp.read())
            got["fetch"] = time.perf_counter() - t3
            if size < 10_000:
                raise RuntimeError(f"the PNG download has {size} bytes")
            got["round"] = time.perf_counter() - t0
            with lock:
                for k, v in got.items():
                    times[k].append(v)
        except Exception as exc:  # noqa: BLE001 - a failed round is counted and reported
            with lock:
                failures.append(f"user {index} round {r}: {type(exc).__name__}: {exc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--url", help="an already running facexpr serve on this machine")
    args = ap.parse_args()
    folder = SHARED / "inputs" / "portraits_1024"
    photos = sorted(folder.glob("*.jpg"))
    if not photos:
        print(f"shared portraits not found at {folder}; nothing to measure", file=sys.stderr)
        return 1
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(25)
    if not re.match(r"http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])[:/]", url):
        raise SystemExit("this load test only targets this machine (127.0.0.1)")
    times: dict[str, list[float]] = {k: [] for k in STEPS}
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(args.users)
    with tempfile.TemporaryDirectory():
        threads = [threading.Thread(target=user, args=(url, photos, args.rounds, i, times, failures, lock, start))
                   for i in range(args.users)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=1800)
        wall = time.perf_counter() - t0
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=60)
    total = args.users * args.rounds
    ok = len(times["round"])
    print(f"{args.users} users x {args.rounds} rounds against {url}: {ok}/{total} rounds succeeded "
          f"in {wall:.1f} s ({ok / wall:.2f} rounds/s), {os.cpu_count()} CPUs")
    print(f"{'step':<10}{'n':>5}{'p50 s':>9}{'p90 s':>9}{'max s':>9}{'mean s':>9}")
    for k in STEPS:
        v = times[k]
        if v:
            print(f"{k:<10}{len(v):>5}{percentile(v, 50):>9.2f}{percentile(v, 90):>9.2f}{max(v):>9.2f}"
                  f"{statistics.fmean(v):>9.2f}")
    for f in failures[:10]:
        print("failed:", f)
    return 0 if ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
