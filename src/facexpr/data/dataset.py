"""The prepared-dataset format: reading it, splitting it by identity, and writing its files.

A prepared dataset is a folder made by ``facexpr prepare`` (or an importer)::

    ROOT/images/<name>.jpg    aligned square crops, all of one size S
    ROOT/labels.csv           one row per kept crop (columns below)
    ROOT/rejects.csv          source, reason  (sources that gave no crop, and why)
    ROOT/dataset.json         size, counts, creation time, facexpr version, ``complete`` flag
    ROOT/au_distribution.png  one histogram per Action Unit (for a human to look at)

``labels.csv`` columns, taken by NAME (their order is not significant to the reader)::

    file                path of the crop relative to ROOT (``images/<name>.jpg``)
    source              the photo it came from, relative to the prepared folder or manifest
    identity            person id; empty = unknown (then the row is its own identity group)
    expression          emotion label; empty = unknown
    AU01 .. AU45        17 Action Unit intensities, OpenFace 0..5 scale (``expression.AU_NAMES``)
    bs_<name>           the 52 MediaPipe blendshapes (empty when unknown, e.g. imported sets)
    box_x0 .. box_y1    face box in the source photo, pixels
    yaw, pitch, roll    head pose in degrees
    split               optional: ``train`` / ``test`` given by the data's publisher (GANimation)

The reader is deliberately pandas-free and fast (the csv module + one numpy conversion per
column block): training processes open a 15k-row set in well under a second.
"""

from __future__ import annotations

import csv
import hashlib
import json
import operator
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from facexpr.atomic import atomic_open
from facexpr.errors import DatasetError, OutputError
from facexpr.expression import AU_NAMES

#: Version of the folder layout, stored in ``dataset.json``.
FORMAT_VERSION = 1

LABELS = "labels.csv"
REJECTS = "rejects.csv"
META = "dataset.json"
IMAGES = "images"
AU_PLOT = "au_distribution.png"

ID_COLUMNS: tuple[str, ...] = ("file", "source", "identity", "expression")
BOX_COLUMNS: tuple[str, ...] = ("box_x0", "box_y0", "box_x1", "box_y1")
POSE_COLUMNS: tuple[str, ...] = ("yaw", "pitch", "roll")
SPLIT_COLUMN = "split"
REJECT_COLUMNS: tuple[str, ...] = ("source", "reason")

#: Values of the ``split`` column that put a row in the validation part.
_VAL_SPLITS = frozenset({"test", "val", "validation"})
_TRAIN_SPLITS = frozenset({"train"})


def label_columns(blendshape_names: Sequence[str], with_split: bool = False) -> list[str]:
    """The ``labels.csv`` header in the canonical order writers use."""
    cols = [*ID_COLUMNS, *AU_NAMES, *(f"bs_{n}" for n in blendshape_names), *BOX_COLUMNS, *POSE_COLUMNS]
    if with_split:
        cols.append(SPLIT_COLUMN)
    return cols


def format_float(value: float) -> str:
    """Four decimals, shortest form; NaN (unknown) becomes an empty cell."""
    v = float(value)
    if v != v:  # NaN
        return ""
    return repr(round(v, 4))


