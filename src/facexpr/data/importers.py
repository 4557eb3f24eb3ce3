"""Action Unit labels made by other tools: OpenFace CSVs and the GANimation pickle.

* :func:`read_openface_csv` reads OpenFace 2 output by column NAME (OpenFace pads its header
  with spaces and its column order changes between versions and flags, so positions are never
  trusted).
* :func:`import_openface` puts OpenFace's AUs into a copy of a prepared dataset made from
  video frames.
* :func:`import_ganimation` turns the GANimation layout (``imgs/``, ``aus_openface.pkl``,
  ``train_ids.csv`` / ``test_ids.csv``) into a prepared dataset whose AUs are the pickle's and
  whose ``split`` column keeps the published train/test lists.

The pickle is the only thing facexpr ever unpickles, and it does so with
:class:`NumpyOnlyUnpickler`, which can build numpy arrays and plain containers and nothing else:
a pickle is a program, and one handed over with a dataset could otherwise run any command.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from facexpr.data.dataset import (
    BOX_COLUMNS,
    FORMAT_VERSION,
    IMAGES,
    LABELS,
    META,
    REJECTS,
    PreparedDataset,
    format_float,
    label_columns,
    read_csv_table,
    read_meta,
    write_csv_atomic,
    write_json_atomic,
)
from facexpr.data.prepare import (
    IMAGE_SUFFIXES,
    NO_FACE,
    REJECT_HEADER,
    UNREADABLE,
    PreparedWriter,
    PrepareSummary,
    _muted_native_stderr,
    crop_name,
    encode_crop,
    finalize,
)
from facexpr.errors import DatasetError, ImageReadError, OutputError
from facexpr.expression import AU_NAMES

#: OpenFace's intensity column for each of our AUs.
OPENFACE_COLUMNS: tuple[str, ...] = tuple(f"{a}_r" for a in AU_NAMES)

NO_AU_LABEL = "no AU label"
NOT_IN_OPENFACE = "not in openface csv"


# ---------------------------------------------------------------------------------------------
# OpenFace


def read_openface_csv(path: str | os.PathLike[str]) -> tuple[list[str], NDArray[np.float32]]:
    """(frame ids, AUs (N, 17)) from an OpenFace 2 CSV (FeatureExtraction or FaceLandmarkImg).

    Columns are found by name after stripping spaces: ``AU01_r`` ... ``AU45_r`` (intensities,
    0..5, clipped to that range), the id from ``frame`` (or ``file`` / ``input`` / ``face``),
    ``success`` (rows with 0 are dropped: OpenFace found no face there, its AUs are zeros, not
    measurements). With several faces per frame (``face_id``), the first successful row of each
    frame is kept.
    """
    p = Path(path)
    header, rows = read_csv_table(p)
    if not header:
        raise DatasetError(f"{p}: empty or missing OpenFace CSV; run OpenFace's FeatureExtraction with -aus")
    col = {h: i for i, h in enumerate(header)}
    missing = [c for c in OPENFACE_COLUMNS if c not in col]
    if missing:
        raise DatasetError(
            f"{p}: missing OpenFace AU intensity column(s) {', '.join(missing)}; run OpenFace with -aus "
            "(facexpr needs the 17 *_r columns of OpenFace 2)"
        )
    id_col = next((c for c in ("frame", "file", "input", "face") if c in col), None)
    if id_col is None:
        raise DatasetError(f"{p}: no 'frame' (or 'file') column to match rows with images")
    ok = col.get("success")
    frames: list[str] = []
    values: list[list[str]] = []
    seen: set[str] = set()
    for r in rows:
        if len(r) != len(header):
            continue
        if ok is not None and r[ok].strip() not in ("1", "1.0", "True", "true"):
            continue
        fid = r[col[id_col]].strip()
        if fid in seen:
            continue
        seen.add(fid)
        frames.append(fid)
        values.append([r[col[c]].strip() for c in OPENFACE_COLUMNS])
    try:
        aus = np.array(values, dtype=np.float64).reshape(len(values), len(AU_NAMES))
    except ValueError as exc:
        raise DatasetError(f"{p}: an AU column holds a non-number ({exc})") from exc
    return frames, np.clip(aus, 0.0, 5.0).astype(np.float32)


def read_openface_faces(path: str | os.PathLike[str]) -> dict[str, tuple[float, float, float]]:
    """Frame id -> (centre x, centre y, width) in pixels of OpenFace's 68 2D landmarks
    (``x_0..x_67``, ``y_0..y_67``); empty when the CSV has no landmark columns."""
    header, rows = read_csv_table(Path(path))
    col = {h: i for i, h in enumerate(header)}
    xs = [col.get(f"x_{k}") for k in range(68)]
    ys = [col.get(f"y_{k}") for k in range(68)]
    id_col = next((c for c in ("frame", "file", "input", "face") if c in col), None)
    if id_col is None or None in xs or None in ys:
        return {}
    ok = col.get("success")
    out: dict[str, tuple[float, float, float]] = {}
    for r in rows:
        if len(r) != len(header) or (ok is not None and r[ok].strip() not in ("1", "1.0", "True", "true")):
            continue
        fid = r[col[id_col]].strip()
        if fid in out:
            continue
        try:
            x = np.array([float(r[i]) for i in xs])  # type: ignore[index]
            y = np.array([float(r[i]) for i in ys])  # type: ignore[index]
        except ValueError:
            continue
        out[fid] = (float((x.min() + x.max()) / 2), float((y.min() + y.max()) / 2), float(x.max() - x.min()))
    return out


#: A CSV row's face is the prepared row's face when its landmark box centre lies within this
#: fraction of the face width of the detected box's centre and its width is within this ratio.
FACE_MATCH_CENTRE = 0.2
FACE_MATCH_WIDTH = (0.75, 1.33)


def _face_mismatch(of_face: tuple[float, float, float], box: list[float]) -> str | None:
    cx, cy, w = of_face
    x0, y0, x1, y1 = box
    bw = x1 - x0
    if not (bw > 0 and w > 0 and np.isfinite([x0, y0, x1, y1]).all()):
        return None
    dx, dy = cx - (x0 + x1) / 2, cy - (y0 + y1) / 2
    ratio = w / bw
    if np.hypot(dx, dy) > FACE_MATCH_CENTRE * bw or not FACE_MATCH_WIDTH[0] <= ratio <= FACE_MATCH_WIDTH[1]:
        return (f"OpenFace's face is at ({cx:.0f}, {cy:.0f}), {w:.0f} px wide; the detected face at "
                f"({(x0 + x1) / 2:.0f}, {(y0 + y1) / 2:.0f}), {bw:.0f} px wide")
    return None


def _frame_number(text: str) -> int | None:
    """The frame number in a name: the last group of digits (``frame_0012.png`` -> 12)."""
    m = re.findall(r"\d+", Path(text).stem if not text.isdigit() else text)
    return int(m[-1]) if m else None


def _check_new_output(out: Path, *inputs: Path) -> None:
    for src in inputs:
        o, s = out.resolve(), src.resolve()
        if o == s or s in o.parents or o in s.parents:
            raise OutputError(f"{out}: overlaps the input {src}; choose a separate new output folder")
    if out.exists() and (not out.is_dir() or (out / META).exists() or (out / LABELS).exists()):
        raise OutputError(f"{out}: already holds a dataset (or is a file); choose a new output folder")
    try:
        (out / IMAGES).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create it ({exc.strerror or exc}); choose a writable folder") from exc


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (same disk: no extra space), else copy."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def import_openface(
    csv_path: str | os.PathLike[str],
    prepared: str | os.PathLike[str],
    out: str | os.PathLike[str],
    allow_mismatch: bool = False,
) -> PrepareSummary:
    """A copy of ``prepared`` in ``out`` whose AU columns are OpenFace's.

    Intended use: extract a video's frames with their frame number in the name (e.g.
    ``ffmpeg -i talk.mp4 frames/%05d.png``; OpenFace numbers frames from 1, so does ffmpeg),
    ``facexpr prepare frames/ prep/``, run OpenFace on the video, then
    ``facexpr import-openface openface.csv prep/ prep_openface/``. Rows are matched by frame
    number (the last digits of each row's source name); if the CSV's ids are not numbers they
    are matched to source file stems. Rows without a successful OpenFace frame are moved to
    ``rejects.csv`` (reason ``not in openface csv``). Crops are hard-linked (or copied); the input
    dataset is never modified.

    The CSV must describe the same video: when it has OpenFace's 2D landmarks, each matched
    row's face must sit where the prepared row's face was detected (see ``FACE_MATCH_*``), and
    the prepared frames must lie within the CSV's frame range. Otherwise a
    :class:`DatasetError` says where they differ, before anything is written, unless
    ``allow_mismatch`` (then the import goes on).
    """
    t0 = time.perf_counter()
    ds = PreparedDataset(prepared)
    frames, aus = read_openface_csv(csv_path)
    out_p = Path(out)
    numeric = bool(frames) and all(f.isdigit() for f in frames)
    lookup: dict[Any, int] = {}
    for k, f in enumerate(frames):
        lookup[int(f) if numeric else Path(f).stem] = k
    header, rows = read_csv_table(ds.root / LABELS)
    au_idx = [header.index(a) for a in AU_NAMES]
    src_i = header.index("source")
    file_i = header.index("file")
    if not allow_mismatch:
        _check_same_video(Path(csv_path), frames, numeric, lookup, header, rows, Path(prepared))
    _check_new_output(out_p, Path(prepared))
    kept: list[list[str]] = []
    _, old_rejects = read_csv_table(ds.root / REJECTS)
    rejects = [r + [""] * (3 - len(r)) for r in old_rejects]
    for r in rows:
        key = _frame_number(r[src_i]) if numeric else Path(r[src_i]).stem
        k = lookup.get(key)
        if k is None:
            rejects.append([r[src_i], NOT_IN_OPENFACE, f"no successful OpenFace row for {key}"])
            continue
        r = list(r)
        for j, v in zip(au_idx, aus[k].tolist()):
            r[j] = format_float(v)
        _link_or_copy(ds.root / r[file_i], out_p / r[file_i])
        kept.append(r)
    if not kept:
        raise DatasetError(
            f"{csv_path}: none of its {len(frames)} frames matches a row of {prepared}; name the frames by "
            "number (e.g. 00012.png) before `facexpr prepare`"
        )
    write_csv_atomic(out_p / REJECTS, REJECT_HEADER, rejects)
    write_csv_atomic(out_p / LABELS, header, kept)
    meta = dict(read_meta(ds.root))
    meta.update(
        format=FORMAT_VERSION,
        au_estimator=f"OpenFace CSV {Path(csv_path).resolve()}",
        imported_from=str(ds.root.resolve()),
        complete=False,
    )
    meta.pop("counts", None)
    meta.pop("last_run", None)
    return finalize(out_p, meta, processed=len(rows), seconds=time.perf_counter() - t0)


def _check_same_video(csv_path: Path, frames: list[str], numeric: bool, lookup: dict[Any, int],
                      header: list[str], rows: list[list[str]], prepared: Path) -> None:
    """Raise DatasetError when the CSV plainly belongs to another video than ``prepared``."""
    hint = ("check that the CSV was made from the video these frames came from, or pass "
            "--allow-mismatch to import anyway")
    src_i = header.index("source")
    keys = [_frame_number(r[src_i]) if numeric else Path(r[src_i]).stem for r in rows]
    if numeric and frames:
        last = max(int(f) for f in frames)
        beyond = [k for k in keys if isinstance(k, int) and k > last]
        if beyond and len(beyond) * 2 > len(keys):
            raise DatasetError(f"{csv_path}: has frames up to {last} but {len(beyond)} of the {len(keys)} frames of "
                               f"{prepared} lie beyond (up to {max(beyond)}); {hint}")
    faces = read_openface_faces(csv_path)
    if not faces or not all(c in header for c in BOX_COLUMNS):
        return
    box_i = [header.index(c) for c in BOX_COLUMNS]
    by_index = {k: f for k, f in enumerate(frames)}
    checked, bad, example = 0, 0, ""
    for r, key in zip(rows, keys):
        k = lookup.get(key)
        if k is None or by_index.get(k) not in faces:
            continue
        try:
            box = [float(r[i]) for i in box_i]
        except ValueError:
            continue
        checked += 1
        why = _face_mismatch(faces[by_index[k]], box)
        if why:
            bad += 1
            example = example or f"frame {by_index[k]}: {why}"
    if checked and bad * 2 > checked:
        raise DatasetError(f"{csv_path}: the faces in {bad} of {checked} matched frames are not where {prepared} "
                           f"found them ({example}); the CSV seems to come from another video; {hint}")


# ---------------------------------------------------------------------------------------------
# GANimation


def _allowed_globals() -> Mapping[tuple[str, str], Any]:
    """What a GANimation AU pickle may reference: numpy array/scalar rebuilding and plain
    builtin containers. Names are listed for numpy 1 (``numpy.core``) and 2 (``numpy._core``)
    pickles; the objects are taken from numpy itself, so nothing is imported by name."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bytearray", "bool"):
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = allowed[("builtins", name)]  # Python 2 pickles
    import codecs

    allowed[("_codecs", "encode")] = codecs.encode  # how Python 3 protocol-2 pickles store bytes
    return MappingProxyType(allowed)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :func:`_allowed_globals`."""

    def __init__(self, file: io.BufferedIOBase, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed in an AU pickle"
            ) from None


def load_au_pickle(path: str | os.PathLike[str]) -> dict[str, NDArray[np.float32]]:
    """``{image stem: 17 AUs}`` from a GANimation ``aus_openface.pkl``, safely (see module doc)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            obj = NumpyOnlyUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError as exc:
        raise DatasetError(f"{p}: AU pickle not found") from exc
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{p}: not loaded: {exc}. The file may be malicious or is not a GANimation AU pickle") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise DatasetError(f"{p}: damaged or not a GANimation AU pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{p}: expected a dict of image name -> 17 AUs, got {type(obj).__name__}")
    out: dict[str, NDArray[np.float32]] = {}
    for key, val in obj.items():
        arr = np.asarray(val)
        if not isinstance(key, str) or arr.dtype.kind not in "biuf" or arr.size != len(AU_NAMES):
            raise DatasetError(
                f"{p}: entry {key!r} is not 17 numbers (got {arr.dtype} {arr.shape}); not a GANimation AU pickle"
            )
        out[Path(key).stem] = arr.reshape(len(AU_NAMES)).astype(np.float32)
    return out


