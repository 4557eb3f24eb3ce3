"""Another git revision's code for side-by-side benchmarks (``--against REV``)."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export_src(rev: str, into: Path) -> Path:
    """``src`` of git revision ``rev`` of this repository, written under ``into``; put it first
    on ``PYTHONPATH`` to run that revision."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "src.tar"
    with open(archive, "wb") as fh:
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "src"], stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"
