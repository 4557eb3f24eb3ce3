"""One evaluation for every model: edit a prepared dataset's validation faces, score everything.

Every model runs through the same :class:`facexpr.pipeline.Editor` a user's photo goes through
(analysis of the crop, target AUs, the model's own runner, composition and paste-back), so what
is scored is what ``facexpr edit`` delivers, and the geometry-driven family needs no special
case. A crop where the landmarker finds no face is edited with the template's landmarks (a
prepared crop *is* aligned to the template).

For each validation face (identity-disjoint split, so no evaluated person was trained on) and
each target expression, the model edits the aligned crop; then

* the **judge** (an independent classifier) says whether the output shows the target emotion
  (generation rate), next to the judge's accuracy on *real* photos of the same classes, since a
  judge that recognises 40 % of real sad faces cannot be expected to see 90 % of generated ones;
* the AU estimator re-measures the output's **Action Units** (per-AU error to the target, with the
  "no edit" error as a baseline);
* the dlib face-recognition network measures **identity** drift (distance, verification rate);
* the **cycle** edit back to the source AUs is compared to the input (PSNR, SSIM);
* where the dataset holds the same person in the target expression, the output is compared with
  that **paired ground truth**;
* **realism**: FID/KID with the user's Inception weights, and always the clearly named
  face-embedding proxy;
* **speed**: editing milliseconds per image (model and composition, not the face analysis).

Everything is deterministic (fixed split, fixed targets, models in eval mode). Outputs:
``metrics.json`` (every number with its count and the judge's name), ``samples.csv`` (one row per
edit), ``report.md``, plots and ``samples.png`` (rows faces, columns targets).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facexpr import __version__
from facexpr.errors import ConfigError, FacexprError
from facexpr.evaluation import fid as fidlib
from facexpr.evaluation import metrics as M
from facexpr.evaluation.judge import ExpressionJudge
from facexpr.expression import AU_NAMES, EMOTIONS, apply_au_specs, emotion_aus, resolve_emotion
from facexpr.models.base import AU_CONDITION, Condition
from facexpr.pipeline.registry import ModelInfo
from facexpr.pipeline.targets import EmotionTarget, ReferenceTarget, Target

ALL_PARTS = ("aus", "identity", "cycle", "fid", "paired")


# --------------------------------------------------------------------------------------------
# Configuration and targets
# --------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """Options of one evaluation; written into ``metrics.json`` so a number can be reproduced.

    ``targets``: ``"emotions"`` (every judge class that is a facexpr emotion, at ``intensity``,
    from the face's own AUs), ``"dataset"`` (``per_face`` AU vectors of other validation faces,
    as GANimation evaluates), or AU specs ``"AU12=3,AU06+=1"`` applied to each face's own AUs.
    ``skip``: parts to leave out (``aus``, ``identity``, ``cycle``, ``fid``, ``paired``).
    """

    targets: str = "emotions"
    intensity: float = 1.0
    per_face: int = 3
    limit: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    sample_faces: int = 8
    skip: tuple[str, ...] = ()
    kid_subset_size: int = 1000
    kid_subsets: int = 100


@dataclass
class EvalTarget:
    """One target of one face and what it is scored against: AUs (17,), the emotion it stands for
    (if any), its judge class. What the editor is asked comes from :meth:`request`, in the
    pipeline's own target terms, so every model is asked through the same Editor call."""

    name: str
    aus: np.ndarray
    emotion: str | None = None
    judge_class: int = -1
    group: str = ""  # what the per-target table aggregates over; defaults to the name
    reference: int = -1  # dataset row of a photo showing this target (another person), or -1

    def __post_init__(self) -> None:
        self.group = self.group or self.name

    def request(self, condition: Condition,
                references: Callable[[int], ReferenceTarget] | None = None) -> Target | np.ndarray:
        """Explicit AUs for AU-conditioned models; the emotion for label-conditioned ones; the
        reference photo (from ``references(row)``) for models that copy a look."""
        if condition.kind == "aus":
            return self.aus
        if condition.kind == "reference":
            if self.reference < 0 or references is None:
                raise ConfigError(f"target {self.name!r} has no reference photo, which model condition "
                                  "'reference' needs")
            return references(self.reference)
        if self.emotion is None:
            raise ConfigError(f"target {self.name!r} has no emotion, which a label-conditioned model needs")
        return EmotionTarget(self.emotion)


def _emotion_targets_for(judge: ExpressionJudge) -> list[tuple[str, int]]:
    """(facexpr emotion, judge class) for every judge class that has an AU prototype."""
    out = []
    for i, c in enumerate(judge.class_names):
        try:
            name = resolve_emotion(c)
        except ConfigError:
            continue
        if name in EMOTIONS:
            out.append((name, i))
    if not out:
        raise ConfigError(
            f"the judge's classes {judge.class_names} contain no known emotion; "
            "use --targets dataset or AU specs (--targets AU12=3)"
        )
    return out


