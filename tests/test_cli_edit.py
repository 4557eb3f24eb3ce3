"""``facexpr edit`` / ``animate`` / ``models`` / ``export-onnx`` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "facexpr.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_bad_targets_fail_before_work(tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(photo)
    r = run("edit", str(photo), "-o", str(tmp_path / "o"), "--emotion", "joyful")
    assert r.returncode != 0 and "unknown emotion 'joyful'" in r.stderr and "happy" in r.stderr
    r = run("edit", str(photo), "-o", str(tmp_path / "o"), "--au", "AU99=1")
    assert r.returncode != 0 and "AU12" in r.stderr
    r = run("edit", str(photo), "-o", str(tmp_path / "o"), "--emotion", "sad", "--intensity", "1.5")
    assert r.returncode != 0 and "between 0 and 1" in r.stderr
    r = run("edit", str(photo), "-o", str(tmp_path / "o"), "--emotion", "sad", "--au", "AU12=1")
    assert r.returncode != 0 and "exactly one target" in r.stderr
    r = run("edit", str(tmp_path), "-o", str(tmp_path), "--emotion", "sad")
    assert r.returncode != 0 and "input folder" in r.stderr
    assert not (tmp_path / "o").exists()


def test_edit_batch_with_a_faceless_photo(misc, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "face.jpg").write_bytes((misc / "single_face.jpg").read_bytes())
    (src / "mountain.jpg").write_bytes((misc / "free-mountain-vector-01.jpg").read_bytes())
    (src / "broken.jpg").write_bytes(b"")
    out = tmp_path / "out"
    r = run("edit", str(src), "-o", str(out), "--emotion", "happy", "--format", "png", "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert "1 edited, 0 skipped, 2 failed" in r.stdout
    assert "3 photos in " in r.stdout and "photos/s (2 workers)" in r.stdout
    assert "mountain.jpg" in r.stderr and "no face" in r.stderr
    assert "broken.jpg" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["face.png"]
    before = np.asarray(Image.open(src / "face.jpg").convert("RGB"))
    after = np.asarray(Image.open(out / "face.png"))
    assert after.shape == before.shape and (after != before).any()
    r = run("edit", str(src / "face.jpg"), "-o", str(out / "face.png"), "--emotion", "sad")
    assert "skipped" in r.stderr and r.returncode == 0


def test_animate_gif(misc, tmp_path):
    out = tmp_path / "a.gif"
    r = run("animate", str(misc / "single_face.jpg"), "-o", str(out), "--emotion", "surprised", "--frames", "4")
    assert r.returncode == 0, r.stderr
    gif = Image.open(out)
    assert gif.n_frames == 4


def test_models_lists_default():
    r = run("models", "--no-card")
    assert r.returncode == 0 and "(default)" in r.stdout
    assert "judge" not in r.stdout


def test_python_dash_m_facexpr_is_the_command():
    r = subprocess.run([sys.executable, "-m", "facexpr", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "edit" in r.stdout and "analyze" in r.stdout
