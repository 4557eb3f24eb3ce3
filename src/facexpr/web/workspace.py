"""What the web page's server keeps: its temp folder, each visitor's analysed photo, the models.

This module knows nothing of the web framework, so the page's behaviour (limits, caching,
targets, downloads, clean-up) is plain Python that tests can drive directly; :mod:`facexpr.web.app`
only wires it to widgets.

Why it is shaped like this:

- **Analyse once, edit many times.** Detection and landmarks cost ~1 s on a 1 MP photo, an
  edit of an analysed face ~0.1 s. A visitor's photo is analysed once per upload and kept
  (:class:`Photo`); every slider move edits from that cache with ``Editor.edit_faces``.
- **One folder the server owns.** Everything a visitor sends or gets back lives under
  :attr:`Workspace.root` (a fresh ``tempfile.mkdtemp``): uploads arrive in ``cache/`` (the web
  framework's cache), each visitor gets ``visitors/<id>/``. A visitor's folder is deleted when
  the page is closed or after :data:`IDLE_SECONDS`; the whole root when the server stops.
- **No client path is ever opened.** An upload is a path the server itself wrote under
  ``cache/``; :meth:`Workspace.accept` refuses anything that resolves elsewhere (a crafted
  request naming ``/etc/passwd``) before it is read. The client's file name is kept only for
  messages and download names.
- **One model call at a time per model.** MediaPipe's landmarker and the models are not
  thread-safe, and on a small CPU machine parallel edits only interleave; each editor has a lock,
  while file writing and preview encoding run outside it.
- **Videos hold the lock one frame at a time.** Reenacting a photo or editing a clip goes through
  :mod:`facexpr.pipeline.video` with the same editor, behind a wrapper that takes the editor's
  lock for each frame's edit, so a long video does not stall other visitors' photo edits. The
  photo's cached faces are reused: reenactment does not analyse the photo again.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facexpr.errors import ConfigError, FacexprError, ImageReadError, NoFaceError
from facexpr.expression import AU_NAMES, AU_RANGE, interpolate
from facexpr.face.aus import aus_from_blendshapes
from facexpr.face.detect import Face
from facexpr.face.limits import refusals
from facexpr.imageio import DEFAULT_MAX_PIXELS, LoadedImage, load_image, save_image
from facexpr.pipeline.animate import ease, write_animation
from facexpr.pipeline.editor import Editor
from facexpr.pipeline.registry import default_model_name, resolve_model, shipped_models
from facexpr.pipeline.targets import EmotionTarget, ReferenceTarget
from facexpr.pipeline.video import (
    VIDEO_SUFFIXES,
    VideoError,
    VideoInfo,
    VideoReport,
    edit_video,
    probe,
    reenact,
)

log = logging.getLogger(__name__)

#: Longest side of the previews sent to the page (downloads are always full resolution).
PREVIEW_SIDE = 1280
#: Longest side of animation frames: a 24-frame GIF of a 12 MP photo would be hundreds of MB.
ANIMATION_SIDE = 720
#: A visitor idle this long is forgotten and their files deleted (closing the page does it sooner).
IDLE_SECONDS = 3600.0
#: At most this many visitors keep a photo in memory; the longest idle is dropped first.
MAX_VISITORS = 32
#: Suffixes kept from the client's file name for the server's copy (the content decides the
#: format; the suffix only helps a person reading the folder).
_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", *VIDEO_SUFFIXES}
#: Face picker value meaning "every face found".
ALL_FACES = "all"


@dataclass(frozen=True)
class Limits:
    """What an upload may be: its size in bytes and in pixels."""

    max_upload_bytes: int = 25 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_video_seconds: float = 60.0  #: longest video accepted (reenactment writes one frame per frame)

    @property
    def max_upload_mb(self) -> float:
        return self.max_upload_bytes / (1024 * 1024)


@dataclass(frozen=True)
class Upload:
    """A file the server received: where the server wrote it, and the name the client gave it.

    ``name`` is never used as a path; it is only shown in messages and used (sanitised) to name
    downloads.
    """

    path: Path
    name: str


@dataclass
class Photo:
    """A visitor's analysed photo: the decoded image, its faces and their own AUs."""

    loaded: LoadedImage
    name: str  #: the client's file name (display only)
    faces: list[Face]
    own_aus: list[np.ndarray]  #: (17,) per face, OpenFace scale 0..5
    preview_scale: float  #: preview pixels per photo pixel (<= 1)
    #: index -> "face N is turned too far to edit (...)" for faces shown but not edited
    refused: dict[int, str] = field(default_factory=dict)

    @property
    def rgb(self) -> np.ndarray:
        return self.loaded.rgb

    @property
    def stem(self) -> str:
        """A safe file-name stem from the client's name."""
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(self.name).stem).strip("_")
        return stem[:60] or "photo"


