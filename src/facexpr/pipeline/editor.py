"""The Editor: photo -> faces -> model -> the same photo with new expressions.

Two kinds of model run behind one interface. The **geometry-driven** family (the default) moves
the photo's own pixels through a 3D expression rig at full resolution and adds shading and a
mouth interior (:mod:`facexpr.pipeline.geometry`). The **crop generators** (GANimation, DFT-Net)
work as follows.

Per face: MediaPipe landmarks and blendshapes give the face's own AUs; the target is resolved
against them; the face is aligned to the model's native crop size and run through the generator;
then the result is composed at the *face's own resolution*: the generator's attention and colour
maps are upsampled to a crop as large as the face is in the photo and blended with that
full-resolution crop, so skin the model did not change keeps the photo's detail. Only the region
the model changed (its attention support, limited to the face) is pasted back, feathered; every
other pixel of the photo is byte-identical to the input.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Literal, Sequence

import cv2
import numpy as np
from PIL import Image

from facexpr.blas_threads import one_blas_thread
from facexpr.devices import check_device
from facexpr.errors import ConfigError, NoFaceError
from facexpr.face.align import align_face, alignment_matrix, copy_where, deferred_crop, face_mask, matrix_scale, paste_delta
from facexpr.face.aus import aus_from_blendshapes
from facexpr.face.detect import Face, FaceAnalyzer, check_searchable
from facexpr.face.limits import refusals
from facexpr.models.geometry import FAMILY as GEOMETRY_FAMILY
from facexpr.models.geometry import GeometryModel
from facexpr.pipeline import geometry as geo
from facexpr.pipeline.registry import ModelInfo, resolve_model
from facexpr.pipeline.targets import ReferenceTarget, Target, label_values

if TYPE_CHECKING:
    import torch

    from facexpr.pipeline.nst import StyleTransfer
    from facexpr.pipeline.runner import Runner

FaceSelection = Literal["all", "largest"] | Sequence[int] | str
Backend = Literal["auto", "torch", "onnxruntime"]

#: Largest working crop for composing at full resolution; faces bigger than this in the photo are
#: composed at this size (the paste-back warp then upsamples only the changed region).
MAX_WORK_SIZE = 1024
#: A pixel counts as changed by the model when its attention drops below 1 - CHANGE_THRESHOLD.
CHANGE_THRESHOLD = 0.04
#: A pixel counts as moved by a flow model when it moves by more than this many model pixels.
MOTION_THRESHOLD = 0.25


class Later:
    """A record field computed on first access (see :class:`FaceEdit`)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


@dataclass
class FaceEdit:
    """What was done to one face (returned with ``details=True``).

    The geometry family fills ``mask``, ``crop``, ``result`` and ``attention`` with :class:`Later`
    values: they are computed (from copies taken at edit time) when first read, so an edit
    whose records nobody looks at (``facexpr edit``, video) does not pay for two aligned crops.
    """

    index: int  #: position in the size-sorted face list (0 = largest)
    box: np.ndarray  #: (4,) x0 y0 x1 y1 in image pixels
    source_aus: np.ndarray  #: (17,) estimated on the input
    target_aus: np.ndarray  #: (17,) asked of the generator
    matrix: np.ndarray  #: (2,3) image -> working crop
    work_size: int  #: side of the working crop the result was composed in
    mask: np.ndarray  #: (work_size, work_size) float paste mask (0 = untouched)
    crop: np.ndarray  #: (S,S,3) uint8 model-size input crop
    result: np.ndarray  #: (S,S,3) uint8 model-size generator result
    attention: np.ndarray | None = None  #: (S,S) model-size attention (1 = source kept)

    def __getattribute__(self, name: str) -> object:
        value = object.__getattribute__(self, name)
        if type(value) is Later:
            value = value.make()
            object.__setattr__(self, name, value)
        return value


