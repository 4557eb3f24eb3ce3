"""``facexpr edit``, ``animate``, ``models`` and ``export-onnx``: the editing commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facexpr.errors import ConfigError, NoFaceError


class FiniteFloat(click.FloatRange):
    """A float option that refuses nan and inf (click's FloatRange lets nan through every bound)."""

    name = "finite float"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        import math

        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(rv, param, ctx)

    def _describe_range(self) -> str:
        # Without bounds click would print "x<=None" into the help.
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()


def _target_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--like", "like", type=click.Path(dir_okay=False, path_type=Path),
                     help="Copy the expression of the largest face in this reference photo.")(f)
    f = click.option("--au", "aus", multiple=True, metavar="AU=V",
                     help="Set (AU12=3.5) or shift (AU4+=1, AU4-=1) an Action Unit on OpenFace's "
                          "0..5 scale; repeatable.")(f)
    f = click.option("--intensity", type=FiniteFloat(), default=1.0, show_default=True,
                     help="0 leaves the face as it is, 1 is the full emotion.")(f)
    f = click.option("--emotion", help="neutral, happy, sad, angry, surprised, fearful, disgusted or contempt.")(f)
    return f


def device_option(allow_auto: bool):  # type: ignore[no-untyped-def]
    """A click callback rejecting a bad --device before any model is loaded."""
    def check(ctx, param, value):  # type: ignore[no-untyped-def]
        from facexpr.devices import check_device

        return None if value is None else check_device(value, allow_auto=allow_auto)
    return check


def _model_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto",
                     show_default=True, help="auto uses onnxruntime on CPU when the model has an ONNX file.")(f)
    f = click.option("--device", default="cpu", show_default=True, callback=device_option(False),
                     help="cpu, cuda or cuda:N.")(f)
    f = click.option("--model", default="default", show_default=True,
                     help="A shipped model name (see `facexpr models`) or a model folder.")(f)
    return f


def _build_target(editor, emotion, intensity, aus, like):  # type: ignore[no-untyped-def]
    from facexpr.imageio import load_image
    from facexpr.pipeline.targets import AUTarget, EmotionTarget

    given = [x for x in (emotion, aus, like) if x]
    if len(given) != 1:
        raise click.UsageError("give exactly one target: --emotion NAME, --au AU=V (repeatable) or --like PHOTO")
    if emotion:
        target = EmotionTarget(emotion, intensity)
    elif aus:
        target = AUTarget.parse(list(aus))
    else:
        target = editor.reference(load_image(like).rgb, label=str(like))
    editor.check_target(target)  # a model that cannot take it is refused before any photo is edited
    return target


def _validate_target_early(emotion, intensity, aus, like) -> None:  # type: ignore[no-untyped-def]
    """Reject bad targets before the model and MediaPipe are loaded."""
    from facexpr.pipeline.targets import AUTarget, EmotionTarget

    given = [x for x in (emotion, aus, like) if x]
    if len(given) != 1:
        raise click.UsageError("give exactly one target: --emotion NAME, --au AU=V (repeatable) or --like PHOTO")
    if emotion:
        EmotionTarget(emotion, intensity)
    elif aus:
        AUTarget.parse(list(aus))
    elif not Path(like).is_file():
        raise ConfigError(f"--like {like}: the reference photo does not exist; check the path")


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Output folder (mirrors input folders), or a file name for a single photo.")
@_target_options
@click.option("--faces", default="all", show_default=True, help="all, largest, or indices like 0,2 (0 = largest).")
@_model_options
@click.option("--compare", is_flag=True, help="Also write NAME_compare.EXT with before | after.")
@click.option("--force", is_flag=True, help="Overwrite outputs that already exist.")
@click.option("--format", "fmt", type=click.Choice(["keep", "png", "jpg", "webp"]), default="keep",
              show_default=True, help="Output format; png keeps every unedited pixel exactly.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Photos edited at once, each by its own editor in a thread; 1 edits them one after "
                   "another, and the outputs are the same either way.  [default: one per core, at most "
                   "one per photo]")