def _read_ids(path: Path) -> set[str]:
    """Stems listed one per line (GANimation's ``train_ids.csv`` / ``test_ids.csv``)."""
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        cell = line.split(",")[0].strip()
        if cell:
            ids.add(Path(cell).stem)
    return ids


def _resize(rgb: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    import cv2

    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(rgb, (size, size), interpolation=interp))


def import_ganimation(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int | None = None,
    realign: bool = False,
    image_format: str = "jpg",
) -> PrepareSummary:
    """A prepared dataset from GANimation's layout, with the pickle's AUs and train/test split.

    Without ``realign`` the images are taken as the aligned crops they are (GANimation's
    EmotioNet crops), resized to ``size`` when given (default: their own size; non-square images
    are squashed, as GANimation's loader does); blendshape, box and pose cells stay empty.
    With ``realign`` each image goes through the face analyzer and facexpr's alignment, so the
    crops match ``facexpr prepare`` framing; the AUs are still the pickle's. Images without a
    pickle entry are rejected (``no AU label``).
    """
    from facexpr.imageio import load_image

    root_p, out_p = Path(root), Path(out)
    imgs = root_p / "imgs"
    pkl = root_p / "aus_openface.pkl"
    if not imgs.is_dir() or not pkl.is_file():
        raise DatasetError(f"{root_p}: not a GANimation dataset (needs imgs/ and aus_openface.pkl)")
    if size is not None and not 32 <= int(size) <= 2048:
        raise DatasetError(f"--size {size}: crop sizes must be between 32 and 2048 px")
    aus_by_stem = load_au_pickle(pkl)
    train_ids, test_ids = _read_ids(root_p / "train_ids.csv"), _read_ids(root_p / "test_ids.csv")
    files = sorted(p for p in imgs.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{imgs}: no images")
    _check_new_output(out_p, root_p)
    if size is None:
        try:
            first = load_image(files[0]).rgb
        except ImageReadError as exc:
            raise DatasetError(f"{exc}; give --size to set the crop size") from exc
        size = int(max(first.shape[:2]))
    size = int(size)

    from facexpr.face.detect import BLENDSHAPE_NAMES

    header = label_columns(BLENDSHAPE_NAMES, with_split=True)
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "name": root_p.name,
        "size": size,
        "image_format": image_format,
        "complete": False,
        "source": str(root_p.resolve()),
        "alignment": "facexpr.face.align" if realign else "as published (GANimation crops, resized)",
        "au_estimator": f"GANimation aus_openface.pkl (OpenFace) {pkl.resolve()}",
    }
    write_json_atomic(out_p / META, meta)
    writer = PreparedWriter(out_p, size, header, image_format, meta)
    nan4 = [""] * 4
    analyzer = None
    t0 = time.perf_counter()
    try:
        if realign:
            from facexpr.face.detect import FaceAnalyzer

            with _muted_native_stderr():
                analyzer = FaceAnalyzer()
        for path in files:
            source = f"imgs/{path.name}"
            stem = path.stem
            if stem not in aus_by_stem:
                writer.add_reject(source, NO_AU_LABEL, "no entry in aus_openface.pkl")
                continue
            try:
                rgb = load_image(path).rgb
            except ImageReadError as exc:
                writer.add_reject(source, UNREADABLE, str(exc))
                continue
            bs, box, pose = [""] * len(BLENDSHAPE_NAMES), nan4, [""] * 3
            if analyzer is not None:
                from facexpr.face.align import align_face

                faces = analyzer.analyze(rgb)
                if not faces:
                    writer.add_reject(source, NO_FACE)
                    continue
                face = faces[0]
                crop = align_face(rgb, face.landmarks, size).crop
                bs = [format_float(v) for v in np.asarray(face.blendshapes).tolist()]
                box = [format_float(v) for v in np.asarray(face.box).tolist()]
                pose = [format_float(v) for v in face.yaw_pitch_roll()]
            else:
                crop = _resize(rgb, size)
            rel = writer.write_crop(crop_name(source, image_format), encode_crop(crop, image_format))
            split = "test" if stem in test_ids else "train" if stem in train_ids else ""
            row = [rel, source, "", "", *(format_float(v) for v in aus_by_stem[stem].tolist()), *bs, *box, *pose, split]
            writer.add_row(row)
    finally:
        if analyzer is not None:
            analyzer.close()
        writer.flush()
    meta["split_source"] = "train_ids.csv / test_ids.csv" if (train_ids or test_ids) else None
    meta["pickle_entries_without_image"] = len(set(aus_by_stem) - {p.stem for p in files})
    return finalize(out_p, meta, processed=len(files), seconds=time.perf_counter() - t0)

