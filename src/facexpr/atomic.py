"""Atomic file writes: a temporary file (or folder) beside the target, then ``os.replace``.

Readers (and resumed runs) see either the old complete file or the new complete one, never a
half-written file. Not ``tempfile.mkstemp``: its private 0600 mode would survive the rename;
``os.open(..., 0o666)`` lets the user's umask decide, as for any normally created file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from facexpr.errors import OutputError


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


def publish_exclusive(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Move the finished file ``tmp`` to ``path`` only if ``path`` does not exist yet.

    A hard link fails with :class:`FileExistsError` when ``path`` exists, so of two writers
    racing for one name exactly one wins and the other learns it (``os.replace`` would silently
    replace the first one's file). Where hard links are not supported, falls back to an
    existence check + rename.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", replace: bool = True,
                **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on a clean exit fsync it and rename it
    over ``path``. On any exception the temporary file is removed and the exception propagates,
    so ``path`` holds either its previous content or the complete new one.

    ``replace=False``: never replace an existing ``path``; if one exists when the file is
    complete (another process wrote it meanwhile), :class:`FileExistsError` is raised and the
    existing file is left as it is."""
    fd, tmp = open_temp_beside(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            publish_exclusive(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_shareable(folder: Path) -> None:
    """Give a folder written via mkdtemp (0700) and its files the usual permissions (respecting
    the umask), so a model folder can be shipped or shared like any other files."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike[str], what: str = "folder") -> Iterator[Path]:
    """Yield a new empty folder beside ``folder`` to write into; on a clean exit fsync its files,
    give it the usual permissions and rename it to ``folder``, replacing an existing one (the
    caller has checked that it may).

    An existing ``folder`` is renamed aside first and removed only once the new one is in place;
    if the swap fails it is renamed back. So on any exception ``folder`` keeps its old content
    and the temporary folder is removed; an :class:`OSError` becomes :class:`OutputError` naming
    ``what``.
    """
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write the {what} ({exc})") from exc
    aside: Path | None = None
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        make_shareable(tmp)
        fsync_path(tmp)
        if folder.exists():
            aside = tmp.with_name(tmp.name + ".old")
            os.replace(folder, aside)
        os.replace(tmp, folder)
    except BaseException as exc:
        if aside is not None and aside.exists() and not folder.exists():
            os.replace(aside, folder)  # the swap failed half-way: the old folder goes back
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{folder}: cannot write the {what} ({exc})") from exc
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    fsync_path(folder.parent)