def make_targets(
    spec: str,
    dataset: Any,
    faces: Sequence[int],
    judge: ExpressionJudge,
    intensity: float = 1.0,
    per_face: int = 3,
    seed: int = 0,
    pool: Sequence[int] | None = None,
    other_people: bool = False,
) -> list[list[EvalTarget]]:
    """The targets of every evaluated face (same list length for every face).

    ``other_people``: ``"dataset"`` targets come only from photos of other people (for models
    that are shown the target's photo, which must not be the person being edited).

    ``pool``: the rows ``"dataset"`` targets are drawn from (default ``faces``); evaluation passes
    the whole validation split, so ``--limit`` does not shrink the variety of targets.
    """
    spec = spec.strip()
    if spec == "emotions":
        emos = _emotion_targets_for(judge)
        return [
            [EvalTarget(e, emotion_aus(e, intensity, dataset.aus[i]), e, k) for e, k in emos]
            for i in faces
        ]
    if spec == "dataset":
        rows = [int(j) for j in (faces if pool is None else pool)]
        if len(rows) < 2:
            raise ConfigError("--targets dataset needs at least 2 validation faces")
        rng = np.random.default_rng(seed)
        out: list[list[EvalTarget]] = []
        for i in faces:
            person = dataset.identities[i]
            others = np.array([j for j in rows if j != i
                               and not (other_people and person and dataset.identities[j] == person)])
            if not len(others):
                raise ConfigError("--targets dataset: the validation split has no photo of another person; "
                                  "raise --val-fraction")
            pick = rng.choice(others, size=min(per_face, len(others)), replace=False)
            row = []
            for j in pick:
                emo = _maybe_emotion(dataset.expressions[int(j)])
                k = judge.class_index(emo) if emo else None
                row.append(EvalTarget(f"like {Path(dataset.files[int(j)]).stem}", dataset.aus[int(j)].copy(), emo,
                                      -1 if k is None else k, group=_like(emo), reference=int(j)))
            out.append(row)
        return out
    specs = [s for s in spec.replace(";", ",").split(",") if s.strip()]
    if not specs:
        raise ConfigError(f"--targets {spec!r}: use emotions, dataset, or AU specs like AU12=3,AU06=2")
    label = ",".join(s.strip() for s in specs)
    return [[EvalTarget(label, apply_au_specs(dataset.aus[i], specs))] for i in faces]


def assign_references(
    targets: list[list[EvalTarget]], dataset: Any, faces: Sequence[int], pool: Sequence[int], seed: int = 0,
) -> list[list[EvalTarget]]:
    """Give every emotion target a reference photo, for models that copy a reference's look.

    The reference of face ``i`` and emotion ``e`` is a photo from ``pool`` (the validation split)
    labelled ``e`` and showing *another* person, drawn with ``seed``; the target's AUs become the
    reference's own (what the model is shown). Dataset targets already name theirs. Emotions
    that some face has no such photo for are dropped for every face (each face keeps the same
    targets), and an error is raised when none is left.
    """
    by_emotion: dict[str, list[int]] = {}
    for j in pool:
        emo = _maybe_emotion(dataset.expressions[int(j)])
        if emo:
            by_emotion.setdefault(emo, []).append(int(j))
    rng = np.random.default_rng(seed)
    out: list[list[EvalTarget]] = []
    for i, row in zip(faces, targets):
        person = dataset.identities[i]  # '' = unknown: then any other photo will do
        new = []
        for t in row:
            if t.reference < 0 and t.emotion is not None:
                others = [j for j in by_emotion.get(t.emotion, ())
                          if j != int(i) and not (person and dataset.identities[j] == person)]
                if others:
                    ref = int(rng.choice(others))
                    t = replace(t, reference=ref, aus=np.asarray(dataset.aus[ref], np.float32).copy())
            new.append(t)
        out.append(new)
    keep = [k for k in range(len(out[0]) if out else 0) if all(r[k].reference >= 0 for r in out)]
    if not keep:
        raise ConfigError("this model copies the look of a reference photo, and the validation split has no photo "
                          "of another person labelled with any target emotion: it needs labelled photos of at least "
                          "two people (raise --val-fraction, or use a dataset with expression labels)")
    return [[r[k] for k in keep] for r in out]


def _like(emotion: str | None) -> str:
    word = emotion or "unlabelled"
    return f"AUs of {'an' if word[0] in 'aeiou' else 'a'} {word} face"


