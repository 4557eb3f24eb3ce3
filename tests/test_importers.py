"""OpenFace CSV (columns by name) and GANimation pickle imports, and the restricted unpickler."""

from __future__ import annotations

import csv
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from facexpr.data.dataset import PreparedDataset, read_csv_table
from facexpr.data.importers import import_ganimation, import_openface, load_au_pickle, read_openface_csv
from facexpr.errors import DatasetError, OutputError


def _rewrite(src: Path, dst: Path, fn) -> None:
    with open(src, newline="") as fh:
        rows = list(csv.reader(fh))
    with open(dst, "w", newline="") as fh:
        csv.writer(fh).writerows(fn(rows))


def test_openface_csv_by_name(misc: Path, tmp_path: Path) -> None:
    path = misc / "OpenFace_Test.csv"
    frames, aus = read_openface_csv(path)
    assert aus.shape == (len(frames), 17) and aus.dtype == np.float32 and len(frames) > 50
    header, rows = read_csv_table(path)
    au01 = header.index("AU01_r")  # the header is " AU01_r" in the file: stripped
    assert frames[0] == rows[0][header.index("frame")].strip()
    assert aus[0, 0] == pytest.approx(float(rows[0][au01]), abs=1e-5)
    assert aus[0, 16] == pytest.approx(float(rows[0][header.index("AU45_r")]), abs=1e-5)

    def shuffle(rows: list[list[str]]) -> list[list[str]]:
        order = list(range(len(rows[0])))
        random.Random(0).shuffle(order)
        return [[r[i] for i in order] for r in rows]

    _rewrite(path, tmp_path / "shuffled.csv", shuffle)
    frames2, aus2 = read_openface_csv(tmp_path / "shuffled.csv")
    assert frames2 == frames and np.array_equal(aus2, aus)

    def fail_frame_3(rows: list[list[str]]) -> list[list[str]]:
        succ = [h.strip() for h in rows[0]].index("success")
        rows[3][succ] = " 0"
        return rows

    _rewrite(path, tmp_path / "fail.csv", fail_frame_3)
    frames3, _ = read_openface_csv(tmp_path / "fail.csv")
    assert len(frames3) == len(frames) - 1 and frames[2] not in frames3

    def drop(rows: list[list[str]]) -> list[list[str]]:
        keep = [i for i, h in enumerate(rows[0]) if h.strip() not in ("AU12_r", "AU45_r")]
        return [[r[i] for i in keep] for r in rows]

    _rewrite(path, tmp_path / "partial.csv", drop)
    with pytest.raises(DatasetError, match=r"AU12_r, AU45_r"):
        read_openface_csv(tmp_path / "partial.csv")


def test_ganimation_import(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "ganimation_sample"
    summary = import_ganimation(root, tmp_path / "gan")
    assert summary.kept == 4 and summary.size == 128
    ds = PreparedDataset(tmp_path / "gan")
    expected = load_au_pickle(root / "aus_openface.pkl")
    assert len(expected) == 4
    # first values of one entry, read off the pickle's opcodes (pickletools.dis)
    np.testing.assert_allclose(expected["N_0000000356_00190"][:5], [2.86, 2.27, 1.45, 1.1, 0.0], atol=1e-6)
    for i in range(len(ds)):
        stem = Path(ds.sources[i]).stem
        np.testing.assert_allclose(ds.aus[i], expected[stem], atol=1e-4)
        assert ds.image(i).shape == (128, 128, 3)
    test_ids = {Path(x).stem for x in (root / "test_ids.csv").read_text().split()}
    train, val = ds.split(0.5)
    assert {Path(ds.sources[i]).stem for i in val} == test_ids
    assert {Path(ds.sources[i]).stem for i in train}.isdisjoint(test_ids)
    assert np.isnan(ds.blendshapes).all()  # not measured: the pickle only has AUs

    resized = import_ganimation(root, tmp_path / "gan64", size=64)
    assert resized.size == 64 and PreparedDataset(tmp_path / "gan64").image(0).shape == (64, 64, 3)
    with pytest.raises(OutputError, match="already holds a dataset"):
        import_ganimation(root, tmp_path / "gan")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "aus_openface.pkl"
    bad.write_bytes(pickle.dumps({"N_1": _Evil(marker)}, protocol=2))
    with pytest.raises(DatasetError, match=r"refusing to load (posix|os|nt)\.system"):
        load_au_pickle(bad)
    assert not marker.exists()

    bad.write_bytes(pickle.dumps({"N_1": eval}, protocol=4))  # any builtin beyond plain types
    with pytest.raises(DatasetError, match="refusing"):
        load_au_pickle(bad)

    good = tmp_path / "good.pkl"
    for protocol in (2, 4, 5):
        good.write_bytes(pickle.dumps({"a": np.arange(17.0), "b.jpg": np.ones(17, np.float32)}, protocol=protocol))
        loaded = load_au_pickle(good)
        assert set(loaded) == {"a", "b"} and loaded["a"][16] == 16.0

    good.write_bytes(pickle.dumps({"a": np.arange(5.0)}, protocol=2))
    with pytest.raises(DatasetError, match="not 17 numbers"):
        load_au_pickle(good)


def test_import_openface_replaces_aus_by_frame(misc: Path, tmp_path: Path) -> None:
    pytest.importorskip("mediapipe")
    from facexpr.data.prepare import prepare

    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    import cv2

    cap = cv2.VideoCapture(str(misc / "single_face.mp4"))
    try:
        for k in range(1, 5):  # OpenFace and ffmpeg number frames from 1
            ok, bgr = cap.read()
            assert ok
            cv2.imwrite(str(frames_dir / f"{k:05d}.png"), bgr)
    finally:
        cap.release()
    prepare(frames_dir, tmp_path / "prep", sizes=(64,), workers=1, progress=False)
    before = PreparedDataset(tmp_path / "prep")
    # OpenFace_Test.csv belongs to neither shared video (docs/au_calibration.md): its face sits at
    # (329, 213), 103 px wide, where MediaPipe finds this video's face at (296, 204), 150 px wide.
    with pytest.raises(DatasetError, match="another video.*--allow-mismatch"):
        import_openface(misc / "OpenFace_Test.csv", tmp_path / "prep", tmp_path / "of")
    assert not (tmp_path / "of").exists()  # refused before anything was written
    summary = import_openface(misc / "OpenFace_Test.csv", tmp_path / "prep", tmp_path / "of", allow_mismatch=True)
    ds = PreparedDataset(tmp_path / "of")
    frames, aus = read_openface_csv(misc / "OpenFace_Test.csv")
    assert summary.kept == len(before) == len(ds) >= 3
    for i in range(len(ds)):
        k = frames.index(str(int(Path(ds.sources[i]).stem)))
        np.testing.assert_allclose(ds.aus[i], aus[k], atol=1e-4)
        assert np.array_equal(ds.blendshapes[i], before.blendshapes[i])
        assert np.array_equal(ds.image(i), before.image(i))
    assert not np.allclose(before.aus, ds.aus)  # the input dataset is untouched
    assert np.array_equal(PreparedDataset(tmp_path / "prep").aus, before.aus)
