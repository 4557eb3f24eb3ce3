"""The prepared-dataset reader: validation, arrays, identity-disjoint split, subset and merge.

These tests write small synthetic prepared folders (random pixels, random labels), so they need
neither the shared face data nor MediaPipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facexpr.data.dataset import (
    IMAGES,
    LABELS,
    META,
    PreparedDataset,
    format_float,
    label_columns,
    write_csv_atomic,
)
from facexpr.errors import DatasetError
from facexpr.expression import AU_NAMES

BS = ("_neutral", "browDownLeft", "jawOpen")


def make_prepared(
    root: Path,
    n: int = 30,
    size: int = 16,
    identities: list[str] | None = None,
    splits: list[str] | None = None,
    name: str = "synth",
    images: bool = True,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    header = label_columns(BS, with_split=splits is not None)
    ids = identities if identities is not None else [f"p{i % 7}" if i % 4 else "" for i in range(n)]
    rows = []
    for i in range(n):
        rel = f"{IMAGES}/img{i:05d}.png"
        if images:
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / rel)
        vals = [format_float(v) for v in rng.random(len(AU_NAMES) + len(BS) + 7) * 5]
        row = [rel, f"src/{i}.jpg", ids[i], ["happy", "neutral", ""][i % 3], *vals]
        if splits is not None:
            row.append(splits[i])
        rows.append(row)
    write_csv_atomic(root / LABELS, header, rows)
    (root / META).write_text(json.dumps({"name": name, "size": size, "complete": True}))
    return root


def test_missing_parts_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="facexpr prepare"):
        PreparedDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"missing labels\.csv, images, dataset\.json.*facexpr prepare"):
        PreparedDataset(tmp_path / "empty")
    root = make_prepared(tmp_path / "ds", n=3)
    (root / META).write_text(json.dumps({"size": 16, "complete": False}))
    with pytest.raises(DatasetError, match="rerun the same `facexpr prepare`"):
        PreparedDataset(root)
    assert len(PreparedDataset(root, allow_incomplete=True)) == 3


def test_damaged_labels_are_reported(tmp_path: Path) -> None:
    root = make_prepared(tmp_path / "ds", n=4)
    text = (root / LABELS).read_text().splitlines()
    (root / LABELS).write_text("\n".join(text[:-1] + [text[-1].rsplit(",", 3)[0]]) + "\n")
    with pytest.raises(DatasetError, match="row 5"):
        PreparedDataset(root)


def test_arrays_images_and_counts(tmp_path: Path) -> None:
    root = make_prepared(tmp_path / "ds", n=12, size=16)
    ds = PreparedDataset(root)
    assert len(ds) == 12 and ds.size == 16 and ds.root == root
    assert ds.aus.shape == (12, 17) and ds.aus.dtype == np.float32
    assert ds.blendshapes.shape == (12, 3) and ds.blendshape_names == list(BS)
    assert ds.boxes.shape == (12, 4) and ds.poses.shape == (12, 3)
    assert ds.files[0] == "images/img00000.png" and ds.sources[0] == "src/0.jpg"
    img = ds.image(3)
    assert img.dtype == np.uint8 and img.shape == (16, 16, 3)
    assert np.array_equal(img, np.asarray(Image.open(root / ds.files[3])))
    assert ds.images([0, 1]).shape == (2, 16, 16, 3)
    assert ds.expression_counts() == {"happy": 4, "neutral": 4, "": 4}


def test_split_is_identity_disjoint_and_deterministic(tmp_path: Path) -> None:
    ids = [f"person{i % 40}" for i in range(300)] + [""] * 100
    ds = PreparedDataset(make_prepared(tmp_path / "ds", n=400, identities=ids, images=False))
    train, val = ds.split(0.1, seed=0)
    assert len(train) + len(val) == 400 and not set(train) & set(val)
    assert 0.08 * 400 <= len(val) <= 0.2 * 400
    tr_ids = {ds.identities[i] for i in train if ds.identities[i]}
    va_ids = {ds.identities[i] for i in val if ds.identities[i]}
    assert not tr_ids & va_ids
    again = PreparedDataset(tmp_path / "ds").split(0.1, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = ds.split(0.1, seed=1)[1]
    assert not np.array_equal(other, val)
    assert len(ds.split(0.0)[1]) == 0


def test_split_moves_few_groups_when_data_is_added(tmp_path: Path) -> None:
    ids = [f"person{i % 200}" for i in range(1000)]
    small = PreparedDataset(make_prepared(tmp_path / "a", n=1000, identities=ids, images=False))
    more = ids + [f"newcomer{i % 100}" for i in range(500)]
    big = PreparedDataset(make_prepared(tmp_path / "b", n=1500, identities=more, images=False))
    va_small = {small.identities[i] for i in small.split(0.1)[1]}
    va_big = {big.identities[i] for i in big.split(0.1)[1] if big.identities[i].startswith("person")}
    assert len(va_small & va_big) >= 0.6 * len(va_small)


def test_split_with_few_identities_keeps_both_parts(tmp_path: Path) -> None:
    ds = PreparedDataset(make_prepared(tmp_path / "ds", n=20, identities=["a"] * 10 + ["b"] * 10, images=False))
    train, val = ds.split(0.1)
    assert len(train) == 10 and len(val) == 10
    one = PreparedDataset(make_prepared(tmp_path / "one", n=5, identities=["a"] * 5, images=False))
    assert len(one.split(0.5)[0]) == 5


def test_split_honours_a_published_split(tmp_path: Path) -> None:
    splits = ["train", "test", "train", "", "test", "train"]
    ds = PreparedDataset(make_prepared(tmp_path / "ds", n=6, splits=splits, identities=[""] * 6, images=False))
    train, val = ds.split(0.1)
    assert {1, 4} <= set(val.tolist()) and {0, 2, 5} <= set(train.tolist())
    assert set(train.tolist()) | set(val.tolist()) == set(range(6))


def test_subset_and_merge(tmp_path: Path) -> None:
    a = PreparedDataset(make_prepared(tmp_path / "a", n=6, name="lfw", seed=1))
    b = PreparedDataset(make_prepared(tmp_path / "b", n=4, name="tw", identities=["p1"] * 4, seed=2))
    sub = a.subset([5, 0])
    assert sub.files == [a.files[5], a.files[0]] and np.array_equal(sub.aus, a.aus[[5, 0]])
    assert np.array_equal(sub.image(0), a.image(5))
    m = PreparedDataset.merge([a, b])
    assert len(m) == 10 and m.roots == [a.root, b.root]
    assert np.array_equal(m.image(7), b.image(1)) and np.array_equal(m.image(2), a.image(2))
    assert m.identities[6:] == ["tw/p1"] * 4 and "lfw/p1" in m.identities
    train, val = m.split(0.3)
    assert not {m.identities[i] for i in train if m.identities[i]} & {m.identities[i] for i in val if m.identities[i]}
    mm = PreparedDataset.merge([m.subset(range(5)), m.subset(range(5, 10))])
    assert mm.identities == m.identities and np.array_equal(mm.image(9), b.image(3))
    c = PreparedDataset(make_prepared(tmp_path / "c", n=2, size=32))
    with pytest.raises(DatasetError, match="different crop sizes"):
        PreparedDataset.merge([a, c])


def write_big_dataset(root: Path, n: int = 15000) -> np.ndarray:
    """A prepared dataset of ``n`` label rows (no images) under ``root``; returns its label values."""
    (root / IMAGES).mkdir(parents=True)
    header = label_columns([f"b{i}" for i in range(52)])
    vals = np.random.default_rng(0).random((n, len(header) - 4)) * 5
    rows = [
        [f"images/{i}.jpg", f"photos/{i}.jpg", f"id{i % 900}", "happy", *(repr(round(float(v), 4)) for v in vals[i])]
        for i in range(n)
    ]
    write_csv_atomic(root / LABELS, header, rows)
    (root / META).write_text(json.dumps({"size": 128, "complete": True}))
    return vals


def test_reads_15k_rows(tmp_path: Path) -> None:
    """15 000 label rows come back whole (how fast: ``benchmarks/bench_dataset.py``)."""
    vals = write_big_dataset(tmp_path / "big")
    ds = PreparedDataset(tmp_path / "big")
    assert len(ds) == 15000 and ds.blendshapes.shape == (15000, 52)
    np.testing.assert_allclose(ds.aus[123], vals[123, :17], atol=1e-4)
