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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # Windows: outputs are still published exclusively, without the folder lock
    fcntl = None  # type: ignore[assignment]

import numpy as np

from facexpr.devices import usable_cores
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
    photos: int = 0  # jobs handled (edited, skipped or failed)
    seconds: float = 0.0  # wall time of the whole batch (after the editor was loaded)
    workers: int = 1  # photos edited at once

    @property
    def photos_per_second(self) -> float:
        return self.photos / self.seconds if self.seconds > 0 else 0.0

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


#: How ``run_batch`` runs its workers (see :func:`run_batch`).
POOL_KINDS = ("process", "thread")


@dataclass(frozen=True)
class EditorSpec:
    """How to build an :class:`Editor`: MediaPipe and onnxruntime objects cannot be pickled, so
    every worker of a pool builds its own editor from this."""

    model: str | None = None
    device: str = "cpu"
    backend: str = "auto"

    def build(self) -> Editor:
        return Editor.from_pretrained(self.model, device=self.device, backend=self.backend)  # type: ignore[arg-type]


def default_workers(jobs: int) -> int:
    """Workers for a batch of ``jobs`` photos: one per core this process may use, at most one per
    photo (a single photo runs in the caller, with no pool)."""
    return max(1, min(usable_cores(), jobs))


def run_batch(
    editor: Editor,
    jobs: list[Job],
    target: Target,
    faces: FaceSelection = "all",
    force: bool = False,
    compare: bool = False,
    progress: Callable[[Job], None] | None = None,
    workers: int = 1,
    spec: EditorSpec | None = None,
    kind: str = "process",
) -> BatchReport:
    """Edit every job; a file that fails (no face, unreadable) is reported and the rest go on.

    Without ``force`` no existing file is replaced: an output (or, with ``compare``, its
    ``NAME_compare`` file) that exists is skipped, and each file is published with an exclusive
    link, so if another run writes the same name meanwhile, its file is kept and this job is
    reported as skipped. The output folder is locked while the batch runs (see
    :func:`output_lock`): a second ``facexpr edit`` into the same folder stops with a clear error.

    ``workers`` > 1 edits that many photos at once: ``editor`` edits in the calling thread and
    ``workers - 1`` more editors, built from ``spec``, run either in worker processes (``kind``
    ``"process"``, spawned; each takes photos once its editor is loaded) or in threads of this
    process (``"thread"``). Each photo is edited exactly as the serial run edits it (the outputs
    are byte-identical), the lock is held by the caller for the whole batch, and the report lists
    the photos in job order whatever order they finished in. ``progress`` is called, from the
    thread that finished it, as each job finishes.
    """
    report = BatchReport()
    start = time.perf_counter()
    workers = max(1, min(int(workers), len(jobs)))
    with output_lock(_lock_folder(jobs)):
        if workers == 1:
            for job in jobs:
                _run_job(editor, job, target, faces, force, compare, report)
                if progress is not None:
                    progress(job)
        else:
            if spec is None:
                raise ValueError("a pool of workers needs the EditorSpec its workers build editors from")
            if kind not in POOL_KINDS:
                raise ValueError(f"unknown pool kind {kind!r}; use one of {POOL_KINDS}")
            parts = _Pool(editor, jobs, target, faces, force, compare, progress, workers, spec, kind).run()
            for part in parts:  # job order: the same report as the serial run
                report.edited += part.edited
                report.skipped += part.skipped
                report.failed += part.failed
                report.notes += part.notes
    report.seconds = time.perf_counter() - start
    report.photos, report.workers = len(jobs), workers
    return report


