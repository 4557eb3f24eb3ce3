"""``evaluate``, ``compare`` and ``train-classifier`` end to end on tiny datasets.

A tiny in-test generator implements the generator interface (``G(image, aus/5)`` ->
``GeneratorOutput``), so these tests do not depend on any trained model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from facexpr.errors import ConfigError
from facexpr.expression import AU_NAMES
from facexpr.evaluation import evaluate as E
from facexpr.evaluation.judge import ExpressionJudge
from facexpr.models.base import GeneratorOutput


class TinyGenerator(nn.Module):
    """Attention/colour generator with fixed random weights: output depends on image and AUs."""

    family = "tiny-test"

    def __init__(self, image_size: int = 48) -> None:
        super().__init__()
        self.config = type("TinyConfig", (), {"image_size": image_size})()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3 + len(AU_NAMES), 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.1)
            self.conv.bias.zero_()

    def forward(self, image: torch.Tensor, cond: torch.Tensor) -> GeneratorOutput:
        maps = cond[:, :, None, None].expand(-1, -1, *image.shape[-2:])
        y = self.conv(torch.cat([image, maps], 1))
        attention = torch.sigmoid(y[:, :1] + 1.0)
        colour = torch.tanh(y[:, 1:])
        return GeneratorOutput(result=attention * image + (1 - attention) * colour, attention=attention, colour=colour)


def _write_dataset(root: Path, images: list[np.ndarray], identities: list[str], expressions: list[str],
                   aus: np.ndarray | None = None) -> Path:
    """A minimal prepared-dataset folder (the columns the reader requires)."""
    (root / "images").mkdir(parents=True)
    size = images[0].shape[0]
    rng = np.random.default_rng(0)
    aus = rng.uniform(0, 2, (len(images), len(AU_NAMES))) if aus is None else aus
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "source", "identity", "expression", *AU_NAMES])
        for k, (img, ident, expr) in enumerate(zip(images, identities, expressions)):
            name = f"images/{k:03d}.png"
            Image.fromarray(img).save(root / name)
            w.writerow([name, f"src/{k}.jpg", ident, expr, *[f"{v:.3f}" for v in aus[k]]])
    (root / "dataset.json").write_text(json.dumps({"format": 1, "name": root.name, "size": size, "complete": True}))
    return root


def _smooth_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR)))
    return out


@pytest.fixture()
def synthetic(tmp_path: Path):
    from facexpr.data.dataset import PreparedDataset

    emotions = ["happy", "sad", "angry", "neutral"]
    ids = [f"p{k // 2}" for k in range(16)]
    exprs = [emotions[k % 4] for k in range(16)]
    root = _write_dataset(tmp_path / "ds", _smooth_images(16, 48), ids, exprs)
    return PreparedDataset(root)


FAST = ("aus", "identity", "fid")


def test_evaluate_writes_everything_and_is_deterministic(synthetic, tmp_path: Path) -> None:
    cfg = E.EvalConfig(limit=3, skip=FAST, val_fraction=0.3, sample_faces=2)
    m1 = E.evaluate(TinyGenerator(), synthetic, tmp_path / "a", cfg, progress=False)
    m2 = E.evaluate(TinyGenerator(), synthetic, tmp_path / "b", cfg, progress=False)
    for f in ("metrics.json", "report.md", "samples.csv", "samples.png", "identity_distance.png",
              "per_emotion.png", "au_error.png"):
        assert (tmp_path / "a" / f).is_file(), f
    assert m1["counts"] == {"faces": 3, "targets_per_face": 7, "edits": 21}
    assert m1["judge"]["name"] == "fer2013-mini-xception"
    assert m1["expression"]["generation_rate"]["count"] == 21
    assert 0 < m1["cycle"]["psnr"]["value"] < 60 and m1["cycle"]["psnr"]["count"] == 21
    for a, b in ((m1, m2),):
        a, b = dict(a), dict(b)
        a.pop("speed"), b.pop("speed")
        a["dataset"].pop("root"), b["dataset"].pop("root")
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # faces of the validation split only, spread over identities
    _, val = synthetic.split(0.3, 0)
    evaluated = {r["file"] for r in csv.DictReader((tmp_path / "a" / "samples.csv").open())}
    assert evaluated <= {synthetic.files[i] for i in val}
    assert len({synthetic.identities[synthetic.files.index(f)] for f in evaluated}) == min(3, len({synthetic.identities[i] for i in val}))
    text = (tmp_path / "a" / "report.md").read_text()
    assert "generation rate" in text and "fer2013-mini-xception" in text
    assert Image.open(tmp_path / "a" / "samples.png").size == (8 * 48, 18 + 2 * 48)


def test_targets_specs_and_dataset(synthetic) -> None:
    judge = ExpressionJudge.from_pretrained("fer")
    faces = [0, 2, 4]
    t = E.make_targets("AU12=3, AU06+=1", synthetic, faces, judge)
    assert len(t) == 3 and len(t[0]) == 1
    assert t[0][0].aus[AU_NAMES.index("AU12")] == 3.0
    assert t[0][0].aus[AU_NAMES.index("AU06")] == pytest.approx(min(5.0, synthetic.aus[0][AU_NAMES.index("AU06")] + 1))
    assert t[0][0].judge_class == -1
    d = E.make_targets("dataset", synthetic, faces, judge, per_face=2)
    assert all(len(row) == 2 for row in d)
    assert all(tt.judge_class == judge.class_index(tt.emotion) for row in d for tt in row)
    e = E.make_targets("emotions", synthetic, faces, judge, intensity=0.0)
    assert np.allclose(e[1][0].aus, synthetic.aus[2])  # intensity 0 keeps the face's own AUs
    with pytest.raises(Exception):
        E.make_targets("AU99=1", synthetic, faces, judge)


def test_reference_targets_show_another_person_with_the_emotion(synthetic) -> None:
    """A model copying a reference's look is asked each emotion through a photo of someone else
    labelled with it; an emotion some face has no such photo for is dropped for every face."""
    from facexpr.models.base import REFERENCE_CONDITION
    from facexpr.pipeline.targets import ReferenceTarget

    judge = ExpressionJudge.from_pretrained("fer")
    faces, pool = [0, 2, 5], list(range(16))  # persons p0, p1, p2; four emotions in the data
    t = E.assign_references(E.make_targets("emotions", synthetic, faces, judge), synthetic, faces, pool)
    assert [x.emotion for x in t[0]] == ["angry", "happy", "sad", "neutral"]  # the dataset has no other emotion
    for i, row in zip(faces, t):
        for x in row:
            assert synthetic.expressions[x.reference] == x.emotion
            assert synthetic.identities[x.reference] != synthetic.identities[i]
            assert np.array_equal(x.aus, synthetic.aus[x.reference])  # scored against what it was shown
    # in rows 0-5 only p1 (face 2) shows angry and neutral: faces 0 and 5 could borrow them, face 2
    # cannot, so both are dropped for every face
    few = E.assign_references(E.make_targets("emotions", synthetic, faces, judge), synthetic, faces,
                              [0, 1, 2, 3, 4, 5])
    assert {x.emotion for r in few for x in r} == {"happy", "sad"}
    assert all(len(r) == 2 for r in few)
    again = E.assign_references(E.make_targets("emotions", synthetic, faces, judge), synthetic, faces, pool)
    assert [[x.reference for x in r] for r in again] == [[x.reference for x in r] for r in t]  # seeded
    built = t[0][0].request(REFERENCE_CONDITION, lambda row: ReferenceTarget(synthetic.aus[row], str(row)))
    assert isinstance(built, ReferenceTarget) and built.label == str(t[0][0].reference)
    d = E.make_targets("dataset", synthetic, faces, judge, per_face=2, pool=pool, other_people=True)
    assert all(x.reference >= 0 and np.array_equal(x.aus, synthetic.aus[x.reference]) for r in d for x in r)
    assert all(synthetic.identities[x.reference] != synthetic.identities[i] for i, r in zip(faces, d) for x in r)
    with pytest.raises(ConfigError, match="no reference photo"):
        E.make_targets("AU12=3", synthetic, faces, judge)[0][0].request(REFERENCE_CONDITION, lambda row: None)
    with pytest.raises(ConfigError, match="needs labelled photos of at least two people"):
        E.assign_references(E.make_targets("emotions", synthetic, [0], judge), synthetic, [0], [0, 1])


def test_no_edit_column_reads_each_row_against_its_own_targets() -> None:
    """A model asked for two expressions is compared with what the unedited faces score on those
    two (not with the seven-target floor); rows of other faces or judges get no floor."""
    from facexpr.evaluation.report import compare_rows, no_edit_rate

    def metrics(family: str, rates: dict[str, tuple[float, int]], root: str = "tw", judge: str = "fer") -> dict:
        per = {c: {"generation_rate": {"value": r, "count": n}} for c, (r, n) in rates.items()}
        total = sum(n for _, n in rates.values())
        return {"model": {"name": family, "family": family, "condition": "aus"},
                "dataset": {"root": root}, "judge": {"name": judge},
                "config": {"targets": "emotions", "limit": 20, "seed": 0, "val_fraction": 0.1},
                "expression": {"per_emotion": per, "generation_rate": {
                    "value": sum(r * n for r, n in rates.values()) / total, "count": total}}}

    base = metrics("no-edit", {"happy": (0.3, 20), "neutral": (0.45, 20), "sad": (0.0, 20)})
    two = metrics("cyclegan", {"happy": (0.6, 20), "neutral": (0.6, 20)})
    assert no_edit_rate(base, [base]) == pytest.approx(0.25)
    assert no_edit_rate(two, [base]) == pytest.approx(0.375)
    assert no_edit_rate(two, []) is None
    assert no_edit_rate(metrics("x", {"happy": (1.0, 20)}, root="lfw"), [base]) is None
    assert no_edit_rate(metrics("x", {"happy": (1.0, 20)}, judge="own"), [base]) is None
    base_lfw = metrics("no-edit", {"happy": (0.5, 10), "neutral": (0.1, 10)}, root="lfw")
    on_lfw = metrics("x", {"happy": (1.0, 10)}, root="lfw")
    assert no_edit_rate(on_lfw, [base, base_lfw]) == pytest.approx(0.5)  # each row finds its own floor
    rows, notes = compare_rows([base, two, base_lfw, on_lfw])
    assert [r[5] for r in rows] == ["25.0", "37.5", "30.0", "50.0"]
    assert compare_rows([two])[0][0][5] == "—" and "evaluate without --model" in " ".join(compare_rows([two])[1])


def test_fid_with_supplied_weights(synthetic, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from facexpr.evaluation.fid import FIDInceptionV3

    torch.manual_seed(0)
    w = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in FIDInceptionV3().state_dict().items()}, str(w))
    torch.manual_seed(0)
    cfg = E.EvalConfig(limit=2, targets="AU12=3", skip=("aus", "identity", "cycle", "paired"), val_fraction=0.3,
                       kid_subsets=5)
    m = E.evaluate(TinyGenerator(), synthetic, tmp_path / "f", cfg, fid_weights=w, progress=False)
    fid = m["realism"]["fid"]
    assert fid["name"].startswith("FID (Inception-v3") and fid["fid"] >= 0 and fid["n_fake"] == 2
    assert m["expression"]["generation_rate"]["count"] == 0  # AU targets have no judge class


def test_cli_evaluate_compare_and_classifier(synthetic, tmp_path: Path) -> None:
    from facexpr.cli import cli

    runner = CliRunner()
    ds = str(synthetic.root)
    r = runner.invoke(cli, ["train-classifier", ds, "-o", str(tmp_path / "cls"), "--epochs", "1", "--init", "scratch",
                            "--width", "4", "--min-per-class", "2", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    judge = ExpressionJudge.from_pretrained(tmp_path / "cls")
    assert set(judge.class_names) <= {"happy", "sad", "angry", "neutral"}
    assert (tmp_path / "cls" / "MODEL_CARD.md").read_text().startswith("# Expression classifier")
    for name, extra in (("base", []), ("judged", ["--judge", str(tmp_path / "cls")])):
        r = runner.invoke(cli, ["evaluate", "--data", ds, "--out", str(tmp_path / name), "--limit", "2",
                                "--skip", "aus", "--skip", "identity", "--skip", "fid", "--quiet",
                                "--device", "cpu", "--val-fraction", "0.3", *extra])
        assert r.exit_code == 0, r.output
        assert "generation rate" in r.output
    m = json.loads((tmp_path / "judged" / "metrics.json").read_text())
    assert m["judge"]["name"] == "classifier-ds"
    r = runner.invoke(cli, ["compare", str(tmp_path / "base"), str(tmp_path / "judged"), "-o", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| Method | Conditioning | Geometry | Conf. penalty | Accuracy (%) | No edit (%)" in table
    assert "different judges" in table
    assert (tmp_path / "cmp" / "comparison.png").is_file()
    r = runner.invoke(cli, ["evaluate", "--data", ds, "--out", str(tmp_path / "x"), "--targets", "AU99=1"])
    assert r.exit_code != 0


def test_real_faces_no_edit_baseline(shared_data: Path, tmp_path: Path) -> None:
    """On real faces the no-edit baseline keeps identity exactly, and the proxy is labelled."""
    from facexpr.data.dataset import PreparedDataset
    from facexpr.face.align import align_face
    from facexpr.face.detect import FaceAnalyzer
    from facexpr.imageio import load_image
    from facexpr.evaluation.report import compare_markdown

    rows = list(csv.DictReader((shared_data / "taiwanese" / "manifest.csv").open()))
    pick = []
    for ident in ("01", "03"):
        mine = [r for r in rows if r["identity"] == ident]
        pick += [r for r in mine if r["expression"] == "happy"][:2] + [r for r in mine if r["expression"] == "sad"][:1]
    crops, ids, exprs = [], [], []
    with FaceAnalyzer(max_faces=1) as fa:
        for r in pick:
            rgb = load_image(shared_data / "taiwanese" / r["file"]).rgb
            crops.append(align_face(rgb, fa.analyze(rgb)[0].landmarks, 96).crop)
            ids.append(r["identity"])
            exprs.append(r["expression"])
    ds = PreparedDataset(_write_dataset(tmp_path / "tw", crops, ids, exprs))
    gen, info = E.load_editor(None)
    cfg = E.EvalConfig(limit=2, targets="dataset", per_face=1, val_fraction=0.4, kid_subsets=3)
    m = E.evaluate(gen, ds, tmp_path / "out", cfg, info=info, progress=False)
    assert m["identity"]["distance"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert m["identity"]["verification_rate"]["value"] == 1.0
    assert m["aus"]["faces_found_on_output"] == 2
    assert m["aus"]["error"]["mean"]["value"] == pytest.approx(m["aus"]["no_edit_error"]["mean"]["value"])
    assert m["realism"]["proxy"]["name"] == "FID-proxy (dlib face embedding)"
    assert m["paired"]["identity_distance"]["count"] >= 1  # the same person photographed in the target emotion
    assert "FID-proxy (dlib face embedding)" in (tmp_path / "out" / "report.md").read_text()
    assert "NOT FID" in compare_markdown([m])


def test_evaluation_identity_is_dlibs_own_descriptor(shared_data: Path) -> None:
    """The evaluation embeds faces with the torch port of dlib's network; dlib itself stays the
    independent check: same descriptors on real faces."""
    from facexpr.face.identity import IdentityEncoder
    from facexpr.imageio import load_image

    files = sorted((shared_data / "lfw").rglob("*.jpg"))[:60:6]
    worst, n = 0.0, 0
    with E.FaceMeasurer(aus=False) as fm, IdentityEncoder() as dlib_encoder:
        for f in files:
            rgb = load_image(f).rgb
            lm, _ = fm.landmarks(rgb)
            if lm is None:
                continue
            worst = max(worst, float(np.abs(fm.embed(rgb, lm) - dlib_encoder.embed(rgb, lm[:, :2])).max()))
            n += 1
    assert n >= 8 and worst < 1e-5, (n, worst)
