"""Shared fixtures: the real face data lives beside the repository in ../shared/data.

Tests that need it skip with a clear reason when it is absent (as on a user's machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACEXPR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="module")
def torch_threads(request: pytest.FixtureRequest):
    """A test module that sets ``TORCH_THREADS = n`` runs with that many torch threads. Small
    convolutions are as fast on one thread, and far faster when the cores are shared (no OpenMP
    spinning). Autouse at module scope, so it is in force before the module's own fixtures
    (trainings) run."""
    wanted = getattr(request.module, "TORCH_THREADS", None)
    if wanted is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(wanted))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real face data not found at {SHARED_DATA} (set FACEXPR_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def portraits(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "inputs" / "portraits_1024").glob("*"))


@pytest.fixture(scope="session")
def misc(shared_data: Path) -> Path:
    return shared_data / "inputs" / "misc"


@pytest.fixture(scope="session")
def taiwanese_6x7(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """42 real studio faces (one photo per expression of the first 6 Taiwanese performers with all
    7) prepared at 64 px, once per session; skips without the shared data or MediaPipe."""
    import csv

    pytest.importorskip("mediapipe")
    from facexpr.data.prepare import prepare

    src = shared_data / "taiwanese"
    out = tmp_path_factory.mktemp("tw6x7")
    with open(src / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by: dict[str, dict[str, dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["identity"], {}).setdefault(r["expression"], r)
    chosen = [by[i][e] for i in sorted(by) if len(by[i]) == 7 for e in sorted(by[i])][: 7 * 6]
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(chosen)
    prepare(src, out / "taiwanese", sizes=(64,), manifest=manifest, workers=1, progress=False)
    return out / "taiwanese"

