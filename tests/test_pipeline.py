"""The editing pipeline on real photos: sizes kept, pixels outside the edit untouched, every face,
no face, RGBA and greyscale inputs, batch behaviour, ONNX parity."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from facexpr.errors import ConfigError, NoFaceError
from facexpr.imageio import load_image
from facexpr.pipeline.batch import EditorSpec, plan_jobs, run_batch
from facexpr.pipeline.editor import Editor
from facexpr.pipeline.registry import resolve_model
from facexpr.pipeline.targets import AUTarget, EmotionTarget


@pytest.fixture(scope="module")
def editor():
    with Editor.from_pretrained(backend="torch") as ed:
        yield ed


#: The shipped crop generator (a GAN): the ONNX path and the attention/colour compositing.
GAN = "ganimation-adain-cpu128"


@pytest.fixture(scope="module")
def gan_editor():
    with Editor.from_pretrained(GAN, backend="torch") as ed:
        yield ed


@pytest.fixture(scope="module")
def onnx_editor():
    info = resolve_model(GAN)
    if not (info.path / "generator.onnx").is_file():
        pytest.fail(f"{GAN} ships without generator.onnx")
    with Editor.from_pretrained(GAN, backend="onnxruntime") as ed:
        yield ed


def _outside(result, margin: float = 0.05) -> np.ndarray:
    """Pixels no face's edit touches (use the boxes grown by ``margin`` of the face size)."""
    h, w = result.image.shape[:2]
    keep = np.ones((h, w), bool)
    for f in result.faces:
        x0, y0, x1, y1 = f.box
        pad = margin * max(x1 - x0, y1 - y0) + 2
        keep[max(int(y0 - pad), 0): int(y1 + pad), max(int(x0 - pad), 0): int(x1 + pad)] = False
    return keep


@pytest.mark.parametrize("model, margin", [(None, 0.15), (GAN, 0.05)])
def test_portraits_keep_size_and_background(model, margin, portraits):
    """The GAN's paste mask stays inside the landmark hull; the geometry warp may also move the
    skin just outside the face outline (a dropping chin pushes into the neck), never further."""
    with Editor.from_pretrained(model) as editor:
        for path in portraits[:4]:
            _keeps_background(editor, path, margin)


def _keeps_background(editor, path, margin):
        img = load_image(path).rgb
        result = editor.edit(img, EmotionTarget("happy", 1.0), details=True)
        assert result.image.shape == img.shape == (1024, 1024, 3)
        assert len(result.faces) == 1
        keep = _outside(result, margin)
        assert keep.any()
        assert np.array_equal(result.image[keep], img[keep]), path.name
        # Pixels the paste mask leaves at 0 are byte-identical even inside the face box.
        changed = (result.image != img).any(-1)
        assert changed.sum() > 500, f"{path.name}: the edit changed almost nothing"
        assert changed.mean() < 0.5


def test_every_face_in_group_photo(editor, misc):
    img = load_image(misc / "multi_face.jpg").rgb
    result = editor.edit(img, AUTarget.parse(["AU12=4", "AU6=3"]), faces="all", details=True)
    assert len(result.faces) == 5
    for f in result.faces:
        x0, y0, x1, y1 = (int(v) for v in f.box)
        assert (result.image[y0:y1, x0:x1] != img[y0:y1, x0:x1]).any(), f"face {f.index} unchanged"
    only = editor.edit(img, EmotionTarget("sad"), faces="largest", details=True)
    assert [f.index for f in only.faces] == [0]


def test_no_face_raises(editor, misc):
    with pytest.raises(NoFaceError):
        editor.edit(load_image(misc / "free-mountain-vector-01.jpg").rgb, EmotionTarget("happy"))


