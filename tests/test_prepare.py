"""``facexpr prepare`` on real photos: labels, crops, rejects, resuming, refusals.

The photos are read from the shared data (never copied); manifests and odd files are written
to pytest's temporary folder. Skips without the shared data or MediaPipe.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facexpr.data.dataset import PreparedDataset, read_csv_table
from facexpr.data.prepare import crop_name, list_folder, prepare, read_manifest
from facexpr.errors import DatasetError, OutputError
from facexpr.expression import AU_NAMES

N_LFW = 30


@pytest.fixture(scope="module")
def lfw_manifest(tmp_path_factory, shared_data: Path) -> tuple[Path, Path]:
    """(LFW folder, a manifest of 30 of its photos spread over the alphabet)."""
    pytest.importorskip("mediapipe")
    lfw = shared_data / "lfw"
    with open(lfw / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    step = (len(rows) - 1) // N_LFW
    manifest = tmp_path_factory.mktemp("manifest") / "subset.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([rows[0], *rows[1::step][:N_LFW]])
    return lfw, manifest


@pytest.fixture(scope="module")
def lfw_two_sizes(lfw_manifest, tmp_path_factory) -> tuple[Path, dict]:
    """The 30 photos at 64 and 128 px with 2 worker processes (the default code path)."""
    lfw, manifest = lfw_manifest
    out = tmp_path_factory.mktemp("prep") / "lfw"
    summaries = prepare(lfw, out, sizes=(64, 128), manifest=manifest, workers=2, progress=False)
    return out, summaries


def test_labels_crops_and_metadata(lfw_two_sizes, lfw_manifest) -> None:
    out, summaries = lfw_two_sizes
    _, manifest = lfw_manifest
    given = {it.source: it for it in read_manifest(manifest)}
    for size in (64, 128):
        root = out / str(size)
        header, rows = read_csv_table(root / "labels.csv")
        assert header[:4] == ["file", "source", "identity", "expression"]
        assert header[4:21] == list(AU_NAMES)
        assert sum(h.startswith("bs_") for h in header) == 52
        assert header[-7:] == ["box_x0", "box_y0", "box_x1", "box_y1", "yaw", "pitch", "roll"]
        _, rejects = read_csv_table(root / "rejects.csv")
        assert len(rows) + len(rejects) == N_LFW and len(rows) >= 25
        assert all(r[1] for r in rejects)
        ds = PreparedDataset(root)
        for i in range(len(ds)):
            assert ds.identities[i] == given[ds.sources[i]].identity
            assert ds.expressions[i] == given[ds.sources[i]].expression
            with Image.open(ds.path(i)) as im:
                assert im.size == (size, size)
        assert np.all((ds.aus >= 0) & (ds.aus <= 5))
        assert np.isfinite(ds.blendshapes).all() and np.isfinite(ds.poses).all()
        assert np.all(ds.boxes[:, 2] > ds.boxes[:, 0])
        meta = json.loads((root / "dataset.json").read_text())
        assert meta["size"] == size and meta["complete"] and meta["counts"]["kept"] == len(ds)
        assert meta["counts"]["total"] == N_LFW and meta["name"] == "lfw"
        assert (root / "au_distribution.png").stat().st_size > 10_000
        assert summaries[size].kept == len(ds)
        # a crop looks like a face crop: not flat, and the same photo at both sizes
    small, big = PreparedDataset(out / "64"), PreparedDataset(out / "128")
    assert small.files == big.files and small.image(0).std() > 20
    reduced = cv2.resize(big.image(0), (64, 64), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(reduced - small.image(0)).mean() < 12


def test_bad_inputs_are_rejected_with_reasons(tmp_path: Path, misc: Path, shared_data: Path) -> None:
    pytest.importorskip("mediapipe")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "text.jpg").write_text("this is not a photo\n")
    face = np.asarray(Image.open(shared_data / "lfw" / "images" / "Aaron_Eckhart_0001.jpg").convert("RGB"))
    Image.fromarray(cv2.resize(face, (40, 40), interpolation=cv2.INTER_AREA)).save(odd / "tiny_face.png")
    manifest = tmp_path / "odd.csv"
    files = [odd / "empty.jpg", odd / "text.jpg", odd / "tiny_face.png",
             misc / "free-mountain-vector-01.jpg", misc / "multi_face.jpg", misc / "single_face.jpg"]
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["file"], *[[str(f)] for f in files]])
    out = tmp_path / "out"
    prepare(manifest, out, sizes=(128,), workers=1, progress=False)
    _, rejects = read_csv_table(out / "rejects.csv")
    reason = {Path(r[0]).name: (r[1], r[2]) for r in rejects}
    assert reason["empty.jpg"][0] == "unreadable" and "empty" in reason["empty.jpg"][1]
    assert reason["text.jpg"][0] == "unreadable" and "not a supported image" in reason["text.jpg"][1]
    assert reason["free-mountain-vector-01.jpg"][0] == "no face"
    assert reason["multi_face.jpg"][0] == "several faces"
    assert reason["tiny_face.png"][0] == "too small"
    assert "single_face.jpg" not in reason
    assert len(PreparedDataset(out)) == 1


def test_interrupted_run_resumes_without_redoing_work(lfw_two_sizes, lfw_manifest, tmp_path: Path) -> None:
    lfw, manifest = lfw_manifest
    out = tmp_path / "resumed"
    stop_after = 12

    def interrupt(done: int) -> None:
        if done == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(lfw, out, sizes=(64,), manifest=manifest, workers=1, progress=False, flush_every=5,
                on_result=interrupt)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["complete"] is False
    with pytest.raises(DatasetError, match="has not finished"):
        PreparedDataset(out)
    _, rows = read_csv_table(out / "labels.csv")
    _, rejects = read_csv_table(out / "rejects.csv")
    assert len(rows) + len(rejects) == stop_after  # everything finished before Ctrl-C was saved
    first_crops = {r[0]: (out / r[0]).stat().st_mtime_ns for r in rows}

    calls: list[int] = []
    summary = prepare(lfw, out, sizes=(64,), manifest=manifest, workers=1, progress=False,
                      on_result=calls.append)[64]
    assert summary.processed_this_run == N_LFW - stop_after == len(calls)
    assert {f: (out / f).stat().st_mtime_ns for f in first_crops} == first_crops

    # the same rows as the uninterrupted two-worker run (floats to the written precision)
    h1, resumed = read_csv_table(out / "labels.csv")
    h2, straight = read_csv_table(lfw_two_sizes[0] / "64" / "labels.csv")
    assert h1 == h2 and [r[:4] for r in resumed] == [r[:4] for r in straight]
    a = np.array([[float(v) for v in r[4:]] for r in resumed])
    b = np.array([[float(v) for v in r[4:]] for r in straight])
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert read_csv_table(out / "rejects.csv")[1] == read_csv_table(lfw_two_sizes[0] / "64" / "rejects.csv")[1]

    # a third run has nothing to do
    assert prepare(lfw, out, sizes=(64,), manifest=manifest, workers=1, progress=False)[64].processed_this_run == 0


def test_a_crop_without_a_row_is_rewritten(lfw_manifest, tmp_path: Path) -> None:
    lfw, manifest = lfw_manifest
    out = tmp_path / "o"
    prepare(lfw, out, sizes=(32,), manifest=manifest, workers=1, progress=False, limit=2)
    header, rows = read_csv_table(out / "labels.csv")
    (out / rows[1][0]).write_bytes(b"half a jpeg")  # as if killed before its row was saved
    from facexpr.data.dataset import write_csv_atomic

    write_csv_atomic(out / "labels.csv", header, rows[:1])
    prepare(lfw, out, sizes=(32,), manifest=manifest, workers=1, progress=False, limit=2)
    assert PreparedDataset(out).image(1).shape == (32, 32, 3)


def test_refuses_bad_outputs_before_any_work(tmp_path: Path, shared_data: Path) -> None:
    from facexpr.cli import cli

    src = shared_data / "ganimation_sample"
    runner = CliRunner()

    res = runner.invoke(cli, ["prepare", str(tmp_path / "missing"), str(tmp_path / "o")])
    assert res.exit_code != 0 and isinstance(res.exception, DatasetError) and "not found" in str(res.exception)

    res = runner.invoke(cli, ["prepare", str(src), str(src / "prepared")])
    assert res.exit_code != 0 and isinstance(res.exception, OutputError)
    assert "inside the source folder" in str(res.exception)
    assert not (src / "prepared").exists()

    done = tmp_path / "done"
    done.mkdir()
    (done / "dataset.json").write_text(json.dumps({"size": 128, "complete": True, "source": str(src.resolve())}))
    res = runner.invoke(cli, ["prepare", str(src), str(done), "--size", "256"])
    assert res.exit_code != 0 and "of 128 px, not 256 px" in str(res.exception)

    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.csv").write_text("mine\n")
    res = runner.invoke(cli, ["prepare", str(src), str(other)])
    assert res.exit_code != 0 and "did not write" in str(res.exception)
    assert (other / "labels.csv").read_text() == "mine\n"

    res = runner.invoke(cli, ["prepare", str(src), str(tmp_path / "f"), "--size", "8"])
    assert res.exit_code != 0


def test_folder_listing_and_names(tmp_path: Path) -> None:
    (tmp_path / "sub" / ".cache").mkdir(parents=True)
    for rel in ["b.jpg", "sub/a.PNG", "sub/notes.txt", ".hidden.jpg", "sub/.cache/c.jpg", "sub/b.jpg"]:
        (tmp_path / rel).write_bytes(b"x")
    assert [it.source for it in list_folder(tmp_path)] == ["b.jpg", "sub/a.PNG", "sub/b.jpg"]
    a, b = crop_name("b.jpg", "jpg"), crop_name("sub/b.jpg", "jpg")
    assert a != b and a == crop_name("b.jpg", "jpg") and a.startswith("b_") and a.endswith(".jpg")
    assert "/" not in crop_name("we ird/na me!.jpeg", "png")


def test_manifest_columns_by_name(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text(" expression ,age, file ,identity\nHappy,3,x/1.jpg,ann\n,4,x/2.jpg,\nsad,5,x/1.jpg,bob\n")
    items = read_manifest(m)
    assert [(it.source, it.identity, it.expression) for it in items] == [("x/1.jpg", "ann", "happy"), ("x/2.jpg", "", "")]
    assert items[0].path == tmp_path / "x" / "1.jpg"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,identity\na.jpg,1\n")
    with pytest.raises(DatasetError, match="'file' column"):
        read_manifest(bad)


def test_a_folder_with_an_unused_manifest_says_so(tmp_path: Path, shared_data: Path) -> None:
    """A folder given as SRC is prepared as photos without labels even when it holds a
    manifest.csv: the command says so (fitting the rig on such a folder later failed with "no
    person has both a neutral and another photo"), and does not with --manifest."""
    from facexpr.cli import cli

    src = tmp_path / "set"
    src.mkdir()
    photo = sorted((shared_data / "taiwanese" / "images").glob("*.jpg"))[0]
    shutil.copy(photo, src / photo.name)
    (src / "manifest.csv").write_text(f"file,identity,expression\n{photo.name},01,neutral\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["prepare", str(src), str(tmp_path / "a"), "--workers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "manifest.csv is not used" in res.stderr and f"--manifest {src / 'manifest.csv'}" in res.stderr
    res = runner.invoke(cli, ["prepare", str(src), str(tmp_path / "b"), "--workers", "1", "--quiet",
                              "--manifest", str(src / "manifest.csv")])
    assert res.exit_code == 0, res.output
    assert "not used" not in res.stderr
    assert PreparedDataset(tmp_path / "b").identities == ["01"]
