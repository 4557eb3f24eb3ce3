"""Video: reenactment and video editing on the shared talking-face clips, smoothing, safe writing."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from facexpr.errors import NoFaceError
from facexpr.pipeline import Editor, EmotionTarget
from facexpr.pipeline import video as V


@pytest.fixture(scope="module")
def editor():
    with Editor.from_pretrained() as ed:
        yield ed


@pytest.fixture(scope="module")
def portrait(portraits) -> np.ndarray:
    from facexpr.imageio import load_image

    return cv2.resize(load_image(portraits[3]).rgb, (384, 384), interpolation=cv2.INTER_AREA)


def test_one_euro_filter_smooths_rest_and_follows_motion() -> None:
    rng = np.random.default_rng(0)
    f = V.OneEuroFilter(V.LANDMARK_FILTER)
    noisy = 100.0 + rng.normal(0, 1.0, 120)
    out = np.array([f(np.array([x]), k / 30.0)[0] for k, x in enumerate(noisy)])
    assert np.std(np.diff(out[30:])) < 0.3 * np.std(np.diff(noisy[30:]))  # jitter removed at rest
    g = V.OneEuroFilter(V.LANDMARK_FILTER)
    ramp = np.concatenate([np.zeros(10), np.linspace(0, 300, 30), np.full(20, 300.0)])
    follow = np.array([g(np.array([x]), k / 30.0)[0] for k, x in enumerate(ramp)])
    assert abs(follow[-1] - 300.0) < 2.0  # a fast move is followed, and settles


def test_edit_video_keeps_frames_duration_and_audio(editor, misc: Path, tmp_path: Path) -> None:
    src = misc / "single_face.mp4"
    info = V.probe(src)
    out_path = tmp_path / "happy.mp4"
    events: list[str] = []  # the progress bar's: one tick per frame, then "finishing" before the MP4 exists
    report = V.edit_video(editor, src, out_path, EmotionTarget("happy", 1.0),
                          progress=lambda n: events.append(f"frame+{n}"),
                          finishing=lambda: events.append("finished" if out_path.exists() else "finishing"))
    out = V.probe(report.path)
    frames_in = sum(1 for _ in V.read_frames(src))
    frames_out = sum(1 for _ in V.read_frames(report.path))
    assert frames_out == frames_in == report.frames
    assert events == ["frame+1"] * frames_in + ["finishing"]
    assert out.fps == pytest.approx(info.fps, rel=1e-3)
    assert out.duration == pytest.approx(info.duration, abs=0.1)
    assert info.audio and out.audio
    first_in, first_out = next(V.read_frames(src)), next(V.read_frames(report.path))
    assert np.abs(first_in.astype(int) - first_out.astype(int)).mean() > 0.2  # the face was edited


def test_still_driving_video_leaves_the_photo_unchanged(editor, misc: Path, portrait: np.ndarray) -> None:
    still = next(V.read_frames(misc / "single_face.mp4"))
    frames = list(editor.reenact(portrait, [still] * 12, fps=30.0))
    assert len(frames) == 12
    for f in frames:
        assert np.array_equal(f, portrait)


def test_reenactment_follows_the_driving_face(editor, misc: Path, portrait: np.ndarray) -> None:
    driving = islice(V.read_frames(misc / "WolfgangLanger_Pexels.mp4"), 0, 360, 6)  # 60 frames over 15 s
    frames = list(V.reenact_frames(editor, portrait, driving, fps=4.0))
    assert len(frames) == 60
    changed = [float(np.abs(f.astype(int) - portrait.astype(int)).mean()) for f in frames]
    assert changed[0] == 0.0  # relative mode: the first driving frame is the photo's own face
    assert max(changed) > 1.0  # the expression moved the face later on


def test_reenactment_reads_the_photo_once(editor, misc: Path, portraits, monkeypatch) -> None:
    """The photo's eyes are sampled once for the whole video, not once a frame, and an edit
    given the face's look is the edit that samples it itself, byte for byte."""
    from facexpr.face.aus import aus_from_blendshapes
    from facexpr.imageio import load_image
    from facexpr.pipeline import geometry as geo

    for path in portraits[:8]:  # a portrait whose eyes are opened with paint
        photo = load_image(path).rgb
        face = editor.analyzer.analyze(photo, complete=False)[0]
        looks = editor.looks(photo, [face])
        if looks is not None and looks[0].eye_colours is not None:
            break
    else:
        pytest.fail("no portrait among the first 8 has eyes open to painting")
    own = aus_from_blendshapes(face.blendshapes, face.landmarks)
    for target in (own, np.clip(own + np.float32(2.0), 0.0, 5.0)):  # (AU05 raised: the eyes open)
        plain = editor.edit_faces(photo, [face], [target]).image
        assert np.array_equal(editor.edit_faces(photo, [face], [target], looks=looks).image, plain)
    calls = []
    real = geo.face_look
    monkeypatch.setattr(geo, "face_look", lambda *a: calls.append(1) or real(*a))
    driving = islice(V.read_frames(misc / "WolfgangLanger_Pexels.mp4"), 0, 60, 6)
    assert len(list(V.reenact_frames(editor, photo, driving, fps=4.0))) == 10
    assert len(calls) == 1


