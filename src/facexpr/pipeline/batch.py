"""Files and folders in, files out: the batch logic behind ``facexpr edit``.

Kept out of the CLI so it can be tested and reused (the web page edits one upload at a time with
the Editor directly). Outputs mirror the input tree, are written atomically, and an existing
output is never overwritten unless asked. A JPEG output is written like its source (same tables
and subsampling, ICC and EXIF kept; see ``imageio.save_image(like=)``), so the photo outside the
edited faces decodes as it did.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # Windows: outputs are still published exclusively, without the folder lock
    fcntl = None  # type: ignore[assignment]

import numpy as np

from facexpr.errors import ConfigError, FacexprError, OutputError, OutputExistsError
from facexpr.imageio import load_image, save_image
from facexpr.pipeline.editor import Editor, FaceSelection
from facexpr.pipeline.targets import Target

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: Formats we write; others (bmp, tif) are written as PNG.
WRITABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
#: Suffixes that make ``-o`` a file name rather than a folder name (an unsupported one is refused
#: instead of silently becoming a folder called ``out.gif``).
NAMED_FILE_SUFFIXES = IMAGE_SUFFIXES + (".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".svg",
                                        ".pdf", ".mp4", ".mov", ".avi", ".mkv", ".webm")


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path


@dataclass
class BatchReport:
    edited: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (source, reason)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (source, message)
    notes: list[tuple[Path, str]] = field(default_factory=list)  # (source, what the user should know)

    @property
    def ok(self) -> bool:
        return not self.failed


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def plan_jobs(inputs: Iterable[str | Path], out: str | Path, fmt: str | None = None) -> list[Job]:
    """Map inputs (files or folders, folders recursively) to output paths under ``out``.

    A single input file with ``out`` ending in an image suffix writes exactly that file. Files of
    a folder keep their path relative to that folder. ``fmt`` ('png', 'jpg', ...) forces the
    output format; by default each file keeps its own (bmp/tiff become png).

    Raises:
        ConfigError: a missing input, no image found, output folder equal to or inside an input
            folder (a rerun would edit its own outputs), or two inputs mapping to one output.
    """
    out = Path(out)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ConfigError("no input given; pass photos or folders")
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{p}: no such file or folder")
        if p.is_dir() and (out.resolve() == p.resolve() or _is_inside(out, p)):
            raise ConfigError(f"output folder {out} is the input folder {p} or inside it; choose "
                              f"another -o so the originals are never touched")
    suffix = out.suffix.lower()
    if suffix in NAMED_FILE_SUFFIXES and not out.is_dir():
        if suffix not in WRITABLE_SUFFIXES:
            raise ConfigError(f"-o {out}: cannot write a photo as {suffix}; name the output .jpg, .png or "
                              f".webp, or give a folder (without a file suffix) for several outputs")
        if not (len(paths) == 1 and paths[0].is_file()):
            raise ConfigError(f"-o {out} names one file but the input is several photos or a folder; "
                              "give an output folder (without a file suffix)")
    single_file = len(paths) == 1 and paths[0].is_file() and suffix in WRITABLE_SUFFIXES and not out.is_dir()
    if single_file:
        if out.resolve() == paths[0].resolve():
            raise ConfigError(f"output {out} is the input file; choose another -o")
        return [Job(paths[0], out)]

    def target(rel: Path) -> Path:
        suffix = f".{fmt.lstrip('.')}" if fmt else rel.suffix.lower()
        if suffix not in WRITABLE_SUFFIXES:
            suffix = ".png"
        return out / rel.with_suffix(suffix)

    jobs: list[Job] = []
    for p in paths:
        if p.is_dir():
            # a broken symlink is kept: it is reported as missing rather than silently left out
            files = sorted(f for f in p.rglob("*") if (f.is_file() or (f.is_symlink() and not f.exists()))
                           and f.suffix.lower() in IMAGE_SUFFIXES)
            jobs += [Job(f, target(f.relative_to(p))) for f in files]
        else:
            jobs.append(Job(p, target(Path(p.name))))
    if not jobs:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, paths))}")
    seen: dict[Path, Path] = {}
    for j in jobs:
        if j.output in seen:
            raise ConfigError(f"{seen[j.output]} and {j.source} would both be written to {j.output}; "
                              f"edit them in separate runs")
        if j.output.resolve() == j.source.resolve():
            raise ConfigError(f"output {j.output} is its own input; choose another -o")
        seen[j.output] = j.source
    return jobs


def side_by_side(before: np.ndarray, after: np.ndarray, gap: int = 8) -> np.ndarray:
    """Before | after on a white gap, for ``--compare``."""
    h = before.shape[0]
    spacer = np.full((h, gap, before.shape[2]), 255, np.uint8)
    return np.concatenate([before, spacer, after], axis=1)


def compare_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_compare{output.suffix}")


def run_batch(
    editor: Editor,
    jobs: list[Job],
    target: Target,
    faces: FaceSelection = "all",
    force: bool = False,
    compare: bool = False,
    progress: Callable[[Job], None] | None = None,
) -> BatchReport:
    """Edit every job; a file that fails (no face, unreadable) is reported and the rest go on.

    Without ``force`` no existing file is replaced: an output (or, with ``compare``, its
    ``NAME_compare`` file) that exists is skipped, and each file is published with an exclusive
    link, so if another run writes the same name meanwhile, its file is kept and this job is
    reported as skipped. The output folder is locked while the batch runs (see
    :func:`output_lock`): a second ``facexpr edit`` into the same folder stops with a clear error.
    """
    report = BatchReport()
    with output_lock(_lock_folder(jobs)):
        for job in jobs:
            if progress is not None:
                progress(job)
            _run_job(editor, job, target, faces, force, compare, report)
    return report


def _lock_folder(jobs: list[Job]) -> Path | None:
    if not jobs:
        return None
    parents = {j.output.parent for j in jobs}
    if len(parents) == 1:
        return next(iter(parents))
    # the deepest folder above every output (the -o folder of a mirrored tree)
    common = Path(os.path.commonpath([str(p.resolve()) for p in parents]))
    return common


def _run_job(editor: Editor, job: Job, target: Target, faces: FaceSelection, force: bool,
             compare: bool, report: BatchReport) -> None:
    if not force:
        existing = [p for p in ([job.output] + ([compare_path(job.output)] if compare else [])) if p.exists()]
        if existing:
            report.skipped.append((job.source, f"{existing[0]} exists (use --force to overwrite)"))
            return
    try:
        loaded = load_image(job.source)
        if loaded.frames > 1:
            report.notes.append((job.source, f"has {loaded.frames} frames (animated); only the first frame "
                                             "was edited (use `facexpr edit` on a video for moving pictures)"))
        arr = loaded.rgb if loaded.alpha is None else np.dstack([loaded.rgb, loaded.alpha])
        result = editor.edit_array(arr, target, faces)
        for _, message in result.refused:
            report.notes.append((job.source, f"{message}; left as it is, the other faces were edited"))
        img = result.image
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{job.output.parent}: cannot create the output folder ({exc.strerror or exc})") from exc
        # like=loaded: a JPEG keeps its source's tables, subsampling, ICC and EXIF, and the
        # pixels the edit left alone decode as they did in the source.
        save_image(job.output, img[..., :3], alpha=img[..., 3] if img.shape[2] == 4 else None,
                   like=loaded, replace=force)
        if compare:
            try:
                save_image(compare_path(job.output), side_by_side(arr[..., :3], img[..., :3]), replace=force)
            except OutputExistsError as exc:
                report.skipped.append((job.source, str(exc)))
    except OutputExistsError as exc:
        report.skipped.append((job.source, str(exc)))
        return
    except OutputError:
        raise  # the output location is broken for every file: stop the batch
    except FacexprError as exc:
        report.failed.append((job.source, str(exc)))
        return
    report.edited.append(job.output)


LOCK_NAME = ".facexpr-edit.lock"


@contextlib.contextmanager
def output_lock(folder: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) while a batch writes into it.

    A second batch into the same folder raises :class:`OutputError` at once instead of racing
    the first one for the same file names. The lock is an ``flock`` on ``folder/LOCK_NAME``: the
    operating system releases it when the process ends, even when it is killed, so a stale lock
    never blocks a later run. The lock file is removed on a clean exit.
    """
    if folder is None or fcntl is None:
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the output folder ({exc.strerror or exc}); "
                          "choose a writable -o") from exc
    lock_path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot write into the output folder ({exc.strerror or exc}); "
                              "choose a writable -o") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(f"{folder}: another `facexpr edit` is writing into this folder right now "
                              f"(it holds {lock_path}); wait for it to finish or choose another -o") from None
        try:  # the holder before us may have removed the file after we opened it: lock the live one
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        try:
            os.unlink(lock_path)
        except OSError:
            pass
        os.close(fd)
