"""``facexpr prepare``: photos -> aligned crops + Action Units + labels (a prepared dataset).

Pipeline per photo (in a worker process): read (``imageio.load_image``) -> find faces
(``FaceAnalyzer``) -> choose one -> align at every requested size -> AUs from blendshapes ->
encode the crop. The parent process writes crops and label rows, so there is one writer per
output folder and no locking.

Decisions (see also DESIGN.md, "Prepared dataset format"):

* **Sizes.** ``sizes=(128,)`` writes the dataset into ``OUT`` itself; several sizes
  (``--size 128 --size 256``) write ``OUT/128`` and ``OUT/256`` from ONE detection pass (the
  detector is the expensive part; aligning twice is cheap). Each size folder is a complete,
  independent prepared dataset with its own labels and rejects (``too small`` depends on size).
* **Which face.** No face -> reject ``no face``. Several faces -> keep the largest when its box
  area is at least ``dominance`` (2x) the second one's (LFW photos show bystanders), otherwise
  reject ``several faces`` (which person the labels describe would be a guess).
* **Too small.** A face whose size (geometric mean of its landmark box) is below
  ``min_face`` x S (default 0.3) is rejected for size S: aligned crops hold the face over roughly
  two thirds of their width, so such a crop would be upsampled more than ~2x and be blurry
  training data (at the threshold ~2.4x). Dataset crops pass: UTKFace (200 px, faces ~175 px) and Taiwanese (~170 px) at
  128 and 256; LFW (150 px, faces ~90-110 px) at 128 and nearly all at 256.
* **Resuming.** Rows are kept in memory and the whole labels.csv / rejects.csv are rewritten
  (temp file + ``os.replace``) every ``flush_every`` photos; crops are written with temp file +
  rename before their row. A rerun skips every source listed in labels.csv or rejects.csv of
  every size folder; a crop with no row is simply rewritten. ``dataset.json`` has
  ``"complete": false`` until the run finishes. Ctrl-C flushes what is done and stops.
* **Reasons** in ``rejects.csv`` (columns source, reason, detail): ``unreadable`` (detail: the
  reader's message), ``no face``, ``several faces``, ``too small``, and ``error`` for an
  unexpected exception (detail: the exception), which is retried on the next run.
* **Names.** ``images/<source stem>_<8 hex of sha1(source)>.<ext>``: unique for identical stems
  in different folders, and the same on every rerun.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import multiprocessing
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from facexpr import __version__
from facexpr.data.dataset import (
    AU_PLOT,
    FORMAT_VERSION,
    IMAGES,
    LABELS,
    META,
    REJECTS,
    format_float,
    label_columns,
    read_csv_table,
    read_meta,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
)
from facexpr.devices import usable_cores
from facexpr.errors import ConfigError, DatasetError, FacexprError, NoFaceError, OutputError
from facexpr.expression import AU_NAMES

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
FORMATS = ("jpg", "png")
REJECT_HEADER = ("source", "reason", "detail")

UNREADABLE = "unreadable"
NO_FACE = "no face"
SEVERAL_FACES = "several faces"
TOO_SMALL = "too small"
ERROR = "error"

MIN_SIZE, MAX_SIZE = 32, 2048


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class SourceItem:
    """One photo to prepare: where it is, its key in the tables, and its given labels."""

    path: Path
    source: str
    identity: str = ""
    expression: str = ""


def list_folder(root: Path) -> list[SourceItem]:
    """Every image under ``root`` (recursive, by suffix), sorted by relative path.

    Hidden files and folders (``.name``) are skipped: they are editor/OS droppings, or temp
    files of an interrupted write.
    """
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            p = Path(dirpath) / name
            items.append(SourceItem(path=p, source=p.relative_to(root).as_posix()))
    items.sort(key=lambda it: it.source)
    return items


def read_manifest(manifest: Path, base: Path | None = None) -> list[SourceItem]:
    """Rows of a manifest CSV: column ``file`` (required), ``identity`` and ``expression``
    (optional), found by name; other columns are ignored.

    Relative paths are resolved against ``base`` (default: the manifest's folder). The
    ``source`` key is the path exactly as written in the manifest. A file listed twice is
    prepared once.
    """
    base = manifest.parent if base is None else base
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{manifest}: cannot read the manifest CSV ({exc})") from exc
    if "file" not in header:
        separated = next((sep for sep in (";", "\t", "|") if any(sep in h for h in header)), None)
        hint = f" (it looks separated by {separated!r}: a manifest is comma-separated)" if separated else ""
        raise DatasetError(
            f"{manifest}: the manifest needs a 'file' column (image paths relative to {base}); "
            f"its columns are: {', '.join(header) or '(none)'}{hint}"
        )
    fi = header.index("file")
    ii = header.index("identity") if "identity" in header else None
    ei = header.index("expression") if "expression" in header else None
    seen: set[str] = set()
    items = []
    for r in rows:
        if len(r) <= fi or not r[fi].strip():
            continue
        src = r[fi].strip()
        if src in seen:
            continue
        seen.add(src)
        p = Path(src)
        items.append(
            SourceItem(
                path=p if p.is_absolute() else base / p,
                source=src,
                identity=r[ii].strip() if ii is not None and ii < len(r) else "",
                expression=r[ei].strip().lower() if ei is not None and ei < len(r) else "",
            )
        )
    return items


def crop_name(source: str, ext: str) -> str:
    """Stable, unique crop file name for a source key."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem).strip("._")[:60] or "img"
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:8]
    return f"{stem}_{digest}.{ext}"


