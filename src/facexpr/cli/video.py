"""``facexpr reenact`` and the video path of ``facexpr edit``: thin layers over
:mod:`facexpr.pipeline.video`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facexpr.errors import ConfigError


def _progress_bar(total: int, desc: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, dynamic_ncols=True)


def _write_with_progress(job, total: int, desc: str, out: Path):  # type: ignore[no-untyped-def]
    """Run ``job(progress, finishing)`` under a frame progress bar; Ctrl-C exits 130 with no file.

    The bar counts frames as they are edited and handed to ffmpeg; ``finishing`` says so when
    ffmpeg is still encoding the frames it holds (at 4K, tens of seconds after the last frame)."""
    bar = _progress_bar(total, desc)

    def finishing() -> None:
        bar.set_description(f"{desc}: every frame edited, finishing the MP4")

    try:
        return job(bar.update, finishing)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"interrupted: nothing was written to {out}", err=True)
        sys.exit(130)
    finally:
        bar.close()


def _check_output(out: Path, force: bool) -> None:
    if out.suffix.lower() != ".mp4":
        raise ConfigError(f"{out}: video output is written as .mp4")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; use --force to overwrite")


def run_video_edit(video: Path, out: Path, editor, target, faces: str, force: bool, smooth: bool = True) -> None:  # type: ignore[no-untyped-def]
    """``facexpr edit VIDEO -o OUT.mp4 ...``: every tracked face, every frame, audio kept."""
    from facexpr.pipeline.video import edit_video, probe

    if out.suffix.lower() != ".mp4" and (out.is_dir() or not out.suffix):
        out = out / f"{video.stem}.mp4"
    _check_output(out, force)
    if out.resolve() == video.resolve():
        raise ConfigError(f"{out}: the output would replace the input video; choose another name")
    if faces not in ("all", "largest"):
        raise ConfigError("for a video, --faces takes all or largest (face indices change from frame to frame)")
    info = probe(video)
    report = _write_with_progress(
        lambda progress, finishing: edit_video(editor, video, out, target, max_faces=1 if faces == "largest" else 4,
                                               smooth=smooth, progress=progress, finishing=finishing),
        info.frames_estimate, video.name, out)
    click.echo(f"wrote {report.path} ({report.frames} frames at {report.fps:g} fps, {target}; "
               f"{report.speed:.1f} frames/s)")


@click.command()
@click.argument("photo", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--driving", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Video whose face's expression drives the photo.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="OUT.mp4")
@click.option("--mode", type=click.Choice(["relative", "absolute"]), default="relative", show_default=True,
              help="relative: the driving face's change since its first frame is added to the photo's own "
                   "expression (the photo keeps its resting face); absolute: the driving AUs as they are.")
@click.option("--pose", is_flag=True, help="Also transfer small head rotations (not supported by the "
              "geometry family: refused with a message).")
@click.option("--max-side", type=click.IntRange(64, 8192), default=None,
              help="Downscale the photo so its longer side is at most this (faster).")
@click.option("--no-smooth", is_flag=True, help="Turn off temporal smoothing (for comparison).")
@click.option("--model", default="default", show_default=True, help="A shipped model name or a model folder.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def reenact(photo, driving, out, mode, pose, max_side, no_smooth, model, force):  # type: ignore[no-untyped-def]
    """Make the face in PHOTO follow the expression of the face in a driving video.

    \b
    Example:
      facexpr reenact portrait.jpg --driving talking.mp4 -o talking_portrait.mp4

    The output has the driving video's frame rate, length and audio. Ctrl-C leaves no file
    behind (the video is written to a temporary file and renamed at the end).
    """
    import cv2

    from facexpr.imageio import load_image
    from facexpr.pipeline.editor import Editor
    from facexpr.pipeline.video import probe, reenact as run

    _check_output(out, force)
    info = probe(driving)
    image = load_image(photo).rgb
    if max_side and max(image.shape[:2]) > max_side:
        s = max_side / max(image.shape[:2])
        image = cv2.resize(image, (max(int(round(image.shape[1] * s)), 2), max(int(round(image.shape[0] * s)), 2)),
                           interpolation=cv2.INTER_AREA)
    with Editor.from_pretrained(model) as editor:
        if pose:
            raise ConfigError(f"model {editor.info.name} ({editor.info.family}) changes expressions only: it "
                              "cannot transfer head pose; run without --pose")
        report = _write_with_progress(
            lambda progress, finishing: run(editor, image, driving, out, mode=mode, smooth=not no_smooth,
                                            progress=progress, finishing=finishing),
            info.frames_estimate, photo.name, out)
    click.echo(f"wrote {report.path} ({report.frames} frames at {report.fps:g} fps, {mode}; "
               f"{report.speed:.1f} frames/s)")
