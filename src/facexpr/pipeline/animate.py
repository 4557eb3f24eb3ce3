"""Animation: a face moving from its own expression to a target (and optionally back).

The photo is analysed once; each frame edits the same faces with AUs interpolated between the
face's own and the target, so the motion is smooth and the background never flickers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from facexpr.atomic import open_temp_beside, publish_exclusive
from facexpr.errors import ConfigError, NoFaceError, OutputError, OutputExistsError
from facexpr.face.detect import check_searchable
from facexpr.expression import interpolate
from facexpr.face.align import smoothstep
from facexpr.face.aus import aus_from_blendshapes
from facexpr.pipeline.editor import Editor, FaceSelection, select_faces
from facexpr.pipeline.targets import Target

VIDEO_SUFFIXES = (".gif", ".mp4")


#: The frames' timing: a smoothstep, so the motion starts and ends at rest instead of jerking.
ease = smoothstep


def animation_frames(
    editor: Editor,
    image: np.ndarray,
    target: Target,
    frames: int = 24,
    back: bool = False,
    faces: FaceSelection = "all",
) -> list[np.ndarray]:
    """Frames (uint8 HxWx3) from the face's own expression (frame 0 = the photo) to ``target``."""
    if frames < 2:
        raise ConfigError(f"an animation needs at least 2 frames, got {frames}")
    rgb = np.ascontiguousarray(image[..., :3])
    check_searchable(rgb.shape[1], rgb.shape[0])
    found = editor.analyzer.analyze(rgb)
    if not found:
        raise NoFaceError("no face found in the photo")
    chosen = [found[i] for i in select_faces(found, faces)]
    sources = [aus_from_blendshapes(f.blendshapes, f.landmarks) for f in chosen]
    goals = [target.aus_for(a) for a in sources]
    ts = ease(np.linspace(0.0, 1.0, frames, dtype=np.float32))
    paths = [interpolate(a, b, ts) for a, b in zip(sources, goals)]  # each (T, 17)
    out = [rgb.copy()]
    looks = editor.looks(rgb, chosen)
    for k in range(1, frames):
        result = editor.edit_faces(rgb, chosen, [p[k] for p in paths], looks=looks)
        out.append(result.image)
    if back:
        out += out[-2:0:-1]
    return out


def write_animation(frames: list[np.ndarray], path: str | os.PathLike[str], fps: float = 12.0,
                    replace: bool = True) -> Path:
    """Write a GIF (Pillow) or MP4 (ffmpeg from imageio-ffmpeg) atomically; ``replace=False``
    never replaces a file that appeared meanwhile (:class:`OutputExistsError`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ConfigError(f"{path}: animations are written as {' or '.join(VIDEO_SUFFIXES)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = open_temp_beside(path, suffix=suffix)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write here ({exc.strerror or exc})") from exc
    try:
        if suffix == ".gif":
            imgs = [Image.fromarray(f) for f in frames]
            imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:],
                         duration=int(round(1000 / fps)), loop=0, optimize=False)
        else:
            import imageio.v2 as iio

            h, w = frames[0].shape[:2]
            even = [f[: h - h % 2, : w - w % 2] for f in frames]  # yuv420p needs even sizes
            with iio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                                macro_block_size=1, pixelformat="yuv420p") as writer:
                for f in even:
                    writer.append_data(f)
        if replace:
            os.replace(tmp, path)
        else:
            publish_exclusive(tmp, path)
    except FileExistsError as exc:
        raise OutputExistsError(f"{path}: already exists (written by another run meanwhile?); it was not "
                                "replaced; use --force to overwrite") from exc
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the animation ({exc.strerror or exc})") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
