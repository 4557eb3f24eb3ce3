"""numpy's BLAS on one thread while a photo is edited (:func:`one_blas_thread`).

Why: numpy's OpenBLAS splits a matrix-vector product over every core once it is large enough
(the rig's 17 x 1434 motion, the shading's 17 x 65536 ratio images), and its worker threads then
busy-wait for more work (~0.1 s by default) before they sleep. During a geometry edit that
spinning thread holds the second of two cores while OpenCV's remap and numpy need it for the rest
of the edit: a 1024 px edit took about twice as long. The products themselves take well under a
millisecond on one thread. The bytes do not change: each output element is summed by one thread
in the same order either way (checked on the shared portraits, every emotion).

The library is found among the process's loaded libraries (Linux: ``/proc/self/maps``) by the
names OpenBLAS builds export (numpy >= 2 wheels prefix them with ``scipy_``); where none is found
(another BLAS, another platform) this does nothing.
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

__all__ = ["one_blas_thread", "blas_threads"]

#: (set, get) symbol pairs of the OpenBLAS builds numpy ships or links.
_SYMBOLS: tuple[tuple[str, str], ...] = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


@lru_cache(maxsize=1)
def _openblas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """OpenBLAS's thread-count setter and getter as loaded by numpy, or None."""
    importlib.import_module("numpy")  # loads its BLAS, which is looked up next

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines()
                    if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


def blas_threads() -> int | None:
    """The number of threads numpy's OpenBLAS uses now (None: no OpenBLAS found)."""
    found = _openblas()
    return None if found is None else int(found[1]())


_lock = threading.Lock()
_depth = 0
_before = 0


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with numpy's OpenBLAS on one thread; the count it had is restored when the
    last of several overlapping blocks (threads of a batch) ends."""
    global _depth, _before
    found = _openblas()
    if found is None:
        yield
        return
    setter, getter = found
    with _lock:
        if _depth == 0:
            _before = int(getter())
            setter(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                setter(_before)