# ---------------------------------------------------------------------------------------------
# Worker side


@dataclass
class WorkerConfig:
    sizes: tuple[int, ...]
    image_format: str = "jpg"
    quality: int = 95
    min_face: float = 0.3
    dominance: float = 2.0


@dataclass
class FaceResult:
    """What a worker sends back for one photo (picklable, small: crops are encoded bytes)."""

    index: int
    reason: str = ""  # '' = a face was kept
    detail: str = ""
    crops: dict[int, bytes] = field(default_factory=dict)
    too_small: dict[int, str] = field(default_factory=dict)
    aus: np.ndarray | None = None
    blendshapes: np.ndarray | None = None
    box: np.ndarray | None = None
    ypr: tuple[float, float, float] = (float("nan"),) * 3
    seconds: dict[str, float] = field(default_factory=dict)


def encode_crop(crop: np.ndarray, image_format: str, quality: int = 95) -> bytes:
    """JPEG (4:4:4 at q>=90, like ``imageio.save_image``) or PNG bytes of a uint8 RGB crop."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(crop), "RGB")
    if image_format == "png":
        img.save(buf, format="PNG", compress_level=3)
    else:
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


class FaceWorker:
    """Turns one photo into a :class:`FaceResult`. Owns one FaceAnalyzer (not shareable)."""

    def __init__(self, config: WorkerConfig) -> None:
        from facexpr.face.detect import FaceAnalyzer

        self.config = config
        # MediaPipe/TFLite print start-up lines straight to file descriptor 2 (no setting turns
        # them off); with one per worker they would shred the progress bar. Start-up and a
        # warm-up call happen with fd 2 muted; later errors still reach the terminal.
        with _muted_native_stderr():
            self.analyzer = FaceAnalyzer()
            self.analyzer.analyze(np.zeros((64, 64, 3), np.uint8))

    def close(self) -> None:
        self.analyzer.close()

    def __enter__(self) -> FaceWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, task: tuple[int, str]) -> FaceResult:
        index, path = task
        res = FaceResult(index=index)
        try:
            self._run(Path(path), res)
        except FacexprError as exc:
            res.reason, res.detail = ERROR, str(exc)
        except Exception as exc:  # one odd photo must not end a 15k-photo run; it is reported
            res.reason, res.detail = ERROR, f"{type(exc).__name__}: {exc}"
        return res

    def _run(self, path: Path, res: FaceResult) -> None:
        from facexpr.errors import ImageReadError
        from facexpr.face.align import align_face
        from facexpr.face.aus import aus_from_blendshapes
        from facexpr.imageio import load_image

        cfg = self.config
        secs = res.seconds
        t0 = time.perf_counter()
        try:
            rgb = load_image(path).rgb
        except ImageReadError as exc:
            res.reason, res.detail = UNREADABLE, str(exc)
            secs["read"] = time.perf_counter() - t0
            return
        t1 = time.perf_counter()
        secs["read"] = t1 - t0
        faces = self.analyzer.analyze(rgb)
        t2 = time.perf_counter()
        secs["detect"] = t2 - t1
        if not faces:
            res.reason = NO_FACE
            from facexpr.face.detect import check_searchable, searchable

            if not searchable(rgb.shape[1], rgb.shape[0]):
                try:
                    check_searchable(rgb.shape[1], rgb.shape[0])
                except NoFaceError as exc:
                    res.detail = str(exc)
            return
        if len(faces) > 1 and faces[0].area < cfg.dominance * faces[1].area:
            res.reason = SEVERAL_FACES
            res.detail = f"{len(faces)} faces, the largest is not {cfg.dominance:g}x the area of the next"
            return
        face = faces[0]
        res.aus = np.asarray(aus_from_blendshapes(face.blendshapes, face.landmarks), np.float32)
        res.blendshapes = np.asarray(face.blendshapes, np.float32)
        res.box = np.asarray(face.box, np.float64)
        res.ypr = tuple(float(v) for v in face.yaw_pitch_roll())  # type: ignore[assignment]
        t3 = time.perf_counter()
        secs["aus"] = t3 - t2
        fsize = float(face.size)
        align_s = encode_s = 0.0
        for size in cfg.sizes:
            if fsize < cfg.min_face * size:
                res.too_small[size] = f"face {fsize:.0f} px < {cfg.min_face:g} x {size} px"
                continue
            ta = time.perf_counter()
            crop = align_face(rgb, face.landmarks, size).crop
            tb = time.perf_counter()
            res.crops[size] = encode_crop(crop, cfg.image_format, cfg.quality)
            align_s += tb - ta
            encode_s += time.perf_counter() - tb
        secs["align"] = align_s
        secs["encode"] = encode_s


@contextlib.contextmanager
def _muted_native_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (native code ignores sys.stderr)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (e.g. a service): nothing to mute
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


# One FaceWorker per pool process. This module-level slot exists only inside worker processes
# (set by the pool initializer); multiprocessing offers no other way to keep per-process state.
_process_worker: FaceWorker | None = None


def _init_pool_worker(config: WorkerConfig) -> None:
    from multiprocessing.util import Finalize

    global _process_worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    _process_worker = FaceWorker(config)
    # MediaPipe must be closed explicitly (its finaliser raises at exit): run close() at exit.
    Finalize(None, _process_worker.close, exitpriority=100)


def _pool_call(task: tuple[int, str]) -> FaceResult:
    assert _process_worker is not None, "pool initializer did not run"
    return _process_worker(task)


# ---------------------------------------------------------------------------------------------
# Parent side: one writer per output folder


class PreparedWriter:
    """Rows and rejects of one prepared folder, flushed to disk atomically in batches."""

    def __init__(self, root: Path, size: int, header: list[str], image_format: str, meta: dict[str, Any]) -> None:
        self.root = root
        self.size = size
        self.header = header
        self.image_format = image_format
        self.meta = meta
        (root / IMAGES).mkdir(parents=True, exist_ok=True)
        old_header, rows = read_csv_table(root / LABELS)
        if old_header and old_header != header:
            raise DatasetError(
                f"{root / LABELS}: its columns differ from what this facexpr version writes; "
                "prepare into a new folder"
            )
        self.rows: list[list[str]] = rows
        rh, rejects = read_csv_table(root / REJECTS)
        if rh and rh[:2] != list(REJECT_HEADER[:2]):
            raise DatasetError(f"{root / REJECTS}: unexpected columns {rh}; prepare into a new folder")
        # an 'error' (unexpected exception) may be transient: such photos are retried on resume
        self.rejects: list[list[str]] = [r + [""] * (3 - len(r)) for r in rejects if r[1:2] != [ERROR]]
        self.dirty = len(self.rejects) != len(rejects)
        self.done: set[str] = {r[1] for r in self.rows} | {r[0] for r in self.rejects}

    def write_crop(self, name: str, data: bytes) -> str:
        rel = f"{IMAGES}/{name}"
        write_bytes_atomic(self.root / rel, data)
        return rel

    def add_row(self, row: list[str]) -> None:
        self.rows.append(row)
        self.done.add(row[1])
        self.dirty = True

    def add_reject(self, source: str, reason: str, detail: str = "") -> None:
        self.rejects.append([source, reason, detail.replace("\n", " ")])
        self.done.add(source)
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        # rejects first: a source in neither table is redone, in both it is never lost
        write_csv_atomic(self.root / REJECTS, REJECT_HEADER, self.rejects)
        write_csv_atomic(self.root / LABELS, self.header, self.rows)
        self.dirty = False


@dataclass
class PrepareSummary:
    """What one output folder holds after a run, plus this run's speed."""

    root: Path
    size: int
    total: int
    kept: int
    rejected: dict[str, int]
    by_expression: dict[str, int]
    processed_this_run: int
    seconds: float
    stage_seconds: dict[str, float]

    @property
    def images_per_second(self) -> float:
        return self.processed_this_run / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        rej = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items(), key=lambda kv: -kv[1])) or "none"
        expr = ", ".join(f"{k or 'unknown'} {v}" for k, v in self.by_expression.items()) or "-"
        return (
            f"{self.root} ({self.size} px): {self.kept} kept of {self.total}; rejected: {rej}\n"
            f"  expressions: {expr}\n"
            f"  this run: {self.processed_this_run} photos in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} img/s)"
        )


