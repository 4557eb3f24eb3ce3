"""Atomic file writes: a temporary file beside the target, then ``os.replace``.

Readers (and resumed runs) see either the old complete file or the new complete one, never a
half-written file. Not ``tempfile.mkstemp``: its private 0600 mode would survive the rename;
``os.open(..., 0o666)`` lets the user's umask decide, as for any normally created file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def open_temp_beside(path: str | os.PathLike[str], suffix: str = ".tmp") -> tuple[int, str]:
    """A new, exclusively created temporary file in ``path``'s folder: ``(fd, name)``."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    for _ in range(100):
        tmp = str(folder / f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {p}")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder (a folder: so a rename inside it is durable); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