def _maybe_emotion(label: str) -> str | None:
    if not label:
        return None
    try:
        return resolve_emotion(label)
    except ConfigError:
        return None


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class NoEditRunner:
    """Baseline "model" that changes nothing: the reference row of every comparison.

    Its numbers are what real, unedited faces score: identity distance 0, PSNR inf, the judge's
    accuracy on real photos as the generation rate of the faces' own expression.
    """

    backend = "none"
    image_size = 64
    condition = AU_CONDITION

    def __call__(self, crops: np.ndarray, aus: np.ndarray) -> dict[str, np.ndarray]:
        x = crops.astype(np.float32) / 127.5 - 1.0
        return {"result": x, "attention": np.ones(crops.shape[:3], np.float32), "colour": x}


def describe_model(info: ModelInfo) -> dict[str, Any]:
    """The model's entry in ``metrics.json``."""
    cond = info.condition
    try:
        training = json.loads((Path(info.path) / "config.json").read_text(encoding="utf-8")).get("training") or {}
    except (OSError, ValueError, AttributeError):
        training = {}
    return {"name": info.name, "family": info.family, "image_size": info.image_size or None,
            "condition": {"aus": "aus", "labels": f"labels: {', '.join(cond.labels)}",
                          "reference": "reference photo"}.get(cond.kind, cond.kind),
            "path": str(info.path), "recipe_config": training.get("recipe_config") or {}}


def load_editor(spec: str | None, device: str | torch.device = "cpu") -> tuple[Any, ModelInfo]:
    """The Editor for a model folder, a shipped model's name, or ``None``/"no-edit"."""
    from facexpr.pipeline import Editor

    if spec is None or spec in ("no-edit", "none", "identity"):
        info = ModelInfo("no-edit", Path("."), "no-edit", NoEditRunner.image_size, "")
        return Editor(NoEditRunner(), info), info
    editor = Editor.from_pretrained(spec, device=device)
    return editor, editor.info


def editor_for(model: Any, name: str = "model") -> tuple[Any, ModelInfo]:
    """An Editor for a generator module passed in directly (tests, notebooks): its torch runner."""
    from facexpr.pipeline import Editor
    from facexpr.pipeline.runner import TorchRunner

    if hasattr(model, "edit_faces"):
        return model, model.info
    meta = getattr(model, "model_info", {}) or {}
    family = str(meta.get("family", getattr(model, "family", type(model).__name__)))
    runner = TorchRunner(model)
    info = ModelInfo(name, Path("."), family, runner.image_size, "", runner.condition)
    return Editor(runner, info), info


def template_face(size: int) -> Any:
    """A Face whose landmarks are the alignment template at ``size``: what a prepared crop shows."""
    from facexpr.face.align import mean_face
    from facexpr.face.detect import BLENDSHAPE_NAMES, Face

    lm = mean_face().astype(np.float32) * size
    lm[:, :2] -= 0.5
    box = np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])
    return Face(box=box, landmarks=lm, blendshapes=np.zeros(len(BLENDSHAPE_NAMES), np.float32),
                pose=np.eye(4, dtype=np.float32))


