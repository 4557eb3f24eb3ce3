"""Files and folders in, files out: the batch logic behind ``facexpr edit``.

Kept out of the CLI so it can be tested and reused (the web page edits one upload at a time with
the Editor directly). Outputs mirror the input tree, are written atomically, and an existing
output is never overwritten unless asked. A JPEG output is written like its source (same tables
and subsampling, ICC and EXIF kept; see ``imageio.save_image(like=)``), so the photo outside the
edited faces decodes as it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from facexpr.errors import ConfigError, FacexprError, OutputError
from facexpr.imageio import load_image, save_image
from facexpr.pipeline.editor import Editor, FaceSelection
from facexpr.pipeline.targets import Target

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: Formats we write; others (bmp, tif) are written as PNG.
WRITABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path


@dataclass
class BatchReport:
    edited: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (source, reason)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (source, message)

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
    single_file = len(paths) == 1 and paths[0].is_file() and out.suffix.lower() in WRITABLE_SUFFIXES
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
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
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
    """Edit every job; a file that fails (no face, unreadable) is reported and the rest go on."""
    report = BatchReport()
    for job in jobs:
        if progress is not None:
            progress(job)
        if job.output.exists() and not force:
            report.skipped.append((job.source, f"{job.output} exists (use --force to overwrite)"))
            continue
        try:
            loaded = load_image(job.source)
            arr = loaded.rgb if loaded.alpha is None else np.dstack([loaded.rgb, loaded.alpha])
            result = editor.edit_array(arr, target, faces)
            img = result.image
            try:
                job.output.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"{job.output.parent}: cannot create the output folder ({exc.strerror or exc})") from exc
            # like=loaded: a JPEG keeps its source's tables, subsampling, ICC and EXIF, and the
            # pixels the edit left alone decode as they did in the source.
            save_image(job.output, img[..., :3], alpha=img[..., 3] if img.shape[2] == 4 else None,
                       like=loaded)
            if compare:
                save_image(compare_path(job.output), side_by_side(arr[..., :3], img[..., :3]))
        except OutputError:
            raise  # the output location is broken for every file: stop the batch
        except FacexprError as exc:
            report.failed.append((job.source, str(exc)))
            continue
        report.edited.append(job.output)
    return report