def test_rgba_and_grey_inputs(editor, misc):
    rgba = Image.open(misc / "Image_with_alpha.png")
    out = editor.edit(rgba, EmotionTarget("surprised", 0.8))
    assert out.size == rgba.size and out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(rgba.convert("RGBA"))[..., 3])
    # A greyscale photo comes in as RGB with three equal channels, and the edit keeps its size.
    grey = load_image(misc / "BWPictureHuman.jpg")
    assert grey.rgb.shape[2] == 3 and np.array_equal(grey.rgb[..., 0], grey.rgb[..., 2])
    grey_portrait = np.asarray(Image.open(sorted((misc.parent / "portraits_1024").glob("*"))[2]).convert("L"))
    res = editor.edit(grey_portrait, EmotionTarget("happy"), details=True)
    assert res.image.shape == grey_portrait.shape + (3,) and len(res.faces) == 1


def test_intensity_zero_is_nearly_identity(editor, portraits):
    img = load_image(portraits[0]).rgb
    res = editor.edit(img, EmotionTarget("happy", 0.0), details=True)
    np.testing.assert_allclose(res.faces[0].target_aus, res.faces[0].source_aus, atol=1e-5)


def test_bad_face_index(editor, portraits):
    with pytest.raises(ConfigError, match="does not exist"):
        editor.edit(load_image(portraits[0]).rgb, EmotionTarget("happy"), faces="3")


def test_onnx_matches_torch(gan_editor, onnx_editor, portraits):
    from facexpr.face.align import align_face

    img = load_image(portraits[1]).rgb
    face = gan_editor.faces(img)[0]
    crop = align_face(img, face.landmarks, gan_editor.image_size).crop[None]
    aus = np.linspace(0, 5, 17, dtype=np.float32)[None]
    a, b = gan_editor.runner(crop, aus), onnx_editor.runner(crop, aus)
    assert set(a) == set(b)
    for k in a:
        assert np.abs(a[k] - b[k]).max() < 1e-3, k


def test_batch_mirrors_tree_and_never_overwrites(editor, misc, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.open(misc / "single_face.jpg").save(src / "sub" / "a.jpg")
    Image.open(misc / "free-mountain-vector-01.jpg").save(src / "landscape.jpg")
    out = tmp_path / "out"
    jobs = plan_jobs([src], out)
    report = run_batch(editor, jobs, EmotionTarget("happy"), compare=True)
    assert (out / "sub" / "a.jpg").is_file() and (out / "sub" / "a_compare.jpg").is_file()
    assert [p.name for p, _ in report.failed] == ["landscape.jpg"]
    assert not (out / "landscape.jpg").exists()
    before = (out / "sub" / "a.jpg").read_bytes()
    again = run_batch(editor, plan_jobs([src], out), EmotionTarget("sad"))
    assert len(again.skipped) == 1 and (out / "sub" / "a.jpg").read_bytes() == before
    with pytest.raises(ConfigError, match="input folder"):
        plan_jobs([src], src)
    with pytest.raises(ConfigError, match="input folder"):
        plan_jobs([src], src / "edited")


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_pooled_batch_writes_what_the_serial_batch_writes(kind, portraits, misc, tmp_path):
    """A pool of 2 workers (each with its own editor) writes the same bytes as one editor editing
    the photos in turn, and reports a faceless and an unreadable photo among them as the serial
    run does while the others are written."""
    src = tmp_path / "in"
    src.mkdir()
    for p in portraits[:4]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "b_mountain.jpg").write_bytes((misc / "free-mountain-vector-01.jpg").read_bytes())
    (src / "c_broken.jpg").write_bytes(b"not a photo")
    target = EmotionTarget("happy", 0.8)
    reports, outputs = [], []
    for workers, out in ((1, tmp_path / "serial"), (2, tmp_path / "pool")):
        jobs = plan_jobs([src], out)
        with Editor.from_pretrained() as ed:
            reports.append(run_batch(ed, jobs, target, workers=workers, spec=EditorSpec(), kind=kind))
        outputs.append({j.output.name: j.output.read_bytes() for j in jobs if j.output.exists()})
    serial, pooled = reports
    assert pooled.workers == 2 and pooled.photos == 6
    assert sorted(outputs[1]) == sorted(p.name for p in portraits[:4])
    assert outputs[1] == outputs[0]
    assert [p.name for p in pooled.edited] == [p.name for p in serial.edited]
    assert pooled.failed == serial.failed and [p.name for p, _ in pooled.failed] == ["b_mountain.jpg", "c_broken.jpg"]
    assert "no face" in pooled.failed[0][1]