def _to_tensor(rgb: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    x = torch.tensor(np.asarray(rgb), device=device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[1] == size:
        return rgb
    return _to_uint8(_to_tensor(rgb, size, torch.device("cpu")))


# --------------------------------------------------------------------------------------------
# Face measurements (AUs, identity) on crops
# --------------------------------------------------------------------------------------------


class FaceMeasurer:
    """AUs and identity embeddings of aligned crops, with the models loaded once.

    A crop where MediaPipe finds no face gives NaN AUs (counted as failures, not as zeros). The
    identity embedding of an *output* uses the landmarks of its *input* face, because the crop
    geometry is unchanged by an expression edit and dlib aligns within the box itself.

    Identity descriptors are dlib's face-recognition network, computed by its torch port
    (:mod:`facexpr.face.identity_net`) on dlib's own 150 px chip: the same numbers as dlib's
    (within 1e-6; ``tests/test_identity_net.py`` checks it against dlib itself), about ten
    times faster on a CPU.
    """

    def __init__(self, aus: bool = True, identity: bool = True, faces: bool = True) -> None:
        self.want_aus, self.want_identity = aus, identity
        self.want_faces = faces
        self._analyzer: Any = None
        self._encoder: Any = None

    def __enter__(self) -> "FaceMeasurer":
        if self.want_aus or self.want_identity or self.want_faces:
            from facexpr.face.detect import FaceAnalyzer

            self._analyzer = FaceAnalyzer(max_faces=1, fallback="none", tiles=False)
        if self.want_identity:
            from facexpr.face.identity_net import FaceChipper, IdentityNet

            self._chipper = FaceChipper()
            self._encoder = IdentityNet.from_pretrained()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._analyzer is not None:
            self._analyzer.close()

    def face(self, rgb: np.ndarray) -> Any:
        """The largest face of a crop, or None."""
        faces = self._analyzer.analyze(rgb) if self._analyzer is not None else []
        return faces[0] if faces else None

    def landmarks(self, rgb: np.ndarray, face: Any = "measure") -> tuple[np.ndarray | None, np.ndarray]:
        """(landmarks or None, AUs (17,) NaN when no face) of one crop (or of ``face`` if given)."""
        from facexpr.face.aus import aus_from_blendshapes

        f = self.face(rgb) if isinstance(face, str) else face
        if f is None:
            return None, np.full(len(AU_NAMES), np.nan, np.float32)
        return f.landmarks, np.asarray(aus_from_blendshapes(f.blendshapes, f.landmarks), np.float32)

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        if self._encoder is None:
            return np.full(128, np.nan, np.float32)
        if landmarks is None:
            from facexpr.face.align import template_pixels

            landmarks = template_pixels(rgb.shape[0])
        try:
            return self._encoder.embed_chips(self._chipper.chip(rgb, landmarks[:, :2]))[0]
        except FacexprError:
            return np.full(128, np.nan, np.float32)


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class _Acc:
    """Per-edit records, filled face by face."""

    face: list[int] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    reference: list[int] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    emotion: list[str] = field(default_factory=list)
    judge_class: list[int] = field(default_factory=list)
    judged: list[int] = field(default_factory=list)
    judged_p: list[float] = field(default_factory=list)
    target_aus: list[np.ndarray] = field(default_factory=list)
    out_aus: list[np.ndarray] = field(default_factory=list)
    in_aus: list[np.ndarray] = field(default_factory=list)
    id_dist: list[float] = field(default_factory=list)
    cyc_psnr: list[float] = field(default_factory=list)
    cyc_ssim: list[float] = field(default_factory=list)
    pair_dist: list[float] = field(default_factory=list)
    pair_psnr: list[float] = field(default_factory=list)
    pair_ssim: list[float] = field(default_factory=list)
    out_emb: list[np.ndarray] = field(default_factory=list)
    sharpness: list[float] = field(default_factory=list)
    outside: list[float] = field(default_factory=list)


def face_regions(face: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) bool masks of a crop: the landmark hull shrunk by 4 % of the crop (skin
    the edit may change) and the complement of the hull grown by 4 % (what it must leave alone)."""
    import cv2

    hull = cv2.convexHull(np.round(np.asarray(face.landmarks)[:468, :2] * 16).astype(np.int32))
    m = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(m, hull, 1, shift=4)
    k = max(int(round(0.04 * size)), 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    return cv2.erode(m, kernel) > 0, cv2.dilate(m, kernel) == 0


def _paired_index(dataset: Any) -> dict[tuple[str, str], list[int]]:
    """(identity, emotion) -> rows, for the paired ground truth."""
    index: dict[tuple[str, str], list[int]] = {}
    for i, (ident, expr) in enumerate(zip(dataset.identities, dataset.expressions)):
        emo = _maybe_emotion(expr)
        if ident and emo:
            index.setdefault((ident, emo), []).append(i)
    return index


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="face", dynamic_ncols=True)


def evaluate(
    model: Any,
    dataset: Any,
    out_dir: str | Path,
    config: EvalConfig | None = None,
    judge: ExpressionJudge | None = None,
    info: ModelInfo | None = None,
    fid_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset``'s validation faces; write the report into ``out_dir``.

    Returns the ``metrics.json`` content. ``model`` is a :class:`facexpr.pipeline.Editor` (see
    :func:`load_editor`) or a generator module (``G(image, aus/5) -> GeneratorOutput`` with a
    ``config.image_size``), which is then run through an Editor with its torch runner.
    """
    config = config or EvalConfig()
    unknown = set(config.skip) - set(ALL_PARTS)
    if unknown:
        raise ConfigError(f"cannot skip {sorted(unknown)}: the parts are {', '.join(ALL_PARTS)}")
    skip = set(config.skip)
    device = torch.device(device)
    judge = judge or ExpressionJudge.from_pretrained("fer", device=device)
    editor, own_info = editor_for(model)
    info = info or own_info
    # Every model sees the same crops at the dataset's size; the editor brings them to its own.
    size = int(dataset.size)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from facexpr.errors import OutputError

        raise OutputError(f"cannot create output folder {out_dir}: {exc}") from exc

    torch.manual_seed(config.seed)
    fallback_face = template_face(size)
    _, val = dataset.split(config.val_fraction, config.seed)
    if len(val) == 0:
        raise FacexprError(f"{dataset.root}: the validation split is empty; the dataset needs at least 2 identities")
    order = interleave_identities(dataset, val)
    faces = order[: config.limit] if config.limit else order
    targets = make_targets(config.targets, dataset, faces, judge, config.intensity, config.per_face, config.seed,
                           pool=order, other_people=info.condition.kind == "reference")
    condition = info.condition
    if condition.kind == "labels":  # a label model is asked only for the expressions it knows
        targets = [[t for t in row if t.emotion in condition.labels] for row in targets]
        if not targets or not targets[0] or len({len(r) for r in targets}) != 1:
            raise ConfigError(f"model {info.name} knows only {', '.join(condition.labels)}: use --targets emotions "
                              "(targets are then limited to those expressions)")
    if condition.kind == "reference":
        if config.targets not in ("emotions", "dataset"):
            raise ConfigError(f"model {info.name} copies the look of a reference photo, not Action Units: "
                              "use --targets emotions or dataset")
        if config.intensity != 1.0:
            raise ConfigError(f"model {info.name} copies a reference photo as it is: --intensity "
                              f"{config.intensity:g} is not possible; leave it at 1")
        targets = assign_references(targets, dataset, faces, order, config.seed)
    pairs = _paired_index(dataset) if "paired" not in skip else {}

    fid_net = fidlib.InceptionFeatures(fid_weights, device=device) if fid_weights and "fid" not in skip else None
    real_fid_feats: list[np.ndarray] = []
    fake_fid_feats: list[np.ndarray] = []
    in_embs: list[np.ndarray] = []
    acc = _Acc()
    grid_rows: list[tuple[np.ndarray, list[np.ndarray]]] = []
    gen_seconds, gen_images = 0.0, 0
    gt_embs: dict[int, np.ndarray] = {}  # paired ground-truth photos recur across faces and targets

    measure_aus = "aus" not in skip
    measure_id = "identity" not in skip or "fid" not in skip
    with torch.no_grad(), _one_progress_bar(editor), FaceMeasurer(aus=measure_aus, identity=measure_id) as fm:
        references = _References(dataset, fm, fallback_face)
        for pos, i in enumerate(_progress(faces, len(faces), "evaluate", progress)):
            src = dataset.image(i)
            tg = targets[pos]
            face_in = fm.face(src) or fallback_face
            requests = [t.request(condition, references) for t in tg]  # reference photos load outside the timing
            t0 = time.perf_counter()
            outs = np.stack([editor.edit_faces(src, [face_in], [r]).image for r in requests])
            gen_seconds += time.perf_counter() - t0
            gen_images += len(tg)
            out_faces = [fm.face(o) for o in outs] if (measure_aus or "cycle" not in skip) else [None] * len(tg)

            back = _source_request(dataset, i, condition, references)
            if "cycle" not in skip and back is not None:
                for o, fo in zip(outs, out_faces):
                    b = editor.edit_faces(o, [fo or fallback_face], [back]).image
                    acc.cyc_psnr.append(M.psnr(src, b))
                    acc.cyc_ssim.append(M.ssim(src, b))
            else:
                acc.cyc_psnr += [math.nan] * len(tg)
                acc.cyc_ssim += [math.nan] * len(tg)

            proba = judge.predict_proba(outs)
            lm_in, aus_in = fm.landmarks(src, face_in if face_in is not fallback_face else None) \
                if (measure_aus or measure_id) else (None, np.full(17, np.nan))
            emb_in = fm.embed(src, lm_in) if measure_id else np.full(128, np.nan, np.float32)
            in_embs.append(emb_in)
            if fid_net is not None:
                real_fid_feats.append(fid_net(src[None]))
                fake_fid_feats.append(fid_net(outs))

            inside, outside = face_regions(face_in, size)
            for t, out, p, fo in zip(tg, outs, proba, out_faces):
                acc.sharpness.append(M.sharpness_ratio(src, out, inside))
                acc.outside.append(M.changed_outside(src, out, outside))
                acc.face.append(i)
                acc.target.append(t.name)
                acc.reference.append(t.reference if condition.kind == "reference" else -1)
                acc.group.append(t.group)
                acc.emotion.append(t.emotion or "")
                acc.judge_class.append(t.judge_class)
                acc.judged.append(int(p.argmax()))
                acc.judged_p.append(float(p[t.judge_class]) if t.judge_class >= 0 else math.nan)
                acc.target_aus.append(t.aus)
                acc.in_aus.append(aus_in)
                acc.out_aus.append(fm.landmarks(out, fo)[1] if measure_aus else np.full(17, np.nan, np.float32))
                emb_out = fm.embed(out, lm_in) if measure_id else np.full(128, np.nan, np.float32)
                acc.out_emb.append(emb_out)
                acc.id_dist.append(float(np.linalg.norm(emb_out - emb_in)))
                gt = _pair_for(pairs, dataset, i, t)
                if gt is None:
                    acc.pair_dist.append(math.nan)
                    acc.pair_psnr.append(math.nan)
                    acc.pair_ssim.append(math.nan)
                else:
                    gt_img = dataset.image(gt)
                    acc.pair_psnr.append(M.psnr(gt_img, out))
                    acc.pair_ssim.append(M.ssim(gt_img, out))
                    if measure_id and "identity" not in skip:
                        if gt not in gt_embs:
                            gt_embs[gt] = fm.embed(gt_img, fm.landmarks(gt_img)[0])
                        acc.pair_dist.append(float(np.linalg.norm(emb_out - gt_embs[gt])))
                    else:
                        acc.pair_dist.append(math.nan)
            if pos < config.sample_faces:
                grid_rows.append((src, list(outs)))

    # Real photos: the judge's accuracy on the validation faces' own labels.
    real = _real_accuracy(judge, dataset, [int(v) for v in val], size)

    metrics = _summarise(acc, targets, judge, dataset, faces, real, config, info, size, skip,
                         np.array(in_embs), real_fid_feats, fake_fid_feats, gen_seconds, gen_images, device,
                         fid_weights)
    from facexpr.evaluation import report

    _write_samples_csv(out_dir / "samples.csv", acc, dataset, judge)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    report.write_report(out_dir, metrics)
    report.plot_identity_histogram(out_dir / "identity_distance.png", np.array(acc.id_dist), info.name)
    report.plot_per_emotion(out_dir / "per_emotion.png", metrics)
    report.plot_au_error(out_dir / "au_error.png", metrics)
    if grid_rows:
        report.sample_grid(out_dir / "samples.png", grid_rows, [t.name for t in targets[0]],
                           per_face_names=config.targets == "dataset")
    return metrics


@contextlib.contextmanager
def _one_progress_bar(editor: Any) -> Iterator[None]:
    """The evaluation's bar over faces is the only one: the editor's per-edit bars (style
    transfer) are off meanwhile, and back as they were afterwards, whatever happens."""
    shown = getattr(editor, "progress", True)
    editor.progress = False
    try:
        yield
    finally:
        editor.progress = shown


class _References:
    """Reference targets of dataset rows (photo, its AUs, its landmarks), built once per row.

    A prepared crop where the landmarker finds no face is aligned to the template, so the
    template's landmarks stand in for it."""

    def __init__(self, dataset: Any, fm: FaceMeasurer, fallback_face: Any) -> None:
        self.dataset, self.fm, self.fallback_face = dataset, fm, fallback_face
        self._cache: dict[int, ReferenceTarget] = {}

    def __call__(self, row: int) -> ReferenceTarget:
        if row not in self._cache:
            image = self.dataset.image(row)
            face = self.fm.face(image) or self.fallback_face
            self._cache[row] = ReferenceTarget(self.dataset.aus[row], Path(self.dataset.files[row]).stem,
                                               image=image, landmarks=np.asarray(face.landmarks))
        return self._cache[row]


def _source_request(dataset: Any, i: int, condition: Condition,
                    references: Callable[[int], ReferenceTarget] | None = None) -> Target | np.ndarray | None:
    """What takes face ``i`` back to its own expression (cycle metrics): its AUs, its emotion
    (``None`` for a label model when the face's label is unknown or not one the model knows), or
    its own photo as the reference."""
    if condition.kind == "aus":
        return dataset.aus[i]
    if condition.kind == "reference":
        return references(i) if references is not None else None
    emotion = _maybe_emotion(dataset.expressions[i])
    return EmotionTarget(emotion) if emotion in condition.labels else None


def interleave_identities(dataset: Any, rows: Sequence[int]) -> list[int]:
    """``rows`` reordered round-robin over identities (first photo of each person, then the
    second, ...), so ``--limit`` and the sample grid cover many people instead of the first one."""
    groups: dict[str, list[int]] = {}
    for i in rows:
        i = int(i)
        key = dataset.identities[i] or f"#{i}"
        groups.setdefault(key, []).append(i)
    out: list[int] = []
    depth = 0
    lists = list(groups.values())
    while len(out) < len(rows):
        out += [g[depth] for g in lists if depth < len(g)]
        depth += 1
    return out


def _pair_for(pairs: dict[tuple[str, str], list[int]], dataset: Any, i: int, t: EvalTarget) -> int | None:
    """Another photo of the same person showing the target emotion (first by row), if any."""
    if not pairs or not t.emotion or not dataset.identities[i]:
        return None
    for j in pairs.get((dataset.identities[i], t.emotion), ()):
        if j != i:
            return j
    return None


def _real_accuracy(judge: ExpressionJudge, dataset: Any, rows: Sequence[int], size: int) -> dict[str, Any]:
    labelled = []
    classes = []
    for i in rows:
        emo = _maybe_emotion(dataset.expressions[i])
        k = judge.class_index(emo) if emo else None
        if k is not None:
            labelled.append(i)
            classes.append(k)
    if not labelled:
        return {"overall": M.Stat(math.nan, 0), "per_class": {c: M.Stat(math.nan, 0) for c in judge.class_names},
                "balanced": M.Stat(math.nan, 0)}
    preds = []
    for s in range(0, len(labelled), 64):
        imgs = _resize_uint8(dataset.images(labelled[s : s + 64]), size)
        preds.append(judge.predict(imgs))
    pred = np.concatenate(preds)
    per = M.per_class_rate(pred, classes, judge.class_names)
    present = [s.value for s in per.values() if s.count]
    return {"overall": M.generation_rate(pred, classes), "per_class": per,
            "balanced": M.Stat(float(np.mean(present)), len(labelled)),
            "confusion": M.confusion_matrix(pred, classes, len(judge.class_names)).tolist()}


def _stat_dict(d: dict[str, M.Stat]) -> dict[str, Any]:
    return {k: v.as_dict() for k, v in d.items()}


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _summarise(acc: _Acc, targets: list[list[EvalTarget]], judge: ExpressionJudge, dataset: Any, faces: list[int],
               real: dict[str, Any], config: EvalConfig, info: ModelInfo, size: int, skip: set[str],
               in_embs: np.ndarray, real_fid: list[np.ndarray], fake_fid: list[np.ndarray],
               gen_seconds: float, gen_images: int, device: torch.device,
               fid_weights: str | Path | None) -> dict[str, Any]:
    judged = np.array(acc.judged)
    jclass = np.array(acc.judge_class)
    names = list(dict.fromkeys(acc.group))
    target_arr = np.array(acc.group)
    tgt_aus = np.stack(acc.target_aus)
    out_aus = np.stack(acc.out_aus)
    in_aus = np.stack(acc.in_aus)
    id_dist = np.array(acc.id_dist)

    gen = M.generation_rate(judged, jclass)
    per_emotion: dict[str, Any] = {}
    for k, cname in enumerate(judge.class_names):
        sel = jclass == k
        if not sel.any():
            continue
        g = M.generation_rate(judged[sel], jclass[sel])
        r = real["per_class"].get(cname, M.Stat(math.nan, 0))
        per_emotion[cname] = {"generation_rate": g.as_dict(), "real_accuracy": r.as_dict(),
                              "ratio": M.rate_ratio(g, r).as_dict()}

    per_target: dict[str, Any] = {}
    for name in names:
        sel = target_arr == name
        per_target[name] = {
            "count": int(sel.sum()),
            "generation_rate": M.generation_rate(judged[sel], jclass[sel]).as_dict(),
            "au_error": M.au_error(tgt_aus[sel], out_aus[sel])["mean"].as_dict() if "aus" not in skip else None,
            "identity_distance": M.mean_stat(id_dist[sel]).as_dict() if "identity" not in skip else None,
            "verification_rate": M.verification_rate(id_dist[sel]).as_dict() if "identity" not in skip else None,
        }

    result: dict[str, Any] = {
        "facexpr_version": __version__,
        "model": describe_model(info),
        "dataset": {"root": " + ".join(str(r) for r in getattr(dataset, "roots", [dataset.root])),
                    "crop_size": int(dataset.size), "rows": len(dataset),
                    "validation_faces": int(len(dataset.split(config.val_fraction, config.seed)[1])),
                    "evaluated_faces": len(faces)},
        "evaluated_at_size": size,
        "config": {**asdict(config), "skip": sorted(skip)},
        "judge": {"name": judge.name, "classes": list(judge.class_names), "source": judge.config.source},
        "counts": {"faces": len(faces), "targets_per_face": len(targets[0]) if targets else 0, "edits": len(judged)},
        "expression": {
            "generation_rate": gen.as_dict(),
            "mean_target_probability": M.mean_stat(acc.judged_p).as_dict(),
            "per_emotion": per_emotion,
            "confusion": M.confusion_matrix(judged, jclass, len(judge.class_names)).tolist(),
            "real_accuracy": {"overall": real["overall"].as_dict(), "balanced": real["balanced"].as_dict(),
                              "per_class": _stat_dict(real["per_class"]),
                              "confusion": real.get("confusion")},
            # Emotion targets ask for every class equally often: compare with the judge's mean
            # per-class accuracy. Dataset targets follow the label mix: compare with overall accuracy.
            "ratio": M.rate_ratio(gen, real["balanced"] if config.targets == "emotions" else real["overall"]).as_dict(),
            "ratio_reference": "balanced real accuracy" if config.targets == "emotions" else "overall real accuracy",
        },
        "per_target": per_target,
    }
    if "aus" not in skip:
        result["aus"] = {
            "estimator": "facexpr.face.aus.aus_from_blendshapes over MediaPipe FaceLandmarker",
            "error": _stat_dict(M.au_error(tgt_aus, out_aus)),
            "no_edit_error": _stat_dict(M.au_error(tgt_aus, in_aus)),
            "faces_found_on_output": int(np.isfinite(out_aus).all(axis=1).sum()),
        }
    if "identity" not in skip:
        result["identity"] = {
            "encoder": "dlib ResNet face descriptor (128-d)",
            "distance": M.mean_stat(id_dist).as_dict(),
            "verification_rate": M.verification_rate(id_dist).as_dict(),
            "threshold": M.VERIFICATION_THRESHOLD,
        }
    result["fidelity"] = {
        "sharpness_ratio": M.mean_stat(acc.sharpness).as_dict(),
        "changed_outside_face": M.mean_stat(acc.outside).as_dict(),
        "note": "sharpness: median |Laplacian| inside the face, edit / input; changed outside: share of "
                "pixels outside the face (hull grown by 4 % of the crop) that moved by more than 2 levels",
    }
    if "cycle" not in skip:
        result["cycle"] = {"psnr": M.mean_stat(acc.cyc_psnr).as_dict(), "ssim": M.mean_stat(acc.cyc_ssim).as_dict(),
                           "note": "G(G(x, target), source AUs) vs x; identical images (PSNR inf) are left out of the PSNR mean"}
    if "paired" not in skip:
        result["paired"] = {
            "note": "output vs another photo of the same person labelled with the target emotion",
            "identity_distance": M.mean_stat(acc.pair_dist).as_dict(),
            "psnr": M.mean_stat(acc.pair_psnr).as_dict(),
            "ssim": M.mean_stat(acc.pair_ssim).as_dict(),
        }
    if "fid" not in skip:
        realism: dict[str, Any] = {}
        if fake_fid:
            r = fidlib.realism_scores(np.concatenate(real_fid), np.concatenate(fake_fid),
                                      config.kid_subset_size, config.kid_subsets, config.seed)
            realism["fid"] = {"name": fidlib.FID_NAME, "weights": str(fid_weights),
                              "real_set": "the evaluated input crops", "fake_set": "their edits", **r}
        else:
            realism["fid"] = {"name": fidlib.FID_NAME, "value": None,
                              "reason": "no Inception weights given (--fid-weights); see the proxy"}
        real_e = in_embs[np.isfinite(in_embs).all(axis=1)] if in_embs.size else in_embs
        fake_e = np.stack(acc.out_emb)
        fake_e = fake_e[np.isfinite(fake_e).all(axis=1)]
        if len(real_e) >= 2 and len(fake_e) >= 2:
            r = fidlib.realism_scores(real_e, fake_e, config.kid_subset_size, config.kid_subsets, config.seed)
            realism["proxy"] = {"name": fidlib.PROXY_NAME, "kid_name": fidlib.KID_PROXY_NAME,
                                "note": "NOT FID: Fréchet distance of dlib 128-d face descriptors of inputs vs outputs",
                                "real_set": "the evaluated input crops", "fake_set": "their edits",
                                **r}
        else:
            realism["proxy"] = {"name": fidlib.PROXY_NAME, "fid": None, "reason": "fewer than 2 faces embedded"}
        result["realism"] = realism
    ms = 1000.0 * gen_seconds / max(gen_images, 1)
    result["speed"] = {"ms_per_image": ms, "images": gen_images, "device": str(device),
                       "torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    return _clean(result)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj


def _write_samples_csv(path: Path, acc: _Acc, dataset: Any, judge: ExpressionJudge) -> None:
    head = ["file", "target", "reference", "emotion", "judged", "target_probability", "au_error", "identity_distance",
            "cycle_psnr", "cycle_ssim", "paired_psnr", "paired_identity_distance"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for k in range(len(acc.face)):
            err = np.abs(acc.target_aus[k] - acc.out_aus[k]).mean()

            def f(v: float) -> str:
                return "" if v is None or not np.isfinite(v) else f"{v:.4f}"

            ref = dataset.files[acc.reference[k]] if acc.reference[k] >= 0 else ""
            w.writerow([dataset.files[acc.face[k]], acc.target[k], ref, acc.emotion[k], judge.class_names[acc.judged[k]],
                        f(acc.judged_p[k]), f(err), f(acc.id_dist[k]), f(acc.cyc_psnr[k]), f(acc.cyc_ssim[k]),
                        f(acc.pair_psnr[k]), f(acc.pair_dist[k])])