@dataclass
class EditResult:
    image: np.ndarray  #: uint8 HxWx3 (or HxWx4 when the input had alpha)
    faces: list[FaceEdit] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  #: seconds per stage
    #: (index, "face N is turned too far to edit (...)") for each selected face left as it is
    #: (``face.limits.refusal``); callers report them, the other faces are edited.
    refused: list[tuple[int, str]] = field(default_factory=list)


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 HxWx3 or HxWx4 from PIL or numpy (grey becomes RGB)."""
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return np.asarray(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ConfigError(f"expected a uint8 image, got {arr.dtype}; load files with facexpr.imageio.load_image")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ConfigError(f"expected an HxWx3 or HxWx4 image, got shape {arr.shape}")
    return arr


def select_faces(faces: list[Face], which: FaceSelection) -> list[int]:
    """Indices into the size-sorted ``faces`` for 'all', 'largest', '0,2' or a sequence."""
    if which == "all":
        return list(range(len(faces)))
    if which == "largest":
        return [0] if faces else []
    if isinstance(which, str):
        try:
            which = [int(p) for p in which.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"--faces takes all, largest or indices like 0,2; got {which!r}") from None
    chosen = sorted(set(int(i) for i in which))
    bad = [i for i in chosen if not 0 <= i < len(faces)]
    if bad:
        raise ConfigError(f"face index {bad[0]} does not exist: {len(faces)} face(s) found "
                          f"(0 = largest, up to {len(faces) - 1})")
    return chosen


def work_size_for(landmarks: np.ndarray, native: int) -> int:
    """Crop side at which one crop pixel is about one photo pixel (at least the model's size)."""
    scale = matrix_scale(alignment_matrix(landmarks, native))  # crop px per photo px
    return int(np.clip(round(native / max(scale, 1e-6)), native, MAX_WORK_SIZE))


def change_mask(attention: np.ndarray, region: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
    """Soft mask of where the model changed the face, at the attention map's size.

    Attention is 1 where the (warped) source is kept; ``1 - attention`` above
    :data:`CHANGE_THRESHOLD` counts as changed, and so, for flow families, does any pixel the
    flow moves by more than :data:`MOTION_THRESHOLD` crop pixels (``motion``, in pixels). The
    changed area is grown a little and feathered so the blend has no seam, then limited to the
    face region (hair and background are never replaced).
    """
    s = attention.shape[0]
    changed = np.clip((1.0 - attention) / CHANGE_THRESHOLD, 0.0, 1.0).astype(np.float32)
    if motion is not None:
        changed = np.maximum(changed, np.clip(motion / MOTION_THRESHOLD, 0.0, 1.0).astype(np.float32))
    k = max(int(round(s / 40)), 1)
    grown = cv2.dilate(changed, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    soft = cv2.GaussianBlur(grown, (0, 0), sigmaX=max(s / 64, 0.5))
    return np.clip(soft, 0.0, 1.0) * region


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma in uint8, exact for grey pixels (the weights sum to 1000)."""
    x = rgb.astype(np.int32)
    return ((299 * x[..., 0] + 587 * x[..., 1] + 114 * x[..., 2] + 500) // 1000).astype(np.uint8)


class Editor:
    """Edit expressions in photos with one generator.

    >>> with Editor.from_pretrained() as editor:
    ...     out = editor.edit(photo, EmotionTarget("happy", 0.8))
    """

    #: Side of the aligned crops kept in :class:`FaceEdit` records of the geometry family.
    RECORD_SIZE = 128
    #: Show a progress bar for edits that take seconds (style transfer); ``evaluate`` turns it off.
    progress = True

    def __init__(self, runner: Runner | GeometryModel | StyleTransfer, info: ModelInfo,
                 analyzer: FaceAnalyzer | None = None) -> None:
        self.runner = runner
        self.info = info
        self.geometry = runner if isinstance(runner, GeometryModel) else None
        self.nst = None
        if self.geometry is None:  # style transfer and the crop generators run on torch; geometry never imports it
            from facexpr.pipeline.nst import StyleTransfer

            self.nst = runner if isinstance(runner, StyleTransfer) else None
        own_size = self.geometry is None and self.nst is None
        self.image_size = runner.image_size if own_size else self.RECORD_SIZE  # type: ignore[union-attr]
        self._analyzer = analyzer

    @property
    def backend(self) -> str:
        """What runs the model: ``geometry`` (numpy/OpenCV + a small torch mouth net), ``torch``
        or ``onnxruntime``."""
        if self.geometry is not None:
            return "geometry"
        return "style transfer" if self.nst is not None else self.runner.backend  # type: ignore[union-attr]

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        backend: Backend = "auto",
    ) -> Editor:
        """Load a shipped model by name (default: the package's default model) or a folder by path.

        ``backend="auto"`` uses onnxruntime on CPU when the model folder carries a
        ``generator.onnx`` (it is about 2-5x faster than eager torch on CPU for these
        generators), and torch otherwise.

        torch is imported only for the families that run on it (and to check a CUDA request), so
        the geometry family (the default) starts without it.
        """
        device = check_device(device, allow_auto=False)
        info = resolve_model(name_or_path)
        if device.split(":")[0] == "cuda" and not _cuda_available():
            raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
        if backend not in ("auto", "torch", "onnxruntime"):
            raise ConfigError(f"unknown backend {backend!r}; use auto, torch or onnxruntime")
        if info.family == GEOMETRY_FAMILY:
            return cls(GeometryModel.from_pretrained(info.path), info)

        import torch

        from facexpr.models import from_pretrained, read_model_config
        from facexpr.pipeline.nst import FAMILY as NST_FAMILY
        from facexpr.pipeline.nst import StyleTransfer
        from facexpr.pipeline.runner import OnnxRunner, TorchRunner

        dev = torch.device(device)
        if info.family == NST_FAMILY:
            return cls(StyleTransfer(device=dev, **read_model_config(info.path).get("config", {})), info)
        onnx_path = Path(info.path) / "generator.onnx"
        use_onnx = backend == "onnxruntime" or (backend == "auto" and dev.type == "cpu" and onnx_path.is_file())
        if use_onnx:
            if not onnx_path.is_file():
                raise ConfigError(f"{info.path} has no generator.onnx; create it with "
                                  f"`facexpr export-onnx {info.path} {onnx_path}`")
            runner: Runner = OnnxRunner(onnx_path, info.image_size, condition=info.condition)
        else:
            runner = TorchRunner(from_pretrained(info.path, device=dev), dev)
        return cls(runner, info)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def analyzer(self) -> FaceAnalyzer:
        if self._analyzer is None:
            self._analyzer = FaceAnalyzer()
        return self._analyzer

    def close(self) -> None:
        if self._analyzer is not None:
            self._analyzer.close()
            self._analyzer = None
        if self.nst is not None:
            self.nst.close()

    def __enter__(self) -> Editor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- analysis ----------------------------------------------------------------------------
    def faces(self, image: Image.Image | np.ndarray) -> list[Face]:
        return self.analyzer.analyze(np.ascontiguousarray(_as_array(image)[..., :3]))

    def reference(self, image: Image.Image | np.ndarray, label: str = "reference") -> ReferenceTarget:
        """The expression of the largest face in ``image`` as a target (``--like``)."""
        rgb = np.ascontiguousarray(_as_array(image)[..., :3])
        if rgb.ndim == 3 and rgb.shape[0] and rgb.shape[1]:
            try:
                check_searchable(rgb.shape[1], rgb.shape[0])
            except NoFaceError as exc:
                raise NoFaceError(f"reference photo {label}: {exc}") from None
        faces = self.analyzer.analyze(rgb, complete=False)
        if not faces:
            raise NoFaceError(f"no face found in the reference photo {label}; use a photo with a visible face")
        return ReferenceTarget(aus_from_blendshapes(faces[0].blendshapes, faces[0].landmarks), label,
                               image=rgb, landmarks=faces[0].landmarks)

    # -- editing -----------------------------------------------------------------------------
    def check_target(self, target: Target | np.ndarray) -> None:
        """Refuse, before any photo is edited, a target this model cannot be asked for: label models
        take an emotion (at intensity 1 unless they interpolate), style transfer a reference photo.

        Raises:
            ConfigError: naming what to ask instead.
        """
        if self.nst is not None:
            if not isinstance(target, ReferenceTarget) or target.image is None:
                raise ConfigError(f"model {self.info.name} copies the look of a reference photo: use --like REFERENCE "
                                  "(it has no emotion or Action Unit condition)")
        elif self.geometry is None and self.runner.condition.kind == "labels":  # type: ignore[union-attr]
            label_values(target, self.runner.condition, self.info.name)  # type: ignore[union-attr]

    def edit(
        self,
        image: Image.Image | np.ndarray,
        target: Target,
        faces: FaceSelection = "all",
        details: bool = False,
    ) -> Image.Image | np.ndarray | EditResult:
        """Return ``image`` with the selected faces showing ``target``.

        PIL in gives PIL out, numpy in gives numpy out (same size, same alpha); with
        ``details=True`` an :class:`EditResult` with per-face records and stage timings.

        Selected faces that cannot be edited (``face.limits``: under 40 px, cut by the edge,
        turned beyond 45 degrees) are left as they are and listed in ``EditResult.refused``.

        Raises:
            NoFaceError: no face in the photo, or none of the selected faces can be edited.
        """
        result = self.edit_array(_as_array(image), target, faces)
        if details:
            return result
        if isinstance(image, Image.Image):
            return Image.fromarray(result.image)
        return result.image

    def reenact(self, photo: np.ndarray, driving: Iterable[np.ndarray], fps: float,
                mode: Literal["relative", "absolute"] = "relative", smooth: bool = True) -> Iterator[np.ndarray]:
        """Frames of ``photo`` following the face in ``driving`` frames (uint8 HxWx3 each), for
        callers that bring their own video I/O; see :mod:`facexpr.pipeline.video`."""
        from facexpr.pipeline.video import reenact_frames

        return reenact_frames(self, _as_array(photo)[..., :3], driving, fps, mode, smooth)

    def edit_frames(self, frames: Iterable[np.ndarray], fps: float, target: Target,
                    max_faces: int = 4, smooth: bool = True) -> Iterator[np.ndarray]:
        """``frames`` with every tracked face showing ``target`` (smoothed over time)."""
        from facexpr.pipeline.video import edit_frames

        return edit_frames(self, frames, fps, target, max_faces, smooth)

    def edit_array(self, arr: np.ndarray, target: Target, faces: FaceSelection = "all") -> EditResult:
        self.check_target(target)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        rgb = np.ascontiguousarray(arr[..., :3])
        # Only the largest face wanted: the second detector (small faces) need not run.
        check_searchable(rgb.shape[1], rgb.shape[0])
        found = self.analyzer.analyze(rgb, complete=faces != "largest")
        timings["analysis"] = time.perf_counter() - t0
        if not found:
            raise NoFaceError("no face found in the photo")
        chosen = select_faces(found, faces)
        # Faces too small, cut by the edge or turned too far are left as they are and reported
        # (a fold or a smear would be worse); the others are still edited.
        why = refusals(found, rgb.shape[1], rgb.shape[0])
        refused = [(i, why[i]) for i in chosen if i in why]
        chosen = [i for i in chosen if i not in why]
        if not chosen:
            raise NoFaceError("no face in the photo can be edited: " + "; ".join(m for _, m in refused))
        result = self.edit_faces(arr, [found[i] for i in chosen], [target] * len(chosen), chosen, timings)
        result.refused = refused
        return result

    def looks(self, arr: np.ndarray, faces: Sequence[Face]) -> list[geo.FaceLook] | None:
        """What editing each of ``faces`` reads from ``arr`` whatever the target (None for the
        families that read nothing ahead): pass it to every :meth:`edit_faces` of the same
        ``arr`` and ``faces``."""
        if self.geometry is None:
            return None
        return [geo.face_look(self.geometry, arr, f.landmarks) for f in faces]

    def edit_faces(
        self,
        arr: np.ndarray,
        faces: Sequence[Face],
        targets: Sequence[Target | np.ndarray],
        indices: Sequence[int] | None = None,
        timings: dict[str, float] | None = None,
        looks: Sequence[geo.FaceLook] | None = None,
    ) -> EditResult:
        """Edit already-analysed faces; a target may be a Target or an explicit (17,) AU vector.

        Used directly by animation and video code that analyses once and edits many times; such
        code passes the faces' :meth:`looks` in ``arr``, worked out once, to every edit of ``arr``.
        """
        timings = {} if timings is None else timings
        indices = list(range(len(faces))) if indices is None else list(indices)
        out = arr.copy()
        if not faces:
            return EditResult(out, [], timings)
        s = self.image_size

        t0 = time.perf_counter()
        source_aus = [aus_from_blendshapes(f.blendshapes, f.landmarks) for f in faces]
        target_aus = np.stack([
            np.asarray(t, np.float32) if isinstance(t, np.ndarray) else t.aus_for(a)
            for t, a in zip(targets, source_aus)
        ]).astype(np.float32)
        if self.geometry is not None:
            timings["targets"] = time.perf_counter() - t0
            return self._edit_geometry(out, faces, source_aus, target_aus, indices, timings, looks)
        if self.nst is not None:
            return self._edit_nst(out, faces, targets, source_aus, target_aus, indices, timings)
        condition = self.runner.condition  # type: ignore[union-attr]
        values = target_aus if condition.kind == "aus" else \
            np.stack([label_values(t, condition, self.info.name) for t in targets])
        small = [align_face(arr[..., :3], f.landmarks, s) for f in faces]
        crops = np.stack([a.crop for a in small])
        timings["alignment"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        maps = self.runner(crops, values)
        timings["generator"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        edits: list[FaceEdit] = []
        for i, face in enumerate(faces):
            work = work_size_for(face.landmarks, s)
            big = align_face(arr[..., :3], face.landmarks, work) if work != s else small[i]
            delta, mask = self._compose(big.crop, crops[i], {k: v[i] for k, v in maps.items()},
                                        small[i].landmarks, work)
            out = paste_delta(out, delta, big.matrix, mask)
            edits.append(FaceEdit(
                index=indices[i], box=face.box, source_aus=source_aus[i], target_aus=target_aus[i],
                matrix=big.matrix, work_size=work, mask=mask, crop=crops[i],
                result=np.clip((maps["result"][i] + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8),
                attention=maps.get("attention", [None] * len(faces))[i],
            ))
        if geo.is_grey(arr):  # a greyscale photo stays greyscale (the generator paints in colour)
            out[..., :3] = _luma(out[..., :3])[..., None]
        timings["paste"] = time.perf_counter() - t0
        return EditResult(out, edits, timings)

    def _edit_geometry(
        self,
        out: np.ndarray,
        faces: Sequence[Face],
        source_aus: list[np.ndarray],
        target_aus: np.ndarray,
        indices: list[int],
        timings: dict[str, float],
        looks: Sequence[geo.FaceLook] | None = None,
    ) -> EditResult:
        """Geometry family: each face is warped, shaded and mouth-filled in place, in turn."""
        assert self.geometry is not None
        s = self.image_size
        edits: list[FaceEdit] = []
        for name in ("rig", "warp", "shading", "mouth", "paste"):
            timings.setdefault(name, 0.0)
        for i, face in enumerate(faces):
            matrix = alignment_matrix(face.landmarks, s)
            before = deferred_crop(out[..., :3], matrix, s)
            with one_blas_thread():  # numpy's idle BLAS threads would spin on the core the edit needs
                edit = geo.edit_face(self.geometry, out, face.landmarks, source_aus[i], target_aus[i],
                                     None if looks is None else looks[i])
            t0 = time.perf_counter()
            mask: np.ndarray | Later = np.zeros((s, s), np.float32)
            if edit is not None:
                x0, y0, x1, y1 = edit.box
                copy_where(out[y0:y1, x0:x1, :3], edit.pixels, edit.mask)
                for k, v in edit.timings.items():
                    timings[k] = timings.get(k, 0.0) + v
                shifted = matrix.copy()
                shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
                mask = Later(_warped_mask(edit.mask, shifted, s))
            after = deferred_crop(out[..., :3], matrix, s)
            timings["paste"] += time.perf_counter() - t0
            record = FaceEdit(
                index=indices[i], box=face.box, source_aus=source_aus[i], target_aus=target_aus[i],
                matrix=matrix, work_size=s, mask=mask, crop=Later(before), result=Later(after),  # type: ignore[arg-type]
            )
            record.attention = Later(_one_minus(record))  # type: ignore[assignment]
            edits.append(record)
        return EditResult(out, edits, timings)

    def _edit_nst(
        self,
        out: np.ndarray,
        faces: Sequence[Face],
        targets: Sequence[Target | np.ndarray],
        source_aus: list[np.ndarray],
        target_aus: np.ndarray,
        indices: list[int],
        timings: dict[str, float],
    ) -> EditResult:
        """Neural style transfer: each face restyled after the reference photo's face, in turn."""
        assert self.nst is not None
        s = self.image_size
        edits: list[FaceEdit] = []
        for i, (face, target) in enumerate(zip(faces, targets)):
            self.check_target(target)
            assert isinstance(target, ReferenceTarget) and target.image is not None
            t0 = time.perf_counter()
            before = align_face(out[..., :3], face.landmarks, s)
            res = self.nst.transfer(out, target.image, photo_face=face, reference_face=target.landmarks,
                                     progress=self.progress)
            out = res.image
            timings["style transfer"] = timings.get("style transfer", 0.0) + time.perf_counter() - t0
            after = align_face(out[..., :3], face.landmarks, s)
            mask = cv2.resize(res.mask, (s, s), interpolation=cv2.INTER_LINEAR)
            edits.append(FaceEdit(
                index=indices[i], box=face.box, source_aus=source_aus[i], target_aus=target_aus[i],
                matrix=before.matrix, work_size=s, mask=mask, crop=before.crop, result=after.crop,
                attention=1.0 - mask,
            ))
        return EditResult(out, edits, timings)

    def _compose(
        self,
        big: np.ndarray,
        small: np.ndarray,
        maps: dict[str, np.ndarray],
        small_landmarks: np.ndarray | None,
        work: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The edited face at the working resolution, and the paste mask (work x work).

        ``big`` is the full-resolution working crop, ``small`` the model-size input crop.
        """
        s = self.image_size
        region = face_mask(small_landmarks, s)
        if "attention" not in maps:  # a family that paints the whole crop (StarGAN, CycleGAN, ...)
            maps = {**maps, "attention": change_attention(maps["result"], small), "colour": maps["result"]}
        attention = np.clip(maps["attention"], 0.0, 1.0)
        big_f = big.astype(np.float32)
        if maps.get("flow") is not None and maps.get("texture") is not None:
            offset = flow_offset(maps["flow"])
            mask_small = change_mask(attention, region, motion=np.linalg.norm(offset, axis=2) * s / 2.0)
            base = warp_with_flow(big_f, offset)
            fill = maps["texture"]
        else:
            mask_small = change_mask(attention, region)
            base = big_f
            fill = maps["colour"]
        fill = (fill + 1.0) * 127.5
        fill = fill - colour_cast(fill, small, attention, mask_small)
        if work != s:
            resize = lambda a: cv2.resize(a, (work, work), interpolation=cv2.INTER_CUBIC)  # noqa: E731
            attention = np.clip(resize(attention), 0.0, 1.0)
            fill = resize(fill)
            mask = np.clip(resize(mask_small), 0.0, 1.0)
        else:
            mask = mask_small
        a = attention[..., None]
        # The edit as a difference from the photo's own crop: where it is zero the photo keeps
        # its full detail (see paste_delta).
        delta = a * (base - big_f) + (1.0 - a) * (fill - big_f)
        return delta, mask


def _warped_mask(mask: np.ndarray, matrix: np.ndarray, size: int) -> Callable[[], np.ndarray]:
    """A geometry edit's paste mask (over its box) in the aligned record crop, when called."""
    return lambda: cv2.warpAffine(mask.astype(np.float32), matrix, (size, size), flags=cv2.INTER_LINEAR)


def _one_minus(record: FaceEdit) -> Callable[[], np.ndarray]:
    """``1 - record.mask``, when called: a geometry edit's attention record."""
    return lambda: 1.0 - record.mask


#: Colour change (0..255 per channel, mean over channels) at which a painting family's pixel
#: counts as fully replaced; smaller changes blend in proportionally.
CHANGE_FULL = 24.0


def change_attention(result: np.ndarray, source: np.ndarray) -> np.ndarray:
    """An attention map (1 = keep the photo) for a family that outputs only a whole image.

    Where the generator reproduces the source (reconstruction noise of a few grey levels) the
    photo's own full-resolution pixels are kept; where it changed the face, its pixels are used.
    The change is smoothed first so the map has no pixel noise of its own.
    """
    painted = (np.asarray(result, np.float32) + 1.0) * 127.5
    diff = np.abs(painted - source.astype(np.float32)).mean(axis=2)
    k = max(3, int(round(source.shape[0] / 32)) | 1)
    diff = cv2.GaussianBlur(diff, (k, k), 0)
    return np.clip(1.0 - (diff - CHANGE_THRESHOLD * 255) / CHANGE_FULL, 0.0, 1.0).astype(np.float32)


def colour_cast(fill: np.ndarray, source: np.ndarray, attention: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel colour offset of the generated pixels against the source, (3,) float32.

    A generator trained briefly (or on differently lit data) can tint what it paints. An
    expression change moves only part of the changed area far from the source colour (teeth,
    mouth interior, shadows of creases), so the *median* difference over the pixels it paints is a
    robust estimate of a global tint; subtracting it keeps the painted region colour-consistent
    with the skin around it while leaving local changes intact.
    """
    weight = (1.0 - attention) * mask
    sel = weight > 0.25
    if sel.sum() < 16:
        return np.zeros(3, np.float32)
    diff = fill[sel] - source[sel].astype(np.float32)
    return np.median(diff, axis=0).astype(np.float32)


def flow_offset(flow: np.ndarray) -> np.ndarray:
    """(S, S, 2) absolute sampling positions in [-1, 1] grid units -> offsets from the identity."""
    size = flow.shape[0]
    centres = (2.0 * np.arange(size, dtype=np.float32) + 1.0) / size - 1.0
    ident = np.stack(np.meshgrid(centres, centres, indexing="xy"), axis=2)
    return flow.astype(np.float32) - ident


def warp_with_flow(image: np.ndarray, offset: np.ndarray, interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Warp ``image`` (W x W x 3 float) by a model-size flow offset upsampled to W.

    ``offset`` is (S, S, 2) in normalised [-1, 1] grid units (x, y): the model's absolute sampling
    positions minus the identity grid (``grid_sample(align_corners=False)`` convention).
    Upsampling the *offsets* (not the positions, which would clamp the crop's border) and
    sampling the full-resolution crop with bicubic interpolation keeps the photo's sharpness.
    """
    w = image.shape[0]
    up = cv2.resize(offset.astype(np.float32), (w, w), interpolation=cv2.INTER_LINEAR)
    px = np.arange(w, dtype=np.float32)
    map_x = px[None, :] + up[..., 0] * w / 2.0
    map_y = px[:, None] + up[..., 1] * w / 2.0
    return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