def _label_row(item: SourceItem, file: str, res: FaceResult) -> list[str]:
    assert res.aus is not None and res.blendshapes is not None and res.box is not None
    return [
        file,
        item.source,
        item.identity,
        item.expression,
        *(format_float(v) for v in res.aus.tolist()),
        *(format_float(v) for v in res.blendshapes.tolist()),
        *(format_float(v) for v in res.box.tolist()),
        *(format_float(v) for v in res.ypr),
    ]


def output_roots(out: Path, sizes: Sequence[int]) -> dict[int, Path]:
    """``OUT`` for one size, ``OUT/<size>`` for several."""
    if len(sizes) == 1:
        return {sizes[0]: out}
    return {s: out / str(s) for s in sizes}


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(src: Path, out: Path, sizes: Sequence[int], src_is_folder: bool) -> dict[int, Path]:
    """Refuse, before any work, outputs that would destroy data or re-read themselves."""
    if not sizes:
        raise ConfigError("give at least one --size")
    for s in sizes:
        if not MIN_SIZE <= s <= MAX_SIZE:
            raise ConfigError(f"--size {s}: crop sizes must be between {MIN_SIZE} and {MAX_SIZE} px")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"--size given twice: {list(sizes)}")
    out_r = out.resolve()
    src_r = src.resolve()
    roots = output_roots(out, sizes)
    if src_is_folder and _is_within(out_r, src_r):
        raise OutputError(
            f"{out}: the output folder is {'the' if out_r == src_r else 'inside the'} source folder {src}; "
            "prepare would read its own crops back as photos: choose an output folder outside it"
        )
    for root in roots.values():
        if _is_within(src_r, root.resolve() / IMAGES) or src_r == root.resolve():
            raise OutputError(f"{out}: the source {src} is inside the output; choose another output folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; choose another output path")
    if len(sizes) > 1 and (out / META).exists():
        meta = read_meta(out)
        raise OutputError(
            f"{out}: is already a prepared dataset of {meta.get('size', '?')} px; with several --size values "
            f"the output gets one subfolder per size: give a new folder (or one --size to resume it)"
        )
    for size, root in roots.items():
        if (root / META).exists():
            meta = read_meta(root)
            if int(meta.get("size", -1)) != size:
                raise OutputError(
                    f"{root}: holds a prepared dataset of {meta.get('size', '?')} px, not {size} px; "
                    "choose another output folder (prepare never mixes sizes in one folder)"
                )
        elif (root / LABELS).exists():
            raise OutputError(
                f"{root}: has a labels.csv that facexpr did not write (no dataset.json); "
                "choose another output folder so it is not overwritten"
            )
    try:
        for root in roots.values():
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".facexpr-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as exc:
        raise OutputError(f"{out}: cannot write there ({exc.strerror or exc}); choose a writable folder") from exc
    return roots


