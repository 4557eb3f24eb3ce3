"""Dense landmarks of a prepared dataset's crops, computed once and cached beside the labels.

``labels.csv`` keeps AUs, blendshapes and pose but not the 478 landmarks (they would triple its
size). Geometry-driven models need them: the expression rig is fitted on landmark motion, the
shading layer warps faces to one geometry, the mouth network crops real open mouths. So they are
re-measured on the aligned crops themselves (MediaPipe on a 256 px crop: ~10 ms) and cached in
``ROOT/landmarks.npz`` keyed by the crop file names, so the cost is paid once per dataset and a
dataset that grew (``prepare`` resumed) only measures its new crops.

Coordinates are crop pixels (x, y, z in the same pixel scale, smaller z = closer to the camera),
the convention of :mod:`facexpr.face.detect` applied to the crop. A crop where MediaPipe finds
no face gets NaN rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

CACHE = "landmarks.npz"
NUM_LANDMARKS = 478


def _load_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            files = [str(f) for f in z["files"]]
            lms = z["landmarks"]
    except (OSError, ValueError, KeyError):
        return {}  # a damaged cache is rebuilt, never trusted
    if lms.shape != (len(files), NUM_LANDMARKS, 3):
        return {}
    return dict(zip(files, lms))


def _save_cache(path: Path, table: dict[str, np.ndarray]) -> None:
    files = sorted(table)
    arr = np.stack([table[f] for f in files]).astype(np.float32) if files else np.zeros((0, NUM_LANDMARKS, 3), np.float32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, files=np.array(files), landmarks=arr)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only dataset folder: work without a cache


def dataset_landmarks(dataset: Any, progress: bool = True) -> NDArray[np.float32]:
    """(N, 478, 3) float32 landmarks of every crop of ``dataset`` (NaN where none was found).

    ``dataset`` is a :class:`~facexpr.data.dataset.PreparedDataset` (merged ones included: each
    folder keeps its own cache).
    """
    from facexpr.face.detect import FaceAnalyzer

    out = np.full((len(dataset), NUM_LANDMARKS, 3), np.nan, np.float32)
    by_root: dict[Path, list[int]] = {}
    for i in range(len(dataset)):
        by_root.setdefault(dataset.path(i).parent.parent, []).append(i)
    for root, rows in by_root.items():
        cache_path = root / CACHE
        table = _load_cache(cache_path)
        missing = [i for i in rows if _key(dataset, i) not in table]
        if missing:
            it: Any = missing
            if progress:
                from tqdm import tqdm

                it = tqdm(missing, desc=f"landmarks {root.name}", unit="crop", dynamic_ncols=True)
            with FaceAnalyzer(max_faces=1, fallback="none", tiles=False) as analyzer:
                for i in it:
                    faces = analyzer.analyze(dataset.image(i))
                    table[_key(dataset, i)] = (faces[0].landmarks.astype(np.float32) if faces
                                               else np.full((NUM_LANDMARKS, 3), np.nan, np.float32))
            _save_cache(cache_path, table)
        for i in rows:
            out[i] = table[_key(dataset, i)]
    return out


def _key(dataset: Any, i: int) -> str:
    return dataset.path(i).name
