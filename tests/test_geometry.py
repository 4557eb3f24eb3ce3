"""The geometry-driven family: rig fit, mesh warp, lips, shading, editor integration, model folders.

Real faces from ../shared/data (skipped with a reason when absent) plus small synthetic cases.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from facexpr.face.warp import face_pose, interpolate_on_mesh, mesh_warp_field, umeyama_3d
from facexpr.imageio import load_image
from facexpr.models.geometry import GeometryModel, band_mask, scaled_delta
from facexpr.pipeline import Editor
from facexpr.pipeline.registry import resolve_model
from facexpr.pipeline.targets import AUTarget, EmotionTarget


@pytest.fixture(scope="module")
def editor():
    with Editor.from_pretrained() as ed:
        yield ed


# -- synthetic -----------------------------------------------------------------------------------


def test_piecewise_linear_interpolation_is_exact_for_linear_fields() -> None:
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(0, 100, (60, 2)), [[0, 0], [100, 0], [0, 100], [100, 100]]])
    values = pts @ np.array([[0.3, -1.0], [2.0, 0.5]]) + np.array([5.0, -3.0])
    field, inside = interpolate_on_mesh(pts, values, (50, 50), origin=(0.0, 0.0), step=2.0)
    ys, xs = np.nonzero(inside)
    expect = np.stack([xs * 2.0, ys * 2.0], 1) @ np.array([[0.3, -1.0], [2.0, 0.5]]) + np.array([5.0, -3.0])
    assert inside.mean() > 0.9
    err = np.abs(field[ys, xs] - expect).max(axis=1)
    # Exact inside triangles; a node rasterised just past a triangle's edge is clamped to that
    # triangle's values (so thin triangles cannot extrapolate): off by less than one node step.
    assert (err < 1e-3).mean() > 0.95
    assert err.max() < 2.0 * np.abs([[0.3, -1.0], [2.0, 0.5]]).sum(axis=0).max()


def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(1)
    src = rng.normal(size=(30, 3))
    a = 0.4
    r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    dst = 2.5 * src @ r.T + np.array([1.0, -2.0, 3.0])
    s, r2, t = umeyama_3d(src, dst)
    assert s == pytest.approx(2.5) and np.allclose(r2, r) and np.allclose(t, [1.0, -2.0, 3.0])


def test_gain_scales_only_increasing_aus_and_bands_are_regional() -> None:
    d = scaled_delta(np.array([1.0, 3.0]), np.array([2.0, 1.0]), 2.0)
    np.testing.assert_allclose(d, [2.0, -2.0])
    bands = band_mask(np.array([0.2, 0.75]))  # a forehead point, a mouth point
    from facexpr.expression import AU_NAMES

    assert bands[AU_NAMES.index("AU01"), 0] == 1 and bands[AU_NAMES.index("AU01"), 1] == 0
    assert bands[AU_NAMES.index("AU12"), 1] == 1 and bands[AU_NAMES.index("AU12"), 0] == 0


# -- the rig on real people ----------------------------------------------------------------------


#: Performers with neutral photos; the last one is held back.
PEOPLE = ("01", "03", "07", "08", "09", "10")


@pytest.fixture(scope="module")
def taiwanese_subset(shared_data: Path, tmp_path_factory) -> Path:
    """Six performers of the Taiwanese set (all their photos, neutral ones included), at 128 px."""
    from facexpr.cli import cli

    rows = list(csv.DictReader((shared_data / "taiwanese" / "manifest.csv").open()))
    keep = [r for r in rows if r["identity"] in PEOPLE]
    tmp = tmp_path_factory.mktemp("tw")
    manifest = tmp / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "identity", "expression"])
        w.writeheader()
        for r in keep:
            w.writerow({"file": r["file"], "identity": r["identity"], "expression": r["expression"]})
    out = tmp / "prepared"
    res = CliRunner().invoke(cli, ["prepare", str(shared_data / "taiwanese"), str(out), "--manifest", str(manifest),
                                   "--size", "128", "--quiet", "--workers", "2"])
    assert res.exit_code == 0, res.output
    return out


def test_rig_fit_reproduces_held_back_people_better_than_no_motion(taiwanese_subset: Path) -> None:
    from facexpr.data.dataset import PreparedDataset
    from facexpr.data.landmarks import dataset_landmarks
    from facexpr.training.geometry import fit_rig, rig_report

    ds = PreparedDataset(taiwanese_subset)
    lm = dataset_landmarks(ds, progress=False)
    assert np.isfinite(lm).all(axis=(1, 2)).mean() > 0.95
    people = np.array(ds.identities)
    train = np.nonzero(people != PEOPLE[-1])[0]
    held = np.nonzero(people == PEOPLE[-1])[0]
    rig, used = fit_rig(ds, lm, train, ridge=30.0)
    assert used["people"] == 5
    report = rig_report(rig, ds, lm, held)
    assert report["people"] == 1 and report["photos"] > 20
    for region in ("all", "mouth", "brows"):
        assert report[region]["rig"] < report[region]["no_motion"], (region, report[region])
    assert report["mouth"]["rig"] < 0.8 * report["mouth"]["no_motion"]
    # The cache makes the second call free and identical.
    np.testing.assert_array_equal(dataset_landmarks(ds, progress=False), lm)


# -- editing real photos -------------------------------------------------------------------------


def test_default_is_the_geometry_family(editor) -> None:
    assert editor.geometry is not None and editor.backend == "geometry"
    assert editor.geometry.shading is not None and editor.geometry.mouth is not None


def test_zero_motion_and_intensity_zero_are_byte_identical(editor, portraits) -> None:
    img = load_image(portraits[0]).rgb
    face = editor.faces(img)[0]
    assert mesh_warp_field(face.landmarks, face.landmarks, img.shape) is None
    out = editor.edit(img, EmotionTarget("happy", 0.0))
    assert np.array_equal(out, img)


def _edit_region(face, shape, pad: float = 0.7) -> np.ndarray:
    h, w = shape[:2]
    x0, y0, x1, y1 = face.box
    px, py = pad * (x1 - x0), pad * (y1 - y0)
    m = np.zeros((h, w), bool)
    m[max(int(y0 - px), 0): int(y1 + py), max(int(x0 - px), 0): int(x1 + px)] = True
    return m


def test_edits_stay_on_the_face_and_keep_detail(editor, portraits) -> None:
    from facexpr.evaluation.metrics import sharpness_ratio

    for path in portraits[:3]:
        img = load_image(path).rgb
        res = editor.edit(img, EmotionTarget("surprised", 1.0), details=True)
        face = editor.faces(img)[0]
        far = ~_edit_region(face, img.shape)
        assert np.array_equal(res.image[far], img[far]), path.name
        changed = (res.image != img).any(-1)
        assert changed.sum() > 2000, f"{path.name}: the edit changed almost nothing"
        hull = np.zeros(img.shape[:2], np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(face.landmarks[:468, :2].astype(np.int32)), 1)
        assert sharpness_ratio(img, res.image, hull > 0) > 0.9, path.name


def _lip_gap(face) -> float:
    lm = face.landmarks
    return float(np.linalg.norm(lm[14, :2] - lm[13, :2]) / np.linalg.norm(lm[291, :2] - lm[61, :2]))


def _teeth_pixels(img: np.ndarray, face) -> int:
    """Bright, unsaturated pixels inside the outer lip contour: teeth."""
    from facexpr.face.warp import OUTER_LIP

    poly = face.landmarks[list(OUTER_LIP), :2].astype(np.int32)
    m = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(m, [poly], 1)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    teeth = (hsv[..., 2] > 180) & (hsv[..., 1] < 35) & (m > 0)  # white; lip gloss is pinker
    return int(teeth.sum())


def test_closing_a_smile_leaves_no_teeth(editor, portraits) -> None:
    faces = [(p, editor.faces(load_image(p).rgb)[0]) for p in portraits[:20]]
    path, face = max(faces, key=lambda pf: _lip_gap(pf[1]))
    img = load_image(path).rgb
    before = _teeth_pixels(img, face)
    assert before > 500, f"{path.name}: expected a smile showing teeth"
    out = editor.edit_faces(img, [face], [AUTarget.parse(["AU25=0", "AU26=0", "AU12=0", "AU06=0"])]).image
    after = _teeth_pixels(out, face)
    assert after < 0.05 * before, (path.name, before, after)


def test_opening_a_closed_mouth_fills_it(editor, portraits) -> None:
    """Lips parted by the rig get a mouth interior from the network, not stretched lip skin."""
    import dataclasses

    from facexpr.face.mouth import inner_lip_polygon

    faces = [(p, editor.faces(load_image(p).rgb)[0]) for p in portraits[:20]]
    path, face = min(faces, key=lambda pf: _lip_gap(pf[1]))
    img = load_image(path).rgb
    res = editor.edit_faces(img, [face], [EmotionTarget("surprised", 1.0)])
    after = editor.faces(res.image)[0]
    assert _lip_gap(after) > _lip_gap(face) + 0.05  # the landmarker sees an open mouth
    inner = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(inner, [inner_lip_polygon(after.landmarks).astype(np.int32)], 1)
    inside = cv2.erode(inner, np.ones((5, 5), np.uint8)) > 0
    warp_only = GeometryModel(editor.geometry.config, editor.geometry.rig, editor.geometry.shading, None)
    plain = Editor(warp_only, dataclasses.replace(editor.info)).edit_faces(img, [face], [EmotionTarget("surprised", 1.0)])
    diff = np.abs(res.image.astype(np.int16) - plain.image.astype(np.int16)).max(axis=2)
    assert diff[inside].mean() > 15  # the network replaced the stretched lips
    sat = cv2.cvtColor(res.image, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
    lips = (cv2.dilate(inner, np.ones((25, 25), np.uint8)) > 0) & ~(inner > 0)
    assert sat[inside].mean() < sat[lips].mean()  # teeth and cavity are less saturated than lips


def test_grey_photo_stays_grey(editor, portraits) -> None:
    grey = cv2.cvtColor(load_image(portraits[2]).rgb, cv2.COLOR_RGB2GRAY)
    out = editor.edit(grey, EmotionTarget("happy", 1.0))
    assert (out != np.repeat(grey[..., None], 3, 2)).any()
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_turned_head_does_not_fold_the_mesh(editor, portraits) -> None:
    """Strong expressions on the most turned portrait flip (almost) no visible mesh triangle."""
    from facexpr.face.depth import _tesselation
    from facexpr.face.aus import aus_from_blendshapes
    from facexpr.expression import emotion_aus
    from facexpr.face.warp import signed_areas
    from facexpr.pipeline.geometry import target_landmarks

    def yaw(face) -> float:
        r = face_pose(face.landmarks).rotation
        return abs(float(np.degrees(np.arctan2(r[0, 2], r[2, 2]))))

    face = max((editor.faces(load_image(p).rgb)[0] for p in portraits[:20]), key=yaw)
    assert yaw(face) > 10, "expected a turned head among the first 20 portraits"
    from facexpr.face.mouth import INNER_LIP

    tri = _tesselation()
    before = signed_areas(face.landmarks, tri)
    visible = np.abs(before) > 0.2 * np.median(np.abs(before))  # not slivers of the far side
    visible &= ~np.isin(tri, INNER_LIP).any(axis=1)  # closing lips collapses these on purpose
    src = aus_from_blendshapes(face.blendshapes, face.landmarks)
    for emotion in ("happy", "surprised", "fearful", "angry", "sad"):
        target = target_landmarks(editor.geometry, face.landmarks, src, emotion_aus(emotion, 1.0, src))
        after = signed_areas(target, tri)
        flipped = visible & (np.sign(after) != np.sign(before))
        assert flipped.sum() <= 3, (emotion, int(flipped.sum()))


def test_model_folder_round_trip(editor, portraits, tmp_path: Path) -> None:
    info = resolve_model(None)
    model = GeometryModel.from_pretrained(info.path)
    saved = model.save_pretrained(tmp_path / "copy", model_card="# test\n")
    again = GeometryModel.from_pretrained(saved)
    np.testing.assert_array_equal(again.rig.basis, model.rig.basis)
    np.testing.assert_array_equal(again.shading.ratios, model.shading.ratios)
    img = load_image(portraits[1]).rgb
    with Editor.from_pretrained(saved) as ed2:
        a = editor.edit(img, EmotionTarget("angry", 0.8))
        b = ed2.edit(img, EmotionTarget("angry", 0.8))
    assert np.array_equal(a, b)


def test_refuses_a_damaged_folder(tmp_path: Path) -> None:
    from facexpr.errors import ConfigError

    info = resolve_model(None)
    model = GeometryModel.from_pretrained(info.path)
    folder = model.save_pretrained(tmp_path / "m")
    (folder / "rig.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="rig.safetensors"):
        GeometryModel.from_pretrained(folder)


def test_overwrite_never_removes_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    from facexpr.errors import OutputError

    model = GeometryModel.from_pretrained(resolve_model(None).path)
    data = tmp_path / "prepared"
    (data / "images").mkdir(parents=True)
    (data / "labels.csv").write_text("file\n")
    with pytest.raises(OutputError, match="Nothing was removed"):
        model.save_pretrained(data, overwrite=True)
    assert (data / "labels.csv").read_text() == "file\n" and (data / "images").is_dir()
    first = model.save_pretrained(tmp_path / "m")
    model.save_pretrained(first, overwrite=True)  # an earlier model folder may be replaced
    assert GeometryModel.from_pretrained(first).rig.basis.shape == (17, 478, 3)