def resolve_sources(src: Path, manifest: Path | None = None, limit: int | None = None) -> tuple[list[SourceItem], bool]:
    """The photos to prepare and whether ``src`` is a folder (see :func:`prepare`)."""
    if not src.exists():
        raise DatasetError(f"{src}: not found; give a folder of photos or a manifest CSV")
    if manifest is not None:
        if not manifest.is_file():
            raise DatasetError(f"{manifest}: manifest CSV not found")
        base = src if src.is_dir() else manifest.parent
        items, is_folder = read_manifest(manifest, base), src.is_dir()
    elif src.is_dir():
        items, is_folder = list_folder(src), True
    elif src.suffix.lower() == ".csv":
        items, is_folder = read_manifest(src), False
    else:
        raise DatasetError(f"{src}: is neither a folder of photos nor a .csv manifest")
    if limit is not None:
        items = items[: max(int(limit), 0)]
    if not items and (manifest is not None or not is_folder):
        raise DatasetError(f"{manifest or src}: the manifest lists no photos (its 'file' column is empty)")
    if not items:
        raise DatasetError(f"{src}: no images found (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    return items, is_folder


def default_workers() -> int:
    return usable_cores()


def prepare(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    sizes: Sequence[int] = (128,),
    manifest: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    image_format: str = "jpg",
    limit: int | None = None,
    min_face: float = 0.3,
    flush_every: int = 200,
    progress: bool = True,
    on_result: Callable[[int], None] | None = None,
) -> dict[int, PrepareSummary]:
    """Prepare ``src`` (a folder, searched recursively, or a manifest CSV) into ``out``.

    Args:
        sizes: crop sizes; one size -> ``out`` is the dataset, several -> ``out/<size>``.
        manifest: a CSV listing the photos (column ``file``, relative to ``src`` when ``src`` is
            a folder, else to the CSV's folder; optional ``identity`` and ``expression``).
        workers: processes, each with its own face analyzer (default: all cores); 1 runs in
            this process.
        limit: only the first ``limit`` photos of the input (folder: sorted by path; manifest:
            row order).
        flush_every: save labels/rejects after this many photos (and at least every 30 s).
        on_result: called in this process with the count of photos finished in this run, after
            each one (progress hooks; tests raise KeyboardInterrupt there to simulate Ctrl-C).

    Returns one :class:`PrepareSummary` per size. Raises KeyboardInterrupt after saving the
    finished work when interrupted.
    """
    src_p, out_p = Path(src), Path(out)
    image_format = image_format.lower().lstrip(".")
    if image_format == "jpeg":
        image_format = "jpg"
    if image_format not in FORMATS:
        raise ConfigError(f"--format {image_format}: use jpg or png")
    if not 0.0 <= min_face < 1.0:
        raise ConfigError(f"min_face must be in [0, 1), got {min_face}")
    sizes = tuple(int(s) for s in sizes)
    items, is_folder = resolve_sources(src_p, Path(manifest) if manifest is not None else None, limit)
    roots = check_output(src_p, out_p, sizes, is_folder)
    workers = default_workers() if workers is None else max(int(workers), 1)

    from facexpr.face.detect import BLENDSHAPE_NAMES

    header = label_columns(BLENDSHAPE_NAMES)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    source_id = str(src_p.resolve())
    manifest_id = str(Path(manifest).resolve()) if manifest is not None else None
    olds = {size: read_meta(root) for size, root in roots.items()}
    for size, old in olds.items():
        # resuming is only meaningful for the same input: source keys of another input could
        # collide with these and be skipped, and its photos would silently join this dataset
        if old and (old.get("source"), old.get("manifest")) != (source_id, manifest_id):
            raise OutputError(
                f"{roots[size]}: was prepared from {old.get('source')}"
                f"{' (manifest ' + str(old.get('manifest')) + ')' if old.get('manifest') else ''}, not from "
                f"{source_id}{' (manifest ' + manifest_id + ')' if manifest_id else ''}; "
                "prepare into a new folder (several prepared sets can be used together)"
            )
        if old and old.get("image_format", image_format) != image_format:
            raise OutputError(
                f"{roots[size]}: was started with --format {old['image_format']}; resume with the same "
                "format or choose a new folder"
            )
    writers: dict[int, PreparedWriter] = {}
    for size, root in roots.items():
        old = olds[size]
        meta = {
            "format": FORMAT_VERSION,
            "name": old.get("name") or (src_p.name if src_p.is_dir() else src_p.parent.name),
            "size": size,
            "image_format": image_format,
            "complete": False,
            "source": source_id,
            "manifest": manifest_id,
            "alignment": "facexpr.face.align (similarity transform to the canonical landmark template)",
            "au_estimator": "facexpr.face.aus.aus_from_blendshapes (MediaPipe blendshapes)",
            "min_face": min_face,
            "created": old.get("created", created),
            "facexpr_version": __version__,
        }
        if old.get("last_run"):
            meta["last_run"] = old["last_run"]
        writers[size] = PreparedWriter(root, size, header, image_format, meta)

    todo = [it for it in items if any(it.source not in w.done for w in writers.values())]
    for w in writers.values():
        # until finalize(), readers are told the folder is being (re)built
        w.meta["complete"] = bool(olds[w.size].get("complete")) and all(it.source in w.done for it in items)
        write_json_atomic(w.root / META, w.meta)
    config = WorkerConfig(sizes=tuple(s for s in sizes), image_format=image_format, min_face=min_face)
    stage: Counter[str] = Counter()
    processed = 0
    t_start = last_flush = time.perf_counter()
    interrupted = False
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"prepare {src_p.name}", dynamic_ncols=True)
    tasks = ((i, str(it.path)) for i, it in enumerate(todo))
    try:
        # KeyboardInterrupt must leave the `with` so the pool is terminated, not drained
        with _results(tasks, config, workers, len(todo)) as results:
            for res in results:
                tw = time.perf_counter()
                _record(todo[res.index], res, writers)
                stage.update(res.seconds)
                stage["write"] += time.perf_counter() - tw
                processed += 1
                if processed % flush_every == 0 or time.perf_counter() - last_flush > 30.0:
                    for w in writers.values():
                        w.flush()
                    last_flush = time.perf_counter()
                if bar is not None:
                    bar.update(1)
                if on_result is not None:
                    on_result(processed)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
        for w in writers.values():
            w.flush()
    elapsed = time.perf_counter() - t_start
    if interrupted:
        raise KeyboardInterrupt(
            f"interrupted after {processed} photos; the finished ones are saved: rerun the same command to resume"
        )
    summaries = {}
    for size, w in writers.items():
        summaries[size] = finalize(w.root, w.meta, processed, elapsed, dict(stage))
    return summaries


