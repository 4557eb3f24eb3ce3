"""``facexpr train`` and ``facexpr export``: thin click layers over :mod:`facexpr.training`.

Every option is validated (model name, data folders, ``--set`` names, run folder) before any
work starts; ``--dry-run`` prints the resolved configuration and the dataset counts and exits.
Under ``torchrun`` every process runs this same command.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from facexpr.cli.edit import FiniteFloat, device_option
from facexpr.errors import ConfigError


def _family_choices() -> list[str]:
    from facexpr.models import family_names

    return family_names()


@click.command(context_settings={"show_default": True})
@click.option("--model", "model", default=None, help=f"Model family ({', '.join(_family_choices())}).")
@click.option("--data", "data", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Prepared dataset folder (repeat to merge several).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), help="New run folder.")
@click.option("--resume", "resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue this run folder from its latest checkpoint.")
@click.option("--preset", default=None, help="Architecture preset: paper (default), small (fast on CPU), tiny (tests).")
@click.option("--size", type=int, default=None, help="Training image size [default: the data's crop size; mouth: the side of its mouth crop, 64].")
@click.option("--batch", type=int, default=None, help="Global batch size [default: 25; cyclegan: 1, as in its paper].")
@click.option("--epochs", type=FiniteFloat(), default=None, help="Epochs to train [default: 30] (ignored with --steps).")
@click.option("--steps", type=int, default=None, help="Total steps, i.e. generator updates (overrides --epochs; with --resume: the new total).")
@click.option("--device", default=None, callback=device_option(True), help="auto, cpu or cuda [default: auto].")
@click.option("--workers", type=int, default=None, help="DataLoader worker processes [default: 2].")
@click.option("--sample-every", type=int, default=None, help="Steps between sample grids [default: 500].")
@click.option("--checkpoint-every", type=int, default=None, help="Steps between checkpoints [default: 1000].")
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any run, model or recipe option, e.g. --set lambda_cycle=5 --set width=32 "
                   "(--dry-run lists them all).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and dataset counts, then exit.")
def train(
    model: str | None,
    data: tuple[Path, ...],
    out: Path | None,
    resume: Path | None,
    preset: str | None,
    size: int | None,
    batch: int | None,
    epochs: float | None,
    steps: int | None,
    device: str | None,
    workers: int | None,
    sample_every: int | None,
    checkpoint_every: int | None,
    seed: int | None,
    sets: tuple[str, ...],
    no_progress: bool,
    dry_run: bool,
) -> None:
    """Train a model family on prepared datasets, or resume a run.

    \b
    facexpr train --model ganimation --data prepared/lfw --out runs/g1 --steps 20000
    facexpr train --resume runs/g1 --steps 40000
    torchrun --nproc_per_node 4 -m facexpr.cli train --model ganimation --data D --out R
    """
    from facexpr.training import config as tconfig
    from facexpr.training import loop

    harmless = {
        "workers": workers, "device": device, "sample_every": sample_every,
        "checkpoint_every": checkpoint_every,
    }
    if resume is not None:
        given = {"--model": model, "--data": data or None, "--out": out, "--preset": preset, "--size": size,
                 "--batch": batch, "--epochs": epochs, "--seed": seed, "--set": sets or None}
        clash = [k for k, v in given.items() if v is not None]
        if clash:
            raise click.UsageError(f"with --resume only --steps, --device, --workers, --sample-every, "
                                   f"--checkpoint-every can be given (not {', '.join(clash)})")
        overrides = {k: v for k, v in harmless.items() if v is not None}
        if no_progress:
            overrides["progress"] = False
        if dry_run:
            cfg = tconfig.read_run_config(resume)
            click.echo(json.dumps({"resume": str(resume), "train": cfg.to_json(), "new_steps": steps}, indent=2))
            return
        loop.resume_run(resume, steps=steps, overrides=overrides, log=click.echo)
        return

    if model is None:
        raise click.UsageError("--model is required (or --resume RUN)")
    if not data:
        raise click.UsageError("--data PREPARED is required")
    if out is None and not dry_run:
        raise click.UsageError("--out RUN is required")
    cfg = tconfig.make_config(model=model, data=[str(p) for p in data])  # with the family's paper run options
    cfg.family()  # unknown model -> ConfigError now
    explicit = {"preset": preset, "size": size, "batch": batch, "epochs": epochs, "steps": steps, "seed": seed,
                **harmless}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in explicit.items() if v is not None})
    if steps is not None and epochs is not None:
        raise click.UsageError("give either --steps or --epochs, not both")
    if no_progress:
        cfg = dataclasses.replace(cfg, progress=False)
    cfg = tconfig.apply_overrides(cfg, list(sets))
    tconfig.validate(cfg)
    if out is not None and out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: already exists; continue it with `facexpr train --resume {out}` or choose a new --out")
    bundle = loop.open_data(cfg)  # bad data folder -> DatasetError before any work
    cfg = loop.with_data_size(cfg, bundle)
    tconfig.validate(cfg)
    world = _world_size()
    rows, schedule = loop.plan(cfg, bundle, world)
    if dry_run:
        doc = loop.resolved_config_doc(cfg, bundle, schedule, rows)
        click.echo(json.dumps(doc, indent=2))
        return
    loop.start_run(cfg, out, log=click.echo)


def _world_size() -> int:
    from facexpr.training.distributed import read_env

    return read_env().world_size


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--fp16", is_flag=True, help="Store the weights as float16 (half the size).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_FOLDER if it exists.")
def export(run: Path, out_folder: Path, fp16: bool, overwrite: bool) -> None:
    """Export RUN's EMA generator as a model folder (safetensors + config.json + MODEL_CARD.md)."""
    from facexpr.training.export import export_run

    path = export_run(run, out_folder, fp16=fp16, overwrite=overwrite)
    click.echo(f"wrote {path}")
