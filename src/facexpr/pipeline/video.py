"""Video: reenact a photo from a driving video, and change the expressions of faces in a clip.

Real time on a CPU comes from three choices:

* **One light pass per frame.** Only the landmarker's own pass runs (its BlazeFace detector
  costs ~2 ms); the slower second detector of still photos never does. Faces are kept apart
  across frames by matching boxes (:class:`FaceTracker`); a face that leaves and comes back
  starts a new track.
* **The geometry-driven editor.** It moves the frame's own pixels (no network but the small mouth
  one), at the frame's resolution.
* **Streaming.** Frames go from ffmpeg (imageio-ffmpeg's binary) through the editor to ffmpeg,
  one at a time; the driving audio is muxed into the output. The encoder runs libx264's
  ``veryfast`` preset (:data:`ENCODER_PRESET`): on two cores it shares the CPU with the editor.

Stability comes from a One-Euro filter (Casiez, Roussel, Vogel 2012) on landmarks, blendshapes
and AU targets: strong smoothing when things move slowly (no jitter), little lag when they move
fast. The parameters are in :data:`LANDMARK_FILTER`, :data:`EXPRESSION_FILTER`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facexpr.errors import ConfigError, FacexprError, NoFaceError, OutputError
from facexpr.face.aus import aus_from_blendshapes
from facexpr.face.detect import Face, FaceAnalyzer, box_iou

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")

ReenactMode = Literal["relative", "absolute"]


class VideoError(FacexprError):
    """A video that cannot be read or written."""


# -- reading and writing -----------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    size: tuple[int, int]  #: (width, height)
    duration: float  #: seconds, as the container says
    audio: bool

    @property
    def frames_estimate(self) -> int:
        return max(int(round(self.fps * self.duration)), 1)


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame rate, size, duration and audio of a video; :class:`VideoError` when unreadable."""
    import imageio_ffmpeg

    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{p}: file not found; check the path")
    if p.stat().st_size == 0:
        raise VideoError(f"{p}: the file is empty (0 bytes)")
    try:
        gen = imageio_ffmpeg.read_frames(str(p))
        meta = next(gen)
        gen.close()
    except (OSError, RuntimeError, StopIteration) as exc:
        raise VideoError(f"{p}: not a video ffmpeg can read ({_first_line(exc)}); convert it to "
                         "H.264 MP4 (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)") from exc
    fps = float(meta.get("fps") or 0.0)
    size = tuple(int(v) for v in meta.get("size") or (0, 0))
    if not fps > 0 or not all(size):
        raise VideoError(f"{p}: ffmpeg found no video stream (size {size}, {fps} fps)")
    return VideoInfo(p, fps, (size[0], size[1]), float(meta.get("duration") or 0.0), bool(meta.get("audio_codec")))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__


def read_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
    """The frames of a video as uint8 HxWx3 RGB arrays (decoded by ffmpeg, streamed)."""
    import imageio_ffmpeg

    info = probe(path)
    w, h = info.size
    gen = imageio_ffmpeg.read_frames(str(info.path), pix_fmt="rgb24")
    try:
        next(gen)  # metadata
        for buf in gen:
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    except RuntimeError as exc:
        raise VideoError(f"{info.path}: decoding failed ({_first_line(exc)}); the file may be damaged") from exc
    finally:
        gen.close()


#: libx264's preset. Its default (``medium``) took 23 ms of CPU per 1024 px frame of a reenacted
#: portrait, as much as half the edit, on a machine whose two cores also run the editor and the
#: landmarker; ``veryfast`` takes 12 ms, for 0.4 dB less PSNR against the frames handed to it
#: (43.9 -> 43.5 dB, at the same quality setting; the file 14 % smaller).
ENCODER_PRESET = "veryfast"