class _results:
    """Context manager yielding FaceResults in input order, from worker processes or in-process.

    A ProcessPoolExecutor rather than multiprocessing.Pool: when a worker cannot start (e.g. the
    face model fails to load) the executor reports a broken pool instead of respawning workers
    forever.
    """

    def __init__(self, tasks: Iterator[tuple[int, str]], config: WorkerConfig, workers: int, n: int) -> None:
        self.tasks, self.config, self.workers, self.n = tasks, config, workers, n
        self.executor: Any = None
        self.local: FaceWorker | None = None

    def __enter__(self) -> Iterator[FaceResult]:
        if self.n == 0:
            return iter(())
        if self.workers <= 1:
            self.local = FaceWorker(self.config)
            return map(self.local, self.tasks)
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold threads (tqdm) and native libraries' state
        self.executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_pool_worker,
            initargs=(self.config,),
        )
        chunk = max(1, min(8, self.n // (self.workers * 8)))
        return self._guarded(self.executor.map(_pool_call, self.tasks, chunksize=chunk))

    @staticmethod
    def _guarded(it: Iterator[FaceResult]) -> Iterator[FaceResult]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            yield from it
        except BrokenProcessPool as exc:
            raise FacexprError(
                f"a prepare worker process died ({exc}); rerun with --workers 1 to see the underlying error "
                "(finished photos are kept and will be skipped)"
            ) from exc

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.local is not None:
            self.local.close()
        if self.executor is not None:
            # on Ctrl-C / error: drop queued photos; workers finish the one they hold and exit
            self.executor.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)


def _record(item: SourceItem, res: FaceResult, writers: dict[int, PreparedWriter]) -> None:
    for size, w in writers.items():
        if item.source in w.done:
            continue
        if res.reason:
            w.add_reject(item.source, res.reason, res.detail)
        elif size in res.too_small:
            w.add_reject(item.source, TOO_SMALL, res.too_small[size])
        else:
            rel = w.write_crop(crop_name(item.source, w.image_format), res.crops[size])
            w.add_row(_label_row(item, rel, res))


def finalize(
    root: Path,
    meta: dict[str, Any],
    processed: int = 0,
    seconds: float = 0.0,
    stage_seconds: dict[str, float] | None = None,
) -> PrepareSummary:
    """Write the final ``dataset.json`` and ``au_distribution.png`` from the tables on disk."""
    header, rows = read_csv_table(root / LABELS)
    _, rejects = read_csv_table(root / REJECTS)
    by_reason = Counter(r[1] for r in rejects if len(r) > 1)
    ei = header.index("expression") if "expression" in header else None
    by_expr = Counter(r[ei] for r in rows) if ei is not None else Counter()
    stage = {k: round(v, 3) for k, v in (stage_seconds or {}).items()}
    summary = PrepareSummary(
        root=root,
        size=int(meta["size"]),
        total=len(rows) + len(rejects),
        kept=len(rows),
        rejected=dict(by_reason),
        by_expression=dict(by_expr.most_common()),
        processed_this_run=processed,
        seconds=seconds,
        stage_seconds=stage,
    )
    au_cols = [header.index(a) for a in AU_NAMES if a in header]
    aus = np.array([[float(r[j]) for j in au_cols] for r in rows], np.float32).reshape(len(rows), len(au_cols))
    plot_au_distribution(
        aus,
        root / AU_PLOT,
        title=f"{meta.get('name', root.name)} ({summary.kept} crops, {summary.size} px)",
        expressions=summary.by_expression,
    )
    meta = dict(meta)
    meta.update(
        complete=True,
        counts={
            "total": summary.total,
            "kept": summary.kept,
            "rejected": dict(sorted(by_reason.items())),
            "by_expression": summary.by_expression,
        },
        facexpr_version=__version__,
    )
    if processed or "last_run" not in meta:  # a rerun with nothing to do keeps the real run's figures
        meta["last_run"] = {
            "processed": processed,
            "seconds": round(seconds, 2),
            "images_per_second": round(summary.images_per_second, 2),
            "stage_seconds": stage,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    write_json_atomic(root / META, meta)
    return summary


def plot_au_distribution(
    aus: np.ndarray, path: Path, title: str = "", expressions: dict[str, int] | None = None
) -> None:
    """17 histograms on the 0..5 scale (a quick check that the estimator is not degenerate),
    plus the crops per expression label in the 18th panel."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 8), dpi=80)
    bins = np.linspace(0, 5, 26)
    for k, name in enumerate(AU_NAMES):
        ax = fig.add_subplot(3, 6, k + 1)
        if k < aus.shape[1] and len(aus):
            ax.hist(aus[:, k], bins=bins, color="tab:blue")
            ax.set_title(f"{name}  mean {float(aus[:, k].mean()):.2f}", fontsize=9)
        else:
            ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 5)
        ax.tick_params(labelsize=7)
    if expressions:
        ax = fig.add_subplot(3, 6, 18)
        names = list(expressions)[:10]
        ax.barh([n or "unknown" for n in names][::-1], [expressions[n] for n in names][::-1], color="tab:gray")
        ax.set_title("crops per expression", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(title or "Action Unit intensities")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