def edit(inputs, out, emotion, intensity, aus, like, faces, model, device, backend, compare, force, fmt, workers):  # type: ignore[no-untyped-def]
    """Change the expression of the faces in photos (or in a video: one VIDEO, -o OUT.mp4).

    \b
    Examples:
      facexpr edit photo.jpg -o out/ --emotion happy --intensity 0.7
      facexpr edit photos/ -o edited/ --au AU12=3.5 --au AU6=2 --faces largest
      facexpr edit photo.jpg -o out.png --like reference.jpg --compare
      facexpr edit clip.mp4 -o clip_happy.mp4 --emotion happy

    Only the part of each face the model changes is replaced; every other pixel is kept. Photos
    without a face are reported and skipped; the others are still edited. A batch edits one photo per
    core at once (--workers) and ends with its speed in photos/s. In a video every
    tracked face is edited in every frame, smoothed over time, and the audio is kept.
    """
    from tqdm import tqdm

    from facexpr.pipeline.batch import EditorSpec, default_workers, plan_jobs, run_batch
    from facexpr.pipeline.editor import Editor
    from facexpr.pipeline.video import is_video

    _validate_target_early(emotion, intensity, aus, like)
    videos = [p for p in inputs if is_video(p)]
    if videos:
        if len(inputs) != 1:
            raise ConfigError(f"{videos[0]}: edit one video at a time, alone (photos and videos cannot be "
                              f"mixed in one call, and {len(inputs)} inputs were given)")
        from facexpr.cli.video import run_video_edit

        with Editor.from_pretrained(model, device=device, backend=backend) as editor:
            target = _build_target(editor, emotion, intensity, aus, like)
            run_video_edit(videos[0], out, editor, target, faces, force)
        return
    jobs = plan_jobs(inputs, out, None if fmt == "keep" else fmt)
    workers = default_workers(len(jobs)) if workers is None else min(workers, len(jobs))
    with Editor.from_pretrained(model, device=device, backend=backend) as editor:
        target = _build_target(editor, emotion, intensity, aus, like)
        bar = tqdm(total=len(jobs), unit="photo", disable=len(jobs) < 2, file=sys.stderr)
        try:
            # the other workers each build their own editor (MediaPipe objects are not shared)
            report = run_batch(editor, jobs, target, faces=faces, force=force, compare=compare,
                               progress=lambda job: bar.update(1), workers=workers,
                               spec=EditorSpec(model, device, backend), kind="thread")
        finally:
            bar.close()
    for source, note in report.notes:
        click.echo(f"note    {source}: {note}", err=True)
    for source, reason in report.skipped:
        click.echo(f"skipped {source}: {reason}", err=True)
    for source, message in report.failed:
        click.echo(f"failed  {source}: {message}", err=True)
    click.echo(f"{len(report.edited)} edited, {len(report.skipped)} skipped, {len(report.failed)} failed "
               f"({target}; model {editor.info.name}, {editor.backend})")
    if len(report.edited) == 1:
        click.echo(f"wrote {report.edited[0]}")
    if report.photos > 1 and report.edited:
        click.echo(f"{report.photos} photos in {report.seconds:.1f} s: {report.photos_per_second:.2f} photos/s "
                   f"({report.workers} worker{'s' if report.workers > 1 else ''})")
    if report.failed:
        sys.exit(1)