class VideoWriter:
    """H.264 MP4 writer that only ever leaves a complete, playable file (or none).

    Frames go to a temporary file beside the target; :meth:`finish` closes ffmpeg (which
    finalises the container) and renames it into place. If anything goes wrong before that,
    including Ctrl-C, the temporary file is removed and no output exists.
    """

    def __init__(self, path: str | os.PathLike[str], size: tuple[int, int], fps: float,
                 audio_from: Path | None = None) -> None:
        import imageio_ffmpeg

        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ConfigError(f"{self.path}: video output is written as .mp4")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.path.parent}: cannot create the folder ({exc.strerror or exc})") from exc
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.mp4")
        w, h = size
        self.size = (w - w % 2, h - h % 2)  # yuv420p needs even sizes
        self.frames = 0
        kwargs: dict[str, Any] = {}
        if audio_from is not None:
            kwargs = {"audio_path": str(audio_from), "audio_codec": "aac"}
        self._gen = imageio_ffmpeg.write_frames(
            str(self.tmp), self.size, fps=fps, codec="libx264", quality=7, macro_block_size=1,
            pix_fmt_out="yuv420p", ffmpeg_log_level="error", output_params=["-preset", ENCODER_PRESET], **kwargs)
        self._gen.send(None)

    def write(self, frame: np.ndarray) -> None:
        w, h = self.size
        self._gen.send(np.ascontiguousarray(frame[:h, :w, :3]))
        self.frames += 1

    def finish(self) -> Path:
        self._gen.close()
        if self.frames == 0:
            self.abort()
            raise VideoError(f"{self.path}: no frame was written")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._gen.close()
        except Exception:  # ffmpeg already gone: only the temporary file matters now
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()


# -- smoothing and tracking ---------------------------------------------------------------------


@dataclass(frozen=True)
class OneEuroParams:
    """One-Euro filter settings: ``min_cutoff`` (Hz) sets the smoothing at rest, ``beta`` how
    fast the cutoff rises with speed (per unit of the signal per second), ``d_cutoff`` (Hz) the
    smoothing of the speed estimate."""

    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0


#: Landmarks in pixels: at rest a 1.5 Hz cutoff removes the landmarker's sub-pixel jitter; at
#: 200 px/s (a head turn) the cutoff rises by 4 Hz so the face is not left behind.
LANDMARK_FILTER = OneEuroParams(min_cutoff=1.5, beta=0.02, d_cutoff=1.0)
#: Blendshapes (0..1) and AUs (0..5): expressions change within ~100 ms, so less lag is allowed.
EXPRESSION_FILTER = OneEuroParams(min_cutoff=2.0, beta=0.5, d_cutoff=1.0)


class OneEuroFilter:
    """The One-Euro filter on arrays (every element filtered independently)."""

    def __init__(self, params: OneEuroParams) -> None:
        self.p = params
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t: float | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None or self.t is None or t <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self.t
        dx = (x - self.x) / dt
        a_d = self._alpha(self.p.d_cutoff, dt)
        self.dx = self.dx + a_d * (dx - self.dx)
        cutoff = self.p.min_cutoff + self.p.beta * np.abs(self.dx)
        a = self._alpha(cutoff, dt)
        self.x = self.x + a * (x - self.x)
        self.t = t
        return self.x.copy()


@dataclass
class Track:
    """One face followed through a clip: its smoothed landmarks and blendshapes."""

    id: int
    face: Face
    landmarks: OneEuroFilter = field(default_factory=lambda: OneEuroFilter(LANDMARK_FILTER))
    blendshapes: OneEuroFilter = field(default_factory=lambda: OneEuroFilter(EXPRESSION_FILTER))
    last_seen: int = 0

    def update(self, face: Face, t: float, frame: int, smooth: bool = True) -> Face:
        if smooth:
            lm = self.landmarks(face.landmarks, t).astype(np.float32)
            bs = np.clip(self.blendshapes(face.blendshapes, t), 0.0, 1.0).astype(np.float32)
            face = Face(box=face.box, landmarks=lm, blendshapes=bs, pose=face.pose, score=face.score,
                        source=face.source)
        self.face = face
        self.last_seen = frame
        return face