def _prepare_hint(root: Path) -> str:
    return (
        f"make it with `facexpr prepare SRC {root} --size N` "
        "(or `facexpr import-ganimation` / `facexpr import-openface`)"
    )


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Write a whole CSV to a temporary file, fsync it, then rename it over ``path``.

    Readers (and a resumed run) therefore always see either the previous complete file or the
    new complete one, never a half-written table.
    """
    try:
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write ({exc.strerror or exc}); check that the folder is writable and the disk has space"
        ) from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file via temp name + rename, so a crop on disk is always complete."""
    try:
        with atomic_open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write ({exc.strerror or exc}); check that the folder is writable and the disk has space"
        ) from exc


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def read_csv_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header (stripped of spaces) and rows of a CSV; a missing file gives ([], [])."""
    if not path.exists():
        return [], []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            rows = [r for r in reader if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot be read as CSV ({exc}); is it a facexpr labels file?") from exc
    return [h.strip() for h in header], rows


def read_meta(root: Path) -> dict[str, Any]:
    """``dataset.json`` of a prepared folder, or ``{}`` when absent."""
    p = Path(root) / META
    if not p.exists():
        return {}
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{p}: is not valid JSON ({exc}); delete it and rerun `facexpr prepare` to rebuild it") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{p}: expected a JSON object; delete it and rerun `facexpr prepare`")
    return meta


def _float_block(rows: list[list[str]], columns: Sequence[int]) -> NDArray[np.float32]:
    """Cells ``columns`` of every row as an (n, k) float32 array; empty cells -> NaN.

    The cells are joined into one string (a C-level join per row) and parsed by one
    ``np.fromstring``: ~5x faster than ``float()`` per cell, which is what keeps a 15k-row
    table under a second.
    """
    n, k = len(rows), len(columns)
    if not k or not n:
        return np.zeros((n, k), np.float32)
    get = operator.itemgetter(*columns)
    if k == 1:
        text = ",".join([r[columns[0]] for r in rows])
    else:
        text = ",".join([",".join(get(r)) for r in rows])
    if ",," in text or text.startswith(",") or text.endswith(","):
        text = _EMPTY_CELL.sub("nan", text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "could not be read to its end": checked below
        try:
            vals = np.fromstring(text, dtype=np.float64, sep=",")
        except ValueError:  # numpy >= 2.3 raises where older versions warned and stopped
            vals = np.zeros(0)
    if vals.size != n * k:
        bad = next((r[c] for r in rows for c in columns if r[c] and not _is_number(r[c])), "?")
        raise DatasetError(f"a numeric column holds a non-number ({bad!r})")
    return vals.reshape(n, k).astype(np.float32)


#: An empty cell in a comma-joined row of cells.
_EMPTY_CELL = re.compile(r"(?:^|(?<=,))(?=,|$)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _stable_hash(key: str, seed: int) -> int:
    """64-bit hash that is the same on every machine and run (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest(), "big")


@dataclass
class _Part:
    """One source folder of a (possibly merged) dataset."""

    root: Path
    name: str
    meta: dict[str, Any]


