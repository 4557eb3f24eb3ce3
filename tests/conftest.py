"""Shared fixtures: the real face data lives beside the repository in ../shared/data.

Tests that need it skip with a clear reason when it is absent (as on a user's machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACEXPR_SHARED_DATA", REPO.parent / "shared" / "data"))


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