class FaceTracker:
    """Faces of consecutive frames, matched to tracks by box overlap and smoothed.

    ``max_faces`` faces per frame; a face unmatched for ``forget`` frames is dropped and, when it
    comes back, gets a new track (its filter restarts instead of gliding from where it left).
    """

    def __init__(self, max_faces: int = 1, smooth: bool = True, forget: int = 5) -> None:
        # IMAGE mode, first pass only: deterministic per frame (MediaPipe's VIDEO mode refines
        # each frame from the previous one, so an unchanging face reads differently for ~20
        # frames, which relative reenactment would turn into motion); continuity comes from the
        # box matching and the One-Euro filters here. Its detector costs ~2 ms a frame.
        self.analyzer = FaceAnalyzer(max_faces=max_faces, fallback="none", tiles=False)
        self.smooth = smooth
        self.forget = forget
        self.tracks: list[Track] = []
        self._next_id = 0


    def close(self) -> None:
        self.analyzer.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, frame: np.ndarray, index: int, fps: float) -> list[tuple[int, Face]]:
        """(track id, smoothed face) for every face in ``frame`` (the ``index``-th frame)."""
        return self.assign(self.analyzer.analyze(frame), index, fps)

    def assign(self, faces: list[Face], index: int, fps: float) -> list[tuple[int, Face]]:
        """Match the faces found in the ``index``-th frame to tracks and smooth them."""
        t = index / fps
        self.tracks = [tr for tr in self.tracks if index - tr.last_seen <= self.forget]
        out: list[tuple[int, Face]] = []
        free = list(self.tracks)
        for face in faces:  # largest first: big faces pick their track first
            best = max(free, key=lambda tr: box_iou(tr.face.box, face.box), default=None)
            if best is None or box_iou(best.face.box, face.box) < 0.3:
                best = Track(self._next_id, face)
                self._next_id += 1
                self.tracks.append(best)
            else:
                free.remove(best)
            out.append((best.id, best.update(face, t, index, self.smooth)))
        return out


# -- frame generators (the Python API) -----------------------------------------------------------


def _analysed(frames: Iterable[np.ndarray], tracker: FaceTracker, fps: float,
              stats: dict[str, float]) -> Iterator[tuple[np.ndarray, list[tuple[int, Face]]]]:
    """(frame, tracked faces), the landmarker running one frame ahead in a worker thread.

    MediaPipe and the editor's OpenCV/numpy work both release the GIL, so analysing frame k+1
    while frame k is edited uses the second core: on two cores the slower of the two stages sets
    the pace instead of their sum.
    """
    from concurrent.futures import ThreadPoolExecutor

    def analyse(frame: np.ndarray) -> tuple[np.ndarray, list[Face], float]:
        t0 = time.perf_counter()
        return frame, tracker.analyzer.analyze(frame), time.perf_counter() - t0

    it = iter(frames)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = next(it, None)
        pending = pool.submit(analyse, first) if first is not None else None
        k = 0
        while pending is not None:
            frame, faces, seconds = pending.result()
            nxt = next(it, None)
            pending = pool.submit(analyse, nxt) if nxt is not None else None
            stats["analysis"] = stats.get("analysis", 0.0) + seconds
            yield frame, tracker.assign(faces, k, fps)
            k += 1



def reenact_frames(
    editor: Any,
    photo: np.ndarray,
    driving: Iterable[np.ndarray],
    fps: float,
    mode: ReenactMode = "relative",
    smooth: bool = True,
    stats: dict[str, float] | None = None,
) -> Iterator[np.ndarray]:
    """The photo, frame by frame, with the driving face's expression.

    ``relative`` (default): the photo's own AUs plus the driving face's change since its first
    frame with a face, so the photo keeps its resting face; ``absolute``: the driving AUs as they
    are. Frames where the driving face is lost repeat the last expression. ``stats`` (optional)
    accumulates seconds per stage (``analysis``, ``edit``).
    """
    if mode not in ("relative", "absolute"):
        raise ConfigError(f"unknown reenactment mode {mode!r}; use relative or absolute")
    rgb = np.ascontiguousarray(photo[..., :3])
    found = editor.analyzer.analyze(rgb, complete=False)
    if not found:
        raise NoFaceError("no face found in the photo to reenact")
    face = found[0]
    own = aus_from_blendshapes(face.blendshapes, face.landmarks)
    stats = stats if stats is not None else {}
    first: np.ndarray | None = None
    target = own.copy()
    expr = OneEuroFilter(EXPRESSION_FILTER)
    looks = editor.looks(photo, [face])  # the same photo every frame
    with FaceTracker(max_faces=1, smooth=smooth) as tracker:
        for k, (frame, tracked) in enumerate(_analysed(driving, tracker, fps, stats)):
            t1 = time.perf_counter()
            if tracked:
                d = tracked[0][1]
                aus = aus_from_blendshapes(d.blendshapes, d.landmarks)
                aus = expr(aus, k / fps) if smooth else aus
                if first is None:
                    first = aus.copy()
                target = own + (aus - first) if mode == "relative" else aus
                target = np.clip(target, 0.0, 5.0).astype(np.float32)
            out = editor.edit_faces(photo, [face], [target], looks=looks).image
            stats["edit"] = stats.get("edit", 0.0) + (time.perf_counter() - t1)
            yield out
    if first is None:
        raise NoFaceError("no face found in any frame of the driving video")