@click.command()
@click.argument("photo", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="OUT.gif or OUT.mp4.")
@_target_options
@click.option("--frames", default=24, show_default=True, type=click.IntRange(2, 600), help="Frames from start to target.")
@click.option("--fps", default=12.0, show_default=True, type=FiniteFloat(1, 60))
@click.option("--back/--no-back", default=False, show_default=True, help="Return to the starting expression.")
@click.option("--faces", default="all", show_default=True, help="all, largest, or indices like 0,2.")
@_model_options
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def animate(photo, out, emotion, intensity, aus, like, frames, fps, back, faces, model, device, backend, force):  # type: ignore[no-untyped-def]
    """Animate the faces of PHOTO from their own expression to a target (GIF or MP4)."""
    from facexpr.imageio import load_image
    from facexpr.pipeline.animate import VIDEO_SUFFIXES, animation_frames, write_animation
    from facexpr.pipeline.editor import Editor

    _validate_target_early(emotion, intensity, aus, like)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"{out}: write the animation as .gif or .mp4")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; use --force to overwrite")
    loaded = load_image(photo)
    if loaded.frames > 1:
        click.echo(f"note: {photo} has {loaded.frames} frames (animated); only the first frame is animated",
                   err=True)
    image = loaded.rgb
    with Editor.from_pretrained(model, device=device, backend=backend) as editor:
        target = _build_target(editor, emotion, intensity, aus, like)
        try:
            seq = animation_frames(editor, image, target, frames=frames, back=back, faces=faces)
        except NoFaceError as exc:
            raise NoFaceError(f"{photo}: {exc}") from None
    write_animation(seq, out, fps=fps, replace=force)
    click.echo(f"wrote {out} ({len(seq)} frames, {target})")


@click.command()
@click.option("--card/--no-card", default=True, show_default=True, help="Print each model card.")
def models(card):  # type: ignore[no-untyped-def]
    """List the models shipped inside the package, with their model cards."""
    from facexpr.pipeline.registry import default_model_name, shipped_models

    shipped = shipped_models()
    if not shipped:
        click.echo("no models are shipped with this installation")
        return
    try:
        default = default_model_name()
    except ConfigError:
        default = ""
    for name, info in shipped.items():
        mark = " (default)" if name == default else ""
        size = f"{info.image_size} px" if info.image_size else "full resolution"
        click.echo(f"{name}{mark}: {info.family}, {size}, {info.path}")
        if card:
            click.echo("")
            click.echo("    " + info.card.strip().replace("\n", "\n    "))
            click.echo("")


@click.command("export-onnx")
@click.argument("model")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--opset", default=17, show_default=True, type=click.IntRange(9, 20),  # runner.MIN/MAX_OPSET
              help="ONNX opset, 9 to 20.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def export_onnx(model, out, opset, force):  # type: ignore[no-untyped-def]
    """Export MODEL's generator (a shipped name or a model folder) to ONNX and check it.

    The ONNX graph takes ``image`` (N,3,S,S in [-1,1]) and ``aus`` (N,17, OpenFace scale), or
    ``labels`` (N,L one-hot) for label-conditioned families, and returns the generator's maps. The export is checked against torch on random inputs; put it in
    the model folder as generator.onnx and the editor uses it on CPU.
    """
    import numpy as np

    from facexpr.models import from_pretrained
    from facexpr.pipeline.registry import resolve_model
    from facexpr.pipeline.runner import OnnxRunner, TorchRunner, export_onnx as do_export

    if out.exists() and not force:
        raise ConfigError(f"{out} exists; use --force to overwrite")
    info = resolve_model(model)
    if info.family == "geometry":
        raise ConfigError(f"{info.name} is a geometry-driven model: its rig, warp and shading run in "
                          "numpy/OpenCV and need no ONNX export; only crop generators (GAN families) export")
    if info.condition.kind == "reference":
        raise ConfigError(f"{info.name} is neural style transfer: it optimises each photo and has no generator "
                          "to export; only crop generators (GAN families) export")
    generator = from_pretrained(info.path, device="cpu")
    do_export(generator, out, opset=opset)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (2, info.image_size, info.image_size, 3), dtype=np.uint8)
    cond = info.condition
    values = rng.uniform(0, 5, (2, 17)).astype(np.float32) if cond.kind == "aus" else \
        np.eye(len(cond.labels), dtype=np.float32)[rng.integers(0, len(cond.labels), 2)]
    a, b = TorchRunner(generator)(crops, values), OnnxRunner(out, info.image_size, condition=cond)(crops, values)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    click.echo(f"wrote {out}; max |torch - onnxruntime| = {worst:.2e} over {', '.join(a)}")
    if worst > 1e-3:
        raise ConfigError(f"ONNX output differs from torch by {worst:.2e} (> 1e-3); do not use this export")