class _Pool:
    """The photos of one batch shared by ``workers`` lanes: the caller's thread with its editor,
    and ``workers - 1`` threads each driving either its own editor or one worker process. Every
    lane takes the next photo when it is free (no photo waits behind a slow one)."""

    def __init__(self, editor: Editor, jobs: list[Job], target: Target, faces: FaceSelection, force: bool,
                 compare: bool, progress: Callable[[Job], None] | None, workers: int, spec: EditorSpec,
                 kind: str) -> None:
        self.editor, self.jobs, self.target, self.faces = editor, jobs, target, faces
        self.force, self.compare, self.progress = force, compare, progress
        self.workers, self.spec, self.kind = workers, spec, kind
        self.parts: list[BatchReport | None] = [None] * len(jobs)
        self.next = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[tuple[int, BaseException]] = []

    def take(self) -> int | None:
        with self.lock:
            if self.stop.is_set() or self.next >= len(self.jobs):
                return None
            self.next += 1
            return self.next - 1

    def done(self, index: int, part: BatchReport) -> None:
        with self.lock:
            self.parts[index] = part
            if self.progress is not None:
                self.progress(self.jobs[index])

    def fail(self, index: int, exc: BaseException) -> None:
        with self.lock:
            self.errors.append((index, exc))
        self.stop.set()

    def run(self) -> list[BatchReport]:
        lanes = [threading.Thread(target=self._remote_lane, name=f"facexpr-edit-{k}", daemon=True)
                 for k in range(1, self.workers)]
        for lane in lanes:
            lane.start()
        try:
            self._lane(self.editor)
        except BaseException:  # Ctrl-C in the caller's own photo: the lanes stop after theirs
            self.stop.set()
            raise
        finally:
            for lane in lanes:
                lane.join()
        if self.errors:  # the first failing photo's error, as the serial run would raise it
            raise min(self.errors, key=lambda e: e[0])[1]
        return [p for p in self.parts if p is not None]

    def _lane(self, editor: Editor) -> None:
        while (index := self.take()) is not None:
            part = BatchReport()
            try:
                _run_job(editor, self.jobs[index], self.target, self.faces, self.force, self.compare, part)
            except Exception as exc:
                self.fail(index, exc)
                return
            self.done(index, part)

    def _remote_lane(self) -> None:
        try:
            if self.kind == "thread":
                with self.spec.build() as editor:
                    self._lane(editor)
            else:
                self._process_lane()
        except Exception as exc:  # the worker could not start: stop the batch and say why
            self.fail(len(self.jobs), exc)

    def _process_lane(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        # spawn, not fork: this process holds threads and MediaPipe's native state
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker,
                                 initargs=(self.spec, self.target, self.faces, self.force, self.compare)) as pool:
            try:
                pool.submit(_worker_ready).result()  # photos go to it only once its editor is loaded
            except BrokenProcessPool as exc:
                raise FacexprError(f"an edit worker process could not start ({exc}); rerun with --workers 1 "
                                   "to see the underlying error") from exc
            while (index := self.take()) is not None:
                try:
                    part = pool.submit(_worker_job, self.jobs[index]).result()
                except BrokenProcessPool as exc:
                    self.fail(index, FacexprError(
                        f"{self.jobs[index].source}: the worker process editing it died ({exc}); rerun with "
                        "--workers 1 to see the underlying error (finished photos are kept)"))
                    return
                except Exception as exc:
                    self.fail(index, exc)
                    return
                self.done(index, part)


# One editor per worker process, set by the pool's initializer; multiprocessing offers no other
# way to keep per-process state.
_worker: tuple[Editor, Target, FaceSelection, bool, bool] | None = None


def _init_worker(spec: EditorSpec, target: Target, faces: FaceSelection, force: bool, compare: bool) -> None:
    import signal
    from multiprocessing.util import Finalize

    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    editor = spec.build()
    editor.analyzer  # load MediaPipe now, before the worker says it is ready
    _worker = (editor, target, faces, force, compare)
    # MediaPipe must be closed explicitly (its finaliser raises at exit): close it at exit.
    Finalize(None, editor.close, exitpriority=100)


def _worker_ready() -> bool:
    return _worker is not None


def _worker_job(job: Job) -> BatchReport:
    assert _worker is not None, "pool initializer did not run"
    editor, target, faces, force, compare = _worker
    part = BatchReport()
    _run_job(editor, job, target, faces, force, compare, part)
    return part


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