def edit_frames(
    editor: Any,
    frames: Iterable[np.ndarray],
    fps: float,
    target: Any,
    max_faces: int = 4,
    smooth: bool = True,
    stats: dict[str, float] | None = None,
) -> Iterator[np.ndarray]:
    """Every tracked face of every frame shown with ``target`` (a Target); frames without a face
    pass through unchanged. Raises :class:`NoFaceError` at the end if no frame had a face."""
    stats = stats if stats is not None else {}
    seen = False
    with FaceTracker(max_faces=max_faces, smooth=smooth) as tracker:
        for frame, tracked in _analysed(frames, tracker, fps, stats):
            t1 = time.perf_counter()
            if tracked:
                seen = True
                faces = [f for _, f in tracked]
                out = editor.edit_faces(frame, faces, [target] * len(faces)).image
            else:
                out = frame
            stats["edit"] = stats.get("edit", 0.0) + (time.perf_counter() - t1)
            yield out
    if not seen:
        raise NoFaceError("no face found in any frame of the video")


# -- whole files --------------------------------------------------------------------------------


@dataclass
class VideoReport:
    path: Path
    frames: int
    fps: float
    seconds: float
    stages: dict[str, float]

    @property
    def speed(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def _run(frames: Iterator[np.ndarray], out: Path, size: tuple[int, int], info: VideoInfo,
         progress: Callable[[int], None] | None, stats: dict[str, float],
         finishing: Callable[[], None] | None = None) -> VideoReport:
    """Write ``frames``; ``progress(1)`` as each is handed to ffmpeg, ``finishing()`` once after the
    last one, while ffmpeg still encodes the frames it holds (at 4K on 2 cores, tens of seconds)."""
    t0 = time.perf_counter()
    with VideoWriter(out, size, info.fps, info.path if info.audio else None) as writer:
        for frame in frames:
            tw = time.perf_counter()
            writer.write(frame)
            stats["encode"] = stats.get("encode", 0.0) + time.perf_counter() - tw
            if progress is not None:
                progress(1)
        if finishing is not None:
            finishing()
        tw = time.perf_counter()
        path = writer.finish()
        stats["finish"] = time.perf_counter() - tw
    return VideoReport(path, writer.frames, info.fps, time.perf_counter() - t0, stats)


def reenact(editor: Any, photo: np.ndarray, driving: str | os.PathLike[str], out: str | os.PathLike[str],
            mode: ReenactMode = "relative", smooth: bool = True,
            progress: Callable[[int], None] | None = None,
            finishing: Callable[[], None] | None = None) -> VideoReport:
    """Write ``out`` (MP4): the photo reenacted by ``driving``, at its frame rate, with its audio.
    ``progress(1)`` after each frame, ``finishing()`` once all are edited and the MP4 is being
    finished."""
    info = probe(driving)
    h, w = photo.shape[:2]
    stats: dict[str, float] = {}
    frames = reenact_frames(editor, photo, read_frames(info.path), info.fps, mode, smooth, stats)
    return _run(frames, Path(out), (w, h), info, progress, stats, finishing)


def edit_video(editor: Any, video: str | os.PathLike[str], out: str | os.PathLike[str], target: Any,
               max_faces: int = 4, smooth: bool = True,
               progress: Callable[[int], None] | None = None,
               finishing: Callable[[], None] | None = None) -> VideoReport:
    """Write ``out`` (MP4): ``video`` with every tracked face showing ``target``, audio kept
    (``progress`` and ``finishing`` as in :func:`reenact`)."""
    info = probe(video)
    stats: dict[str, float] = {}
    frames = edit_frames(editor, read_frames(info.path), info.fps, target, max_faces, smooth, stats)
    return _run(frames, Path(out), info.size, info, progress, stats, finishing)