class PreparedDataset:
    """A prepared dataset in memory: labels as numpy arrays, crops read on demand.

    Attributes (N rows):
        root: the folder (the first one for a merged dataset); ``roots`` lists all of them.
        size: crop side S in pixels.
        files, sources, identities, expressions, splits: ``list[str]`` ('' = unknown / not given).
        aus: (N, 17) float32, OpenFace 0..5 scale, columns in ``expression.AU_NAMES`` order.
        blendshapes: (N, B) float32 (B = 52 for prepared sets; NaN where unknown).
        blendshape_names: the B names, without the ``bs_`` prefix.
        boxes: (N, 4) float32 face box in the source photo; poses: (N, 3) yaw, pitch, roll (deg).
        meta: ``dataset.json`` of the (first) folder.
    """

    root: Path
    size: int
    files: list[str]
    sources: list[str]
    identities: list[str]
    expressions: list[str]
    splits: list[str]
    aus: NDArray[np.float32]
    blendshapes: NDArray[np.float32]
    blendshape_names: list[str]
    boxes: NDArray[np.float32]
    poses: NDArray[np.float32]

    def __init__(self, root: str | os.PathLike[str], allow_incomplete: bool = False) -> None:
        """Open ``root``; raises :class:`DatasetError` saying what to run when it is not usable.

        ``allow_incomplete`` lets a reader use the rows of a ``prepare`` run that is still going
        or was interrupted (the rows on disk are always consistent; only the count is partial).
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: prepared dataset folder not found; {_prepare_hint(root)}")
        missing = [n for n in (LABELS, IMAGES, META) if not (root / n).exists()]
        if missing:
            raise DatasetError(
                f"{root}: not a prepared dataset (missing {', '.join(missing)}); {_prepare_hint(root)}"
            )
        meta = read_meta(root)
        if meta.get("complete", True) is False and not allow_incomplete:
            raise DatasetError(
                f"{root}: preparation has not finished (interrupted or still running); rerun the same "
                "`facexpr prepare` command to resume it, or open it with allow_incomplete=True"
            )
        try:
            size = int(meta["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{root / META}: has no valid 'size'; rerun `facexpr prepare` to rebuild it") from exc
        header, rows = read_csv_table(root / LABELS)
        self._load_rows(root / LABELS, header, rows)
        self.size = size
        self.root = root
        name = str(meta.get("name") or root.name)
        self._parts = [_Part(root=root, name=name, meta=meta)]
        self._part_index = np.zeros(len(self.files), np.int32)

    # -- construction -------------------------------------------------------------------------

    def _load_rows(self, path: Path, header: list[str], rows: list[list[str]]) -> None:
        need = [*ID_COLUMNS, *AU_NAMES]
        missing = [c for c in need if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; it was not written by facexpr "
                "or is damaged; rerun `facexpr prepare`"
            )
        width = len(header)
        bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
        if bad is not None:
            raise DatasetError(
                f"{path}: row {bad + 2} has {len(rows[bad])} cells, the header has {width}; "
                "the file is damaged: rerun `facexpr prepare` (it keeps finished crops)"
            )
        n = len(rows)
        idx = {h: i for i, h in enumerate(header)}

        def text(name: str) -> list[str]:
            if name not in idx:
                return [""] * n
            j = idx[name]
            return [r[j] for r in rows]

        self.files = text("file")
        self.sources = text("source")
        self.identities = text("identity")
        self.expressions = text("expression")
        self.splits = text(SPLIT_COLUMN)
        self.blendshape_names = [h[3:] for h in header if h.startswith("bs_")]
        groups = {
            "aus": list(AU_NAMES),
            "blendshapes": [f"bs_{b}" for b in self.blendshape_names],
            "boxes": list(BOX_COLUMNS),
            "poses": list(POSE_COLUMNS),
        }
        present = [c for names in groups.values() for c in names if c in idx]
        try:
            values = _float_block(rows, [idx[c] for c in present])
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}; the file is damaged: rerun `facexpr prepare`") from exc
        where = {c: j for j, c in enumerate(present)}
        for attr, names in groups.items():
            out = np.full((n, len(names)), np.nan, np.float32)
            for k, c in enumerate(names):
                if c in where:
                    out[:, k] = values[:, where[c]]
            setattr(self, attr, out)
        if n and np.isnan(self.aus).any():
            rows_nan = np.flatnonzero(np.isnan(self.aus).any(axis=1))[:5] + 2
            raise DatasetError(f"{path}: empty Action Unit values on row(s) {', '.join(map(str, rows_nan))}")

    @classmethod
    def _empty_like(cls, other: PreparedDataset) -> PreparedDataset:
        obj = cls.__new__(cls)
        obj.size = other.size
        obj.root = other.root
        obj.blendshape_names = list(other.blendshape_names)
        return obj

    def subset(self, idx: Sequence[int] | NDArray[np.integer[Any]]) -> PreparedDataset:
        """A dataset with only rows ``idx`` (in that order); crops are not copied."""
        ix = np.asarray(idx, dtype=np.int64).reshape(-1)
        if ix.size and (ix.min() < -len(self) or ix.max() >= len(self)):
            raise IndexError(f"subset index out of range for a dataset of {len(self)} rows")
        out = self._empty_like(self)
        ixl = ix.tolist()
        for name in ("files", "sources", "identities", "expressions", "splits"):
            src = getattr(self, name)
            setattr(out, name, [src[i] for i in ixl])
        for name in ("aus", "blendshapes", "boxes", "poses", "_part_index"):
            setattr(out, name, getattr(self, name)[ix].copy())
        out._parts = list(self._parts)
        return out

    @classmethod
    def merge(cls, datasets: Sequence[PreparedDataset | str | os.PathLike[str]]) -> PreparedDataset:
        """Concatenate prepared datasets of one crop size (e.g. lfw + taiwanese + utkface).

        Identities are namespaced as ``<name>/<identity>`` (name = the set's ``dataset.json``
        name, e.g. ``lfw``), because person "01" of one set is not person "01" of another.
        Blendshape columns are the union; a set without one has NaN there.
        """
        parts = [d if isinstance(d, PreparedDataset) else cls(d) for d in datasets]
        if not parts:
            raise DatasetError("merge needs at least one prepared dataset")
        sizes = sorted({p.size for p in parts})
        if len(sizes) > 1:
            listing = ", ".join(f"{p.root} ({p.size} px)" for p in parts)
            raise DatasetError(
                f"cannot merge datasets of different crop sizes: {listing}; prepare them at one size "
                "(`facexpr prepare ... --size N`)"
            )
        if len(parts) == 1:
            return parts[0]
        out = cls._empty_like(parts[0])
        names: list[str] = []
        for p in parts:
            for b in p.blendshape_names:
                if b not in names:
                    names.append(b)
        out.blendshape_names = names
        out.files, out.sources, out.identities, out.expressions, out.splits = [], [], [], [], []
        bs_blocks, part_idx = [], []
        all_parts: list[_Part] = []
        for p in parts:
            offset = len(all_parts)
            all_parts.extend(p._parts)
            out.files += p.files
            out.sources += p.sources
            out.expressions += p.expressions
            out.splits += p.splits
            for ident, pi in zip(p.identities, p._part_index.tolist()):
                if not ident:
                    out.identities.append("")
                else:
                    pname = p._parts[pi].name
                    out.identities.append(ident if ident.startswith(pname + "/") else f"{pname}/{ident}")
            block = np.full((len(p), len(names)), np.nan, np.float32)
            for k, b in enumerate(p.blendshape_names):
                block[:, names.index(b)] = p.blendshapes[:, k]
            bs_blocks.append(block)
            part_idx.append(p._part_index + offset)
        out.aus = np.concatenate([p.aus for p in parts])
        out.blendshapes = np.concatenate(bs_blocks)
        out.boxes = np.concatenate([p.boxes for p in parts])
        out.poses = np.concatenate([p.poses for p in parts])
        out._part_index = np.concatenate(part_idx).astype(np.int32)
        out._parts = all_parts
        return out

    # -- access -------------------------------------------------------------------------------

    @property
    def roots(self) -> list[Path]:
        return [p.root for p in self._parts]

    @property
    def meta(self) -> dict[str, Any]:
        return self._parts[0].meta

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        where = ", ".join(str(r) for r in self.roots)
        return f"PreparedDataset({where}: {len(self)} crops of {self.size} px)"

    def path(self, i: int) -> Path:
        """Absolute path of crop ``i``."""
        return self._parts[int(self._part_index[i])].root / self.files[i]

    def image(self, i: int) -> NDArray[np.uint8]:
        """Crop ``i`` as uint8 (S, S, 3) RGB."""
        from PIL import Image  # local: keeps `import facexpr.data` light for label-only users

        p = self.path(i)
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"{p}: crop cannot be read ({exc}); rerun `facexpr prepare` on this dataset to rewrite it"
            ) from exc
        if arr.shape != (self.size, self.size, 3):
            raise DatasetError(
                f"{p}: crop is {arr.shape[1]}x{arr.shape[0]}, the dataset says {self.size} px; "
                "the folder mixes sizes: prepare into a fresh folder"
            )
        return arr

    def images(self, idx: Sequence[int]) -> NDArray[np.uint8]:
        """Crops ``idx`` stacked as uint8 (B, S, S, 3)."""
        out = np.empty((len(idx), self.size, self.size, 3), np.uint8)
        for k, i in enumerate(idx):
            out[k] = self.image(int(i))
        return out

    def expression_counts(self) -> dict[str, int]:
        """Rows per expression label, most frequent first ('' = unknown)."""
        return dict(Counter(self.expressions).most_common())

    # -- splitting ----------------------------------------------------------------------------

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Identity-disjoint (train_idx, val_idx), deterministic across runs and machines.

        Rows with a publisher's ``split`` value (``train`` / ``test``) keep it. The others are
        grouped by identity (an unknown identity is a group of one row) and the groups are put
        in the order of a stable hash of their name; the validation part is the shortest prefix
        of that order holding at least ``val_fraction`` of those rows. Because the order of a
        group depends only on its own name and ``seed``, adding data moves at most the groups
        near the cut, instead of reshuffling everything. With two or more groups and
        ``val_fraction > 0`` both parts are non-empty.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n = len(self)
        is_val = np.zeros(n, bool)
        given = np.array([s.strip().lower() for s in self.splits], dtype=object) if n else np.zeros(0, object)
        free = np.ones(n, bool)
        for i, s in enumerate(given.tolist()):
            if s in _VAL_SPLITS:
                is_val[i], free[i] = True, False
            elif s in _TRAIN_SPLITS:
                free[i] = False
        groups: dict[str, list[int]] = {}
        for i in np.flatnonzero(free).tolist():
            ident = self.identities[i]
            pname = self._parts[int(self._part_index[i])].name
            key = f"id:{ident}" if ident else f"file:{pname}/{self.files[i]}"
            groups.setdefault(key, []).append(i)
        if len(groups) >= 2 and val_fraction > 0:
            order = sorted(groups, key=lambda k: (_stable_hash(k, seed), k))
            target = val_fraction * int(free.sum())
            taken = 0
            for key in order[:-1]:  # the last group always trains: never all rows in validation
                if taken >= target:
                    break
                is_val[groups[key]] = True
                taken += len(groups[key])
        idx = np.arange(n, dtype=np.int64)
        return idx[~is_val], idx[is_val]