@dataclass
class Edit:
    """The latest edit of a visitor's photo."""

    image: np.ndarray  #: full resolution, uint8 HxWx3
    indices: list[int]  #: which faces were edited
    targets: list[np.ndarray]  #: the (17,) AU target of each edited face
    model: str
    seconds: float
    version: int
    refused: list[str] = field(default_factory=list)  #: why picked faces were left as they are


@dataclass
class Video:
    """A visitor's uploaded video: the server's copy, the client's name, what ffmpeg says of it."""

    path: Path
    name: str  #: the client's file name (display only)
    info: VideoInfo

    @property
    def stem(self) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(self.name).stem).strip("_")
        return stem[:60] or "video"


class _LockedEditor:
    """An editor as the video pipeline sees it: each call takes the editor's lock, and the photo
    "analysis" returns the face already cached for it (no second analysis)."""

    def __init__(self, editor: Editor, lock: threading.Lock, faces: list[Face] | None = None) -> None:
        self._editor, self._lock, self._faces = editor, lock, faces
        self.info = editor.info

    @property
    def analyzer(self) -> _LockedEditor:
        return self

    def analyze(self, rgb: np.ndarray, **kwargs: object) -> list[Face]:
        if self._faces is not None:
            return list(self._faces)
        with self._lock:
            return self._editor.analyzer.analyze(rgb, **kwargs)

    def looks(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._editor.looks(*args, **kwargs)

    def edit_faces(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._editor.edit_faces(*args, **kwargs)


@dataclass
class Visitor:
    """One open page: its folder, its photo, what it last asked for."""

    folder: Path
    photo: Photo | None = None
    reference: ReferenceTarget | None = None
    reference_name: str = ""
    #: AU values the sliders showed when the face was picked (rounded as shown): a slider
    #: counts as moved when it differs from this, so untouched sliders never nudge the face.
    baseline: np.ndarray = field(default_factory=lambda: np.zeros(len(AU_NAMES), np.float32))
    emotion: str | None = None  #: last emotion button pressed (the intensity slider re-applies it)
    last_kind: str | None = None  #: "emotion", "aus" or "reference"
    edit: Edit | None = None
    written: tuple[int, list[Path]] | None = None  #: (edit version, download files)
    video: Video | None = None  #: the latest uploaded video
    video_out: Path | None = None  #: the latest video written for this visitor
    touched: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _counter: int = 0

    def next_version(self) -> int:
        self._counter += 1
        return self._counter


def preview(rgb: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """``rgb`` shrunk so its longest side is at most ``side`` (area averaging: no aliasing)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def draw_faces(image: np.ndarray, faces: list[Face], scale: float, selected: str = "0",
               refused: Collection[int] = ()) -> np.ndarray:
    """Boxes with their indices (0 = largest) on a preview; the picked face(s) in green, faces
    that will not be edited (``refused``) in red, so every face found is shown."""
    out = np.ascontiguousarray(image.copy())
    side = max(out.shape[:2])
    # Thin enough for a crowd of small faces, labels readable when the page shows the image small.
    thick = max(2, round(side / 600))
    font_scale = max(0.5, side / 1600)
    for i, face in enumerate(faces):
        x0, y0, x1, y1 = (np.asarray(face.box, np.float64) * scale).round().astype(int)
        chosen = selected == ALL_FACES or selected == str(i)
        colour = (220, 40, 40) if i in refused else (40, 200, 70) if chosen else (255, 190, 40)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick, cv2.LINE_AA)
        label = str(i)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        ty = max(y0, th + base + 2 * thick)
        cv2.rectangle(out, (x0, ty - th - base - 2 * thick), (x0 + tw + 2 * thick, ty), colour, -1)
        cv2.putText(out, label, (x0 + thick, ty - base - thick), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), thick, cv2.LINE_AA)
    return out


def face_at(faces: list[Face], x: float, y: float) -> int | None:
    """Index of the smallest face box containing photo point (x, y), or None."""
    hits = [(float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])), i) for i, f in enumerate(faces)
            if f.box[0] <= x <= f.box[2] and f.box[1] <= y <= f.box[3]]
    return min(hits)[1] if hits else None


def _rewrite(exc: FacexprError, path: Path, name: str) -> FacexprError:
    """The same error with the server's copy replaced by the client's file name in its message."""
    return type(exc)(str(exc).replace(str(path), name))


class Workspace:
    """The server's state: temp root, models, visitors. Thread-safe; close it when done."""

    def __init__(self, model: str | None = None, limits: Limits = Limits(), root: Path | None = None) -> None:
        self.limits = limits
        info = resolve_model(model)  # fails early, before the server starts, on a bad --model
        self.default_model = info.name
        self._extra_models = {} if info.name in shipped_models() else {info.name: str(info.path)}
        self.root = Path(tempfile.mkdtemp(prefix="facexpr-web-", dir=root)).resolve()
        self.cache = self.root / "cache"
        self.visitors_dir = self.root / "visitors"
        self.cache.mkdir()
        self.visitors_dir.mkdir()
        self._visitors: dict[str, Visitor] = {}
        self._editors: dict[str, tuple[Editor, threading.Lock]] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- models ------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Models offered on the page: the shipped ones (default first) and a --model folder.

        Style transfer (``nst``) is left out: it needs a reference photo for every edit and takes
        seconds to minutes, which the page's sliders cannot drive."""
        names = [self.default_model, *self._extra_models]
        try:
            names.append(default_model_name())
        except ConfigError:
            pass
        names += [name for name, info in shipped_models().items() if info.condition.kind != "reference"]
        return list(dict.fromkeys(names))

    def editor(self, name: str | None = None) -> tuple[Editor, threading.Lock]:
        """The editor for a model name offered on the page (loaded on first use) and its lock."""
        name = name or self.default_model
        if name not in self.model_names():
            raise ConfigError(f"unknown model {name!r}; pick one of {', '.join(self.model_names())}")
        with self._lock:
            if name not in self._editors:
                self._editors[name] = (Editor.from_pretrained(self._extra_models.get(name, name)), threading.Lock())
            return self._editors[name]

    # -- visitors ----------------------------------------------------------------------------
    def visitor(self, key: str | None) -> Visitor:
        """The visitor of a page session (created on first use); idle ones are forgotten."""
        if not key or not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", key):
            key = f"anon-{uuid.uuid4().hex}"  # no usable session id: a throw-away visitor
        with self._lock:
            if self._closed:
                raise FacexprError("the server is shutting down")
            self._forget_idle(keep=key)
            v = self._visitors.get(key)
            if v is None:
                folder = self.visitors_dir / uuid.uuid4().hex  # never named after client input
                folder.mkdir()
                v = self._visitors[key] = Visitor(folder)
            v.touched = time.monotonic()
            return v

    def end(self, key: str | None) -> None:
        """The page was closed: forget the visitor and delete their files."""
        with self._lock:
            v = self._visitors.pop(key or "", None)
        if v is not None:
            shutil.rmtree(v.folder, ignore_errors=True)

    def _forget_idle(self, keep: str) -> None:
        now = time.monotonic()
        idle = sorted(((k, v) for k, v in self._visitors.items() if k != keep), key=lambda kv: kv[1].touched)
        drop = [k for k, v in idle if now - v.touched > IDLE_SECONDS]
        drop += [k for k, _ in idle[: max(0, len(idle) - MAX_VISITORS + 1)] if k not in drop]
        for k in drop:
            v = self._visitors.pop(k)
            shutil.rmtree(v.folder, ignore_errors=True)

    @property
    def visitor_count(self) -> int:
        return len(self._visitors)

    def close(self) -> None:
        """Release the models and delete every file the server wrote."""
        with self._lock:
            self._closed = True
            editors = list(self._editors.values())
            self._editors.clear()
            self._visitors.clear()
        for editor, _ in editors:
            editor.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- uploads -----------------------------------------------------------------------------
    def accept(self, upload: Upload, visitor: Visitor, kind: str = "photo") -> Path:
        """Check an upload and move it into the visitor's folder; the copy's path.

        Refused: anything not written by this server under ``cache/`` (whatever the request
        says), and files over the size limit.
        """
        try:
            src = Path(upload.path).resolve(strict=True)
        except (OSError, RuntimeError):
            raise ImageReadError(f"{upload.name}: the upload did not arrive; try again") from None
        if not src.is_relative_to(self.cache) or not src.is_file():
            log.warning("refused a request naming a file outside the upload folder: %s", upload.path)
            raise ImageReadError(f"{upload.name}: not a file uploaded to this page; upload it again")
        size = src.stat().st_size
        if size > self.limits.max_upload_bytes:
            src.unlink(missing_ok=True)
            raise ImageReadError(
                f"{upload.name}: {size / 1048576:.1f} MB is over this page's "
                f"{self.limits.max_upload_mb:.3g} MB upload limit; use a smaller file")
        suffix = Path(upload.name).suffix.lower()
        dst = visitor.folder / f"{kind}-{visitor.next_version()}{suffix if suffix in _SUFFIXES else ''}"
        shutil.move(src, dst)
        return dst

    def _load(self, upload: Upload, visitor: Visitor, kind: str) -> LoadedImage:
        path = self.accept(upload, visitor, kind)
        try:
            return load_image(path, max_pixels=self.limits.max_pixels)
        except FacexprError as exc:
            path.unlink(missing_ok=True)
            raise _rewrite(exc, path, upload.name) from None

    # -- what the page does ------------------------------------------------------------------
    def open_photo(self, visitor: Visitor, upload: Upload, model: str | None = None) -> Photo:
        """Load and analyse an uploaded photo (once), replacing the visitor's previous one."""
        with visitor.lock:
            if visitor.photo is not None:  # a new upload replaces the photo, whatever happens next
                visitor.photo.loaded.path.unlink(missing_ok=True)
            for f in visitor.folder.glob("*-edited.*"):
                f.unlink(missing_ok=True)
            visitor.photo = visitor.edit = visitor.written = None
            visitor.last_kind = visitor.emotion = None
            loaded = self._load(upload, visitor, "photo")
            editor, lock = self.editor(model)
            with lock:
                faces = editor.faces(loaded.rgb)
            if not faces:
                loaded.path.unlink(missing_ok=True)
                raise NoFaceError(f"no face found in {upload.name}; use a photo where a face is clearly "
                                  f"visible (frontal or half-profile)")
            h, w = loaded.rgb.shape[:2]
            own = [aus_from_blendshapes(f.blendshapes, f.landmarks) for f in faces]
            visitor.photo = Photo(loaded, upload.name, faces, own, min(1.0, PREVIEW_SIDE / max(h, w)),
                                  refusals(faces, w, h))
            visitor.baseline = self.slider_values(visitor, "0")
            return visitor.photo

    def slider_values(self, visitor: Visitor, selected: str) -> np.ndarray:
        """The AU sliders' starting values for a face pick: that face's own AUs (face 0 for all)."""
        photo = self._photo(visitor)
        i = 0 if selected == ALL_FACES else self._indices(photo, selected)[0]
        return np.round(photo.own_aus[i], 1).astype(np.float32)

    def pick_face(self, visitor: Visitor, selected: str) -> np.ndarray:
        """A new face pick: the sliders restart at its own AUs (returned)."""
        with visitor.lock:
            visitor.baseline = self.slider_values(visitor, selected)
            return visitor.baseline.copy()

    def set_reference(self, visitor: Visitor, upload: Upload, model: str | None = None) -> ReferenceTarget:
        """The expression of the largest face in a reference photo, kept for this visitor."""
        with visitor.lock:
            loaded = self._load(upload, visitor, "reference")
            editor, lock = self.editor(model)
            try:
                with lock:
                    ref = editor.reference(loaded.rgb, label=upload.name)
            finally:
                loaded.path.unlink(missing_ok=True)  # only its AUs are needed
            visitor.reference, visitor.reference_name = ref, upload.name
            return ref

    def targets(self, visitor: Visitor, kind: str, selected: str, *, emotion: str | None = None,
                intensity: float = 1.0, sliders: np.ndarray | None = None) -> tuple[list[int], list[np.ndarray]]:
        """Which faces to edit and the (17,) AU target of each.

        ``aus``: each slider moved away from where it started (the picked face's own value) moves
        that AU by as much on every edited face; untouched AUs keep each face's own value.
        """
        photo = self._photo(visitor)
        indices = self._indices(photo, selected)
        own = [photo.own_aus[i] for i in indices]
        if kind == "emotion":
            if emotion is None:
                raise ConfigError("press an emotion button first")
            target = EmotionTarget(emotion, float(intensity))
            return indices, [target.aus_for(a) for a in own]
        if kind == "aus":
            values = np.asarray(sliders, np.float32).reshape(-1)
            if values.shape != (len(AU_NAMES),):
                raise ConfigError(f"expected {len(AU_NAMES)} Action Unit values, got {values.shape}")
            moved = np.abs(values - visitor.baseline) > 1e-3
            delta = np.where(moved, values - visitor.baseline, 0.0)
            return indices, [np.clip(a + delta, *AU_RANGE).astype(np.float32) for a in own]
        if kind == "reference":
            if visitor.reference is None:
                raise ConfigError("upload a reference photo first")
            return indices, [visitor.reference.aus_for(a) for a in own]
        raise ConfigError(f"unknown kind of target {kind!r}")

    def edit(self, visitor: Visitor, kind: str, selected: str, model: str | None = None, **target) -> Edit:
        """Edit the visitor's cached faces (no new analysis) and keep the result."""
        with visitor.lock:
            photo = self._photo(visitor)
            indices, aus = self.targets(visitor, kind, selected, **target)
            # The same refusals as `facexpr edit` (face.limits): shown, said, never edited.
            refused = [photo.refused[i] for i in indices if i in photo.refused]
            keep = [k for k, i in enumerate(indices) if i not in photo.refused]
            if not keep:
                raise NoFaceError("; ".join(refused) + " (pick another face)")
            indices, aus = [indices[k] for k in keep], [aus[k] for k in keep]
            editor, lock = self.editor(model)
            t0 = time.perf_counter()
            with lock:
                result = editor.edit_faces(photo.rgb, [photo.faces[i] for i in indices], aus, indices)
            visitor.last_kind = kind
            if kind == "emotion":
                visitor.emotion = target.get("emotion")
            visitor.edit = Edit(result.image, indices, aus, editor.info.name,
                                time.perf_counter() - t0, visitor.next_version(), refused)
            return visitor.edit

    def reset(self, visitor: Visitor) -> None:
        """Back to the photo as uploaded."""
        with visitor.lock:
            visitor.edit = None
            visitor.last_kind = visitor.emotion = None

    def downloads(self, visitor: Visitor) -> list[Path]:
        """The latest edit as full-resolution PNG and JPEG (JPEG written like the input was).

        Written once per edit, after the preview went out, so a slider move is not slowed down
        by encoding a large PNG.
        """
        with visitor.lock:
            photo, edit = visitor.photo, visitor.edit
            if photo is None or edit is None:
                return []
            if visitor.written is not None and visitor.written[0] == edit.version:
                return visitor.written[1]
            png = visitor.folder / f"{photo.stem}-edited.png"
            jpg = visitor.folder / f"{photo.stem}-edited.jpg"
            save_image(png, edit.image, alpha=photo.loaded.alpha)
            save_image(jpg, edit.image, like=photo.loaded)
            visitor.written = (edit.version, [png, jpg])
            return [png, jpg]

    def animate(self, visitor: Visitor, model: str | None = None, frames: int = 16, fps: float = 12.0,
                back: bool = False, fmt: str = "gif") -> Path:
        """Frames from each edited face's own expression to its latest target, as GIF or MP4."""
        fmt = fmt.lower().lstrip(".")
        if fmt not in ("gif", "mp4"):
            raise ConfigError(f"animations are GIF or MP4, not {fmt!r}")
        if not 2 <= int(frames) <= 120:
            raise ConfigError(f"an animation has 2 to 120 frames, not {frames}")
        with visitor.lock:
            photo, last = self._photo(visitor), visitor.edit
            if last is None:
                raise ConfigError("make an edit first (an emotion, a slider or a reference): "
                                  "the animation moves from the face's own expression to it")
            editor, lock = self.editor(model)
            faces = [photo.faces[i] for i in last.indices]
            ts = ease(np.linspace(0.0, 1.0, int(frames), dtype=np.float32))
            paths = [interpolate(photo.own_aus[i], t, ts) for i, t in zip(last.indices, last.targets)]
            out = [preview(photo.rgb, ANIMATION_SIDE)]
            with lock:
                looks = editor.looks(photo.rgb, faces)
            for k in range(1, int(frames)):
                with lock:
                    image = editor.edit_faces(photo.rgb, faces, [p[k] for p in paths], last.indices, looks=looks).image
                out.append(preview(image, ANIMATION_SIDE))
            if back:
                out += out[-2:0:-1]
            path = visitor.folder / f"{photo.stem}-animation.{fmt}"
            return write_animation(out, path, fps=float(fps))

    # -- videos ------------------------------------------------------------------------------
    def open_video(self, visitor: Visitor, upload: Upload) -> Video:
        """Check an uploaded video (size, readable, duration) and keep it for this visitor."""
        with visitor.lock:
            if visitor.video is not None:
                visitor.video.path.unlink(missing_ok=True)
                visitor.video = None
            try:
                path = self.accept(upload, visitor, "video")
            except ImageReadError as exc:
                raise VideoError(str(exc)) from None
            try:
                info = probe(path)
                seconds = info.duration or self._count_seconds(path)
                limit = self.limits.max_video_seconds
                if seconds > limit:
                    raise VideoError(f"{upload.name}: {seconds:.1f} s is longer than this page's {limit:g} s "
                                     f"video limit; cut it shorter (or use facexpr reenact / facexpr edit)")
            except FacexprError as exc:
                path.unlink(missing_ok=True)
                raise _rewrite(exc, path, upload.name) from None
            visitor.video = Video(path, upload.name, info)
            return visitor.video

    @staticmethod
    def _count_seconds(path: Path) -> float:
        """Duration by decoding, for containers that do not say it."""
        import imageio_ffmpeg

        try:
            return float(imageio_ffmpeg.count_frames_and_secs(str(path))[1])
        except (OSError, RuntimeError) as exc:
            raise VideoError(f"{path}: cannot tell how long the video is ({exc})") from None

    def reenact(self, visitor: Visitor, model: str | None = None, selected: str = "0", mode: str = "relative",
                progress: Callable[[int, int], None] | None = None) -> VideoReport:
        """The visitor's photo (the picked face) following the face of their video, as an MP4."""
        with visitor.lock:
            photo, video = self._photo(visitor), visitor.video
            if video is None:
                raise ConfigError("upload a driving video first")
            face = photo.faces[0 if selected == ALL_FACES else self._indices(photo, selected)[0]]
            out = self._video_path(visitor, f"{photo.stem}-reenacted")
        editor, lock = self.editor(model)
        return self._write_video(visitor, video, out, lambda tick: reenact(
            _LockedEditor(editor, lock, [face]), photo.rgb, video.path, out, mode=mode, progress=tick), progress)

    def edit_video(self, visitor: Visitor, model: str | None = None, emotion: str | None = None,
                   intensity: float = 1.0, max_faces: int = 4,
                   progress: Callable[[int, int], None] | None = None) -> VideoReport:
        """Every face of the visitor's video showing an emotion, as an MP4."""
        with visitor.lock:
            video = visitor.video
            if video is None:
                raise ConfigError("upload a video first")
            if not emotion:
                raise ConfigError("press an emotion button first (Edit tab); its intensity applies too")
            target = EmotionTarget(emotion, float(intensity))
            out = self._video_path(visitor, f"{video.stem}-{target.name}")
        editor, lock = self.editor(model)
        return self._write_video(visitor, video, out, lambda tick: edit_video(
            _LockedEditor(editor, lock), video.path, out, target, max_faces, progress=tick), progress)

    def _video_path(self, visitor: Visitor, stem: str) -> Path:
        return visitor.folder / f"{stem}-{visitor.next_version()}.mp4"

    def _write_video(self, visitor: Visitor, video: Video, out: Path,
                     run: Callable[[Callable[[int], None]], VideoReport],
                     progress: Callable[[int, int], None] | None) -> VideoReport:
        """Run a video job (outside the visitor's lock: it takes seconds to minutes); keep only
        the visitor's latest result."""
        total = video.info.frames_estimate
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, max(total, done))

        try:
            report = run(tick)
        except FacexprError as exc:
            raise _rewrite(exc, video.path, video.name) from None
        with visitor.lock:
            if visitor.video_out is not None and visitor.video_out != report.path:
                visitor.video_out.unlink(missing_ok=True)
            visitor.video_out = report.path
        return report

    # -- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _photo(visitor: Visitor) -> Photo:
        if visitor.photo is None:
            raise ConfigError("upload a photo first")
        return visitor.photo

    @staticmethod
    def _indices(photo: Photo, selected: str) -> list[int]:
        if selected in (None, "", ALL_FACES):
            return list(range(len(photo.faces))) if selected == ALL_FACES else [0]
        try:
            i = int(selected)
        except (TypeError, ValueError):
            raise ConfigError(f"pick a face: 0 to {len(photo.faces) - 1} or all") from None
        if not 0 <= i < len(photo.faces):
            raise ConfigError(f"face {i} does not exist: {len(photo.faces)} face(s) found")
        return [i]