def test_video_without_a_face_is_an_error_and_writes_nothing(editor, misc: Path, tmp_path: Path) -> None:
    out = tmp_path / "nf.mp4"
    with pytest.raises(NoFaceError, match="no face"):
        V.edit_video(editor, misc / "no_face.mp4", out, EmotionTarget("happy"))
    assert not out.exists() and not list(tmp_path.iterdir())


def test_frames_without_a_face_pass_through(editor, misc: Path) -> None:
    face_frames = list(islice(V.read_frames(misc / "single_face.mp4"), 3))
    empty = list(islice(V.read_frames(misc / "no_face.mp4"), 3))
    empty = [cv2.resize(f, (face_frames[0].shape[1], face_frames[0].shape[0])) for f in empty]
    out = list(V.edit_frames(editor, face_frames + empty, 30.0, EmotionTarget("surprised")))
    for a, b in zip(out[3:], empty):
        assert np.array_equal(a, b)


def test_broken_and_missing_videos_give_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(V.VideoError, match="broken.mp4"):
        V.probe(bad)
    with pytest.raises(V.VideoError, match="not found"):
        V.probe(tmp_path / "missing.mp4")


def test_interrupted_writer_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "partial.mp4"
    with pytest.raises(KeyboardInterrupt):
        with V.VideoWriter(out, (64, 48), 25.0) as w:
            for _ in range(5):
                w.write(np.zeros((48, 64, 3), np.uint8))
            raise KeyboardInterrupt
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_reenact_and_refusals(misc: Path, portraits, tmp_path: Path) -> None:
    from facexpr.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["reenact", str(portraits[3]), "--driving", str(misc / "single_face.mp4"),
                              "-o", str(tmp_path / "r.mp4"), "--max-side", "256"])
    assert res.exit_code == 0, res.output
    assert V.probe(tmp_path / "r.mp4").size == (256, 256)
    res = runner.invoke(cli, ["reenact", str(portraits[3]), "--driving", str(misc / "single_face.mp4"),
                              "-o", str(tmp_path / "p.mp4"), "--pose"])
    assert res.exit_code != 0 and "head pose" in str(res.exception)
    res = runner.invoke(cli, ["reenact", str(portraits[3]), "--driving", str(misc / "single_face.mp4"),
                              "-o", str(tmp_path / "r.mp4")])
    assert res.exit_code != 0 and "--force" in str(res.exception)


def test_small_photo_follows_small_driving_changes(editor, misc: Path, portraits) -> None:
    """Tiny expression changes on a small face: shading maps with nothing above the threshold."""
    from facexpr.imageio import load_image

    small = cv2.resize(load_image(portraits[0]).rgb, (256, 256), interpolation=cv2.INTER_AREA)
    frames = list(editor.reenact(small, V.read_frames(misc / "single_face.mp4"), fps=30.0))
    assert len(frames) == 72 and all(f.shape == small.shape for f in frames)
