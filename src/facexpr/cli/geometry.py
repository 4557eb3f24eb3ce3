"""``facexpr fit-geometry``: fit the geometry-driven model (rig + shading) and write a model folder.

Both parts are closed-form fits (ridge regressions) that take seconds; the only slow step is
measuring the landmarks of every crop the first time (cached in each dataset folder). The mouth
network is trained separately (``facexpr train --model mouth`` + ``facexpr export``, or the
``facexpr train-mouth`` alias) and passed in with ``--mouth``.
"""

from __future__ import annotations

from pathlib import Path

import click

from facexpr.cli.edit import FiniteFloat

from facexpr.errors import ConfigError


@click.command("fit-geometry", context_settings={"show_default": True})
@click.option("--data", "data", required=True, multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Prepared dataset folder with identity and expression labels (repeat to merge); each "
                   "person needs a neutral photo.")
@click.option("--shading-data", "shading_data", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Which of the --data folders to learn shading from (same light for a person's photos, "
                   "e.g. a studio set) [default: all].")
@click.option("--mouth", "mouth", type=click.Path(exists=True, path_type=Path),
              help="Mouth network: a mouth.safetensors file or a folder holding one (a 'facexpr export' of a "
                   "'facexpr train --model mouth' run, or a 'facexpr train-mouth' run folder); "
                   "without it the mouth interior is drawn.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New model folder.")
@click.option("--ridge", type=FiniteFloat(0, None, min_open=True), default=30.0, help="Rig ridge penalty.")
@click.option("--shading-blur", type=FiniteFloat(0, 20), default=1.5,
              help="Smoothing of the ratio images, px of a 128 px texture (scaled with the model's texture size).")
@click.option("--val-fraction", type=FiniteFloat(0, 1, max_open=True), default=0.1,
              help="Identity-disjoint validation share (as in train/evaluate).")
@click.option("--seed", type=int, default=0, help="Split seed (as in train/evaluate).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fit_geometry(data: tuple[Path, ...], shading_data: tuple[Path, ...], mouth: Path | None, out: Path,
                 ridge: float, shading_blur: float, val_fraction: float, seed: int, overwrite: bool,
                 quiet: bool) -> None:
    """Fit the expression rig and the shading layer on prepared data and write a model folder
    that `facexpr edit --model OUT` uses (the shipped default was made this way)."""
    from facexpr.training.geometry import fit_geometry as fit

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: already exists and is not empty; choose a new folder or pass --overwrite")
    net = None
    if mouth is not None:
        from facexpr.models.mouth import load_mouth

        path = mouth / "mouth.safetensors" if mouth.is_dir() else mouth
        net = load_mouth(path)
    result = fit([str(p) for p in data], [str(p) for p in shading_data] or None, net, val_fraction, seed,
                 ridge=ridge, shading_blur=shading_blur, progress=not quiet)
    card = model_card(result.summary, mouth)
    result.model.save_pretrained(out, model_card=card, training=result.summary, overwrite=overwrite)
    rep = result.summary["rig"]["validation"]
    click.echo(f"wrote {out}: rig from {result.summary['rig']['samples']} photos of "
               f"{result.summary['rig']['people']} people; held-out landmark error "
               f"{rep['all']['rig']} vs {rep['all']['no_motion']} without motion ({rep['unit']})")


def model_card(summary: dict, mouth: Path | None) -> str:
    """A model card that says what the fit saw and how it did on people it did not see."""
    rep = summary["rig"]["validation"]
    rows = "\n".join(f"| {k} | {v['no_motion']:.2f} | {v['rig']:.2f} |" for k, v in rep.items()
                     if isinstance(v, dict))
    data = "\n".join(f"- `{d['name']}`: {d['count']} crops" for d in summary["data"])
    posed = ", ".join(f"{e} {n} people" for e, n in summary["shading"]["people"].items())
    return f"""# facexpr model: geometry (the geometry-driven default)

Expression geometry from a linear 3D rig fitted in closed form, applied as a full-resolution
mesh warp of the photo; per-AU expression ratio images for shading; eyes opened with painted
sclera; the mouth interior drawn at the photo's resolution, or filled by a small network when one
was given. See `facexpr/models/geometry.py` for the method.

## Data

{data}

Identity-disjoint split (validation share {summary['split']['val_fraction']}, seed
{summary['split']['seed']}): {summary['split']['train_faces']} training and
{summary['split']['val_faces']} validation crops. Rig: {summary['rig']['samples']} photos of
{summary['rig']['people']} training people, each against their own neutral photo(s), ridge
{summary['rig']['ridge']}. Shading: each posed emotion's mean change from the same person's
neutral face ({posed}) in {', '.join(summary['shading']['folders'])}, shared out among the AUs
of the emotion's FACS prototype. Mouth network:
{mouth.name if mouth else 'none'}.

## Rig fit on the validation people ({rep['people']} people, {rep['photos']} expressive photos)

Mean landmark error against the real expression, {rep['unit']}:

| region | no motion | rig |
|---|---|---|
{rows}

## Terms

Code: Apache-2.0. The fitted numbers derive from research datasets whose terms allow
non-commercial research use only (Taiwanese Facial Expression Image Database: academic research;
LFW: research use). Use the model under those terms.
"""
