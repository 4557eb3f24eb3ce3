"""Start-up: wall and CPU seconds of whole ``facexpr`` processes, and which heavy modules they import.

    python benchmarks/bench_startup.py [--runs 5] [--photo PATH] [--against REV] [--no-bytecode]

Times, as separate processes started one after the other, ``facexpr --help``, ``python -c
"import facexpr.pipeline"`` and ``facexpr edit PHOTO -o NEW_FOLDER --emotion happy`` with the
default model (a 1024 px shared portrait unless ``--photo``), and prints the median wall and CPU
seconds of ``--runs`` processes each. One more, untimed, run of each under ``python -X
importtime`` says whether it imported torch, gradio, dlib, matplotlib or SciPy. ``--against REV`` runs the same
commands with the code of git revision REV too (its ``src`` exported to a temporary folder and put
first on ``PYTHONPATH``), the two alternating run by run, and prints them side by side with the
ratio now/REV of the median wall times: ``python benchmarks/bench_startup.py --against HEAD~1``.
The first run of each command is a warm-up (the disk cache, and the bytecode of facexpr's own
modules, which Python writes beside them as an installed package has it), not counted;
``--no-bytecode`` keeps ``PYTHONDONTWRITEBYTECODE`` from the environment instead, so every run
compiles facexpr's modules again (~0.2 s on 2 cores; how the figures before this option were taken).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from revisions import export_src

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "data" / "inputs" / "portraits_1024" / "src_female_039913.jpg"
HEAVY = ("torch", "gradio", "dlib", "matplotlib", "scipy")


def commands(photo: Path, out: Path) -> dict[str, list[str]]:
    """Name -> argument list after ``python``; ``out`` is a folder that does not exist yet."""
    return {
        "facexpr --help": ["-m", "facexpr.cli", "--help"],
        "import facexpr.pipeline": ["-c", "import facexpr.pipeline"],
        "facexpr edit (default model)": ["-m", "facexpr.cli", "edit", str(photo), "-o", str(out), "--emotion", "happy"],
    }


#: Whether the timed processes may write and reuse bytecode (main() sets it from --no-bytecode).
BYTECODE = True


def run(args: list[str], src: Path, importtime: bool = False) -> tuple[float, float, str]:
    """One process: (wall s, CPU s of the child, its stderr); fails loudly when it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if BYTECODE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []), *args],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stderr


def heavy_imports(importtime_log: str) -> list[str]:
    """The top-level packages of ``HEAVY`` that ``python -X importtime`` says were imported."""
    found = {line.rsplit("|", 1)[1].strip() for line in importtime_log.splitlines() if line.startswith("import time:")}
    return [name for name in HEAVY if name in found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed processes per command and side")
    ap.add_argument("--photo", type=Path, default=PHOTO, help="the photo `facexpr edit` edits")
    ap.add_argument("--against", metavar="REV", help="also time git revision REV, side by side")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE from the environment (compile facexpr on every run)")
    args = ap.parse_args()
    global BYTECODE
    BYTECODE = not args.no_bytecode
    if not args.photo.is_file():
        raise SystemExit(f"{args.photo}: not found; pass --photo PATH to a photo with a face")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sides = {"now": REPO / "src"}
        if args.against:
            sides = {args.against: export_src(args.against, root / "against"), **sides}
        names = list(commands(args.photo, root))
        times = {side: {name: ([], []) for name in names} for side in sides}
        imports: dict[str, dict[str, list[str]]] = {side: {} for side in sides}
        count = 0
        for name in names:
            for i in range(args.runs + 1):  # run 0: warm-up
                for side, src in sides.items():  # alternate, so the machine's load hits both sides
                    count += 1
                    wall, cpu, _ = run(commands(args.photo, root / f"out{count}")[name], src)
                    if i:
                        times[side][name][0].append(wall)
                        times[side][name][1].append(cpu)
            for side, src in sides.items():
                count += 1
                log = run(commands(args.photo, root / f"out{count}")[name], src, importtime=True)[2]
                imports[side][name] = heavy_imports(log)

    bytecode = "reused" if BYTECODE or not os.environ.get("PYTHONDONTWRITEBYTECODE") else "compiled every run"
    print(f"median of {args.runs} processes each, seconds (wall / CPU); heavy modules imported; bytecode "
          f"{bytecode}; load {os.getloadavg()[0]:.2f} at the end")
    head = "".join(f"{side:>34}" for side in sides)
    print(f"{'command':<30}{head}" + (f"   now/{args.against} (wall)" if args.against else ""))
    for name in names:
        cells = []
        for side in sides:
            wall, cpu = (statistics.median(v) for v in times[side][name])
            cells.append(f"{wall:6.2f} / {cpu:5.2f} {','.join(imports[side][name]) or '-':>17}")
        ratio = ""
        if args.against:
            walls = {side: statistics.median(times[side][name][0]) for side in sides}
            ratio = f"   {walls['now'] / walls[args.against]:.2f}"
        print(f"{name:<30}" + "".join(f"{c:>34}" for c in cells) + ratio)


if __name__ == "__main__":
    main()
