"""``facexpr prepare``, ``facexpr import-openface`` and ``facexpr import-ganimation``.

Thin: options are validated here and by :mod:`facexpr.data.prepare` before any photo is read;
the work and its documentation live in :mod:`facexpr.data`.
"""

from __future__ import annotations

from pathlib import Path

import click

from facexpr.cli.edit import FiniteFloat


@click.command("prepare")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--size",
    "sizes",
    type=click.IntRange(32, 2048),
    multiple=True,
    default=(128,),
    show_default=True,
    help="Crop size in pixels; repeat for several (then OUT/<size>/ each).",
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CSV with a 'file' column (paths relative to SRC) and optional 'identity', 'expression'.",
)
@click.option("--workers", type=click.IntRange(1, 256), help="Processes (default: all cores).")
@click.option(
    "--format",
    "image_format",
    type=click.Choice(["jpg", "png"]),
    default="jpg",
    show_default=True,
    help="Crop file format (JPEG q95 4:4:4, or lossless PNG).",
)
@click.option("--limit", type=click.IntRange(1, None), help="Only the first N photos (sorted by path).")
@click.option(
    "--min-face",
    type=FiniteFloat(0.0, 1.0, max_open=True),
    default=0.3,
    show_default=True,
    help="Reject faces smaller than this fraction of the crop size ('too small').",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare(
    src: Path,
    out: Path,
    sizes: tuple[int, ...],
    manifest: Path | None,
    workers: int | None,
    image_format: str,
    limit: int | None,
    min_face: float,
    quiet: bool,
) -> None:
    """Detect, align, crop and annotate the faces of SRC into the prepared dataset OUT.

    SRC is a folder of photos (searched recursively) or a manifest CSV (paths relative to the
    CSV's folder). Each photo gives at most one crop (the dominant face) with 17 Action Units,
    52 blendshapes, head pose and the manifest's identity/expression; photos without a usable
    face are listed in OUT/rejects.csv with the reason. Interrupt any time: rerunning the same
    command resumes where it stopped.
    """
    from facexpr.data.prepare import prepare as run_prepare

    unused = src / "manifest.csv"
    if manifest is None and src.is_dir() and unused.is_file():
        click.echo(f"note: {unused} is not used, so the photos get no identity or expression labels "
                   f"(fitting the geometry model, training a classifier and identity-disjoint splits "
                   f"need them); to use it: --manifest {unused}, or give the CSV itself as SRC", err=True)
    try:
        summaries = run_prepare(
            src,
            out,
            sizes=tuple(dict.fromkeys(sizes)),
            manifest=manifest,
            workers=workers,
            image_format=image_format,
            limit=limit,
            min_face=min_face,
            progress=not quiet,
        )
    except KeyboardInterrupt as exc:
        click.echo(str(exc) or "interrupted", err=True)
        raise
    for s in summaries.values():
        click.echo(s.format())
    first = next(iter(summaries.values()))
    if first.stage_seconds and first.processed_this_run:
        per = ", ".join(
            f"{k} {1000 * v / first.processed_this_run:.1f}" for k, v in first.stage_seconds.items()
        )
        click.echo(f"  time per photo (ms, summed over workers): {per}")
    if all(s.kept == 0 for s in summaries.values()):
        from facexpr.errors import DatasetError

        raise DatasetError(f"{out}: no photo gave a usable face; the reason for each is in "
                           f"{first.root / 'rejects.csv'}")


@click.command("import-openface")
@click.argument("csv_path", metavar="CSV", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("prepared", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--allow-mismatch", is_flag=True,
              help="Import even when the CSV's faces or frame numbers do not match PREPARED's video.")
def import_openface(csv_path: Path, prepared: Path, out: Path, allow_mismatch: bool) -> None:
    """Copy the prepared dataset PREPARED to OUT with OpenFace's AUs from CSV.

    PREPARED must come from video frames whose names carry the frame number (e.g. made with
    `ffmpeg -i video.mp4 frames/%05d.png` then `facexpr prepare frames PREPARED`); rows are
    matched to OpenFace's `frame` column. PREPARED is not modified.
    """
    from facexpr.data.importers import import_openface as run

    click.echo(run(csv_path, prepared, out, allow_mismatch=allow_mismatch).format())


@click.command("import-ganimation")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--size", type=click.IntRange(32, 2048), help="Resize crops to this size (default: as published).")
@click.option("--realign", is_flag=True, help="Re-detect and re-align with facexpr's template instead of resizing.")
@click.option("--format", "image_format", type=click.Choice(["jpg", "png"]), default="jpg", show_default=True)
def import_ganimation(root: Path, out: Path, size: int | None, realign: bool, image_format: str) -> None:
    """Make a prepared dataset OUT from a GANimation folder ROOT (imgs/, aus_openface.pkl,
    train_ids.csv, test_ids.csv). The AUs are the pickle's (read with a restricted unpickler
    that only builds numpy arrays); the train/test lists become the `split` column."""
    from facexpr.data.importers import import_ganimation as run

    click.echo(run(root, out, size=size, realign=realign, image_format=image_format).format())