def test_colour_cast_ignores_local_changes():
    from facexpr.pipeline.editor import colour_cast

    rng = np.random.default_rng(0)
    source = rng.integers(60, 200, (32, 32, 3)).astype(np.uint8)
    fill = source.astype(np.float32) + np.array([12.0, -6.0, 3.0], np.float32)
    fill[:6] = 250.0  # a local change (teeth) over a minority of the painted pixels
    attention = np.zeros((32, 32), np.float32)
    mask = np.ones((32, 32), np.float32)
    np.testing.assert_allclose(colour_cast(fill, source, attention, mask), [12, -6, 3], atol=1e-4)
    attention[:] = 1.0  # nothing painted: no correction
    assert not colour_cast(fill, source, attention, mask).any()


def test_geometry_records_show_each_face_before_and_after_its_edit(editor, misc):
    """The geometry family's per-face records are computed on first access, from copies taken
    at edit time: the same crops as aligning the photo before and after that face's edit, even
    when the caller changes the photo afterwards."""
    from facexpr.face.align import align_face

    img = load_image(misc / "multi_face.jpg").rgb
    faces = editor.faces(img)[:2]
    assert len(faces) == 2
    work = img.copy()
    res = editor.edit_faces(work, faces, [EmotionTarget("surprised", 1.0)] * 2)
    first_only = editor.edit_faces(img, faces[:1], [EmotionTarget("surprised", 1.0)]).image
    work[...] = 0  # the records must not read the caller's array (or the result) later
    res.image[...] = 0
    before = [img, first_only]
    after = [first_only, None]
    for k, rec in enumerate(res.faces):
        want = align_face(before[k], faces[k].landmarks, editor.RECORD_SIZE)
        assert np.array_equal(rec.crop, want.crop)
        assert np.array_equal(rec.matrix, want.matrix)
        if after[k] is not None:
            assert np.array_equal(rec.result, align_face(after[k], faces[k].landmarks, editor.RECORD_SIZE).crop)
        assert rec.mask.shape == (editor.RECORD_SIZE,) * 2 and rec.mask.max() > 0.5
        assert np.array_equal(rec.attention, 1.0 - rec.mask)
        assert not np.array_equal(rec.crop, rec.result)


_NO_TORCH_SCRIPT = """
import sys
import facexpr.pipeline
from facexpr.cli import main
from facexpr.imageio import load_image
from facexpr.pipeline import Editor, EmotionTarget

photo, out = sys.argv[1], sys.argv[2]
with Editor.from_pretrained() as editor:
    result = editor.edit_array(load_image(photo).rgb, EmotionTarget("happy", 1.0))
assert result.faces, "no face was edited"
main(["edit", photo, "-o", out, "--emotion", "happy"])
print("imported:", ",".join(m for m in ("torch", "gradio", "dlib", "matplotlib", "scipy") if m in sys.modules) or "none")
"""


def test_default_model_edits_without_torch(portraits, tmp_path):
    """The geometry family (the default) runs on numpy/OpenCV/MediaPipe: importing the pipeline and
    editing a photo, through the Python API and through `facexpr edit`, imports neither torch nor
    gradio nor dlib (torch alone costs seconds of start-up), nor the matplotlib MediaPipe's package
    imports for its drawing helpers, nor SciPy."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _NO_TORCH_SCRIPT, str(portraits[0]), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / portraits[0].name).is_file()
    assert proc.stdout.strip().splitlines()[-1] == "imported: none", proc.stdout
