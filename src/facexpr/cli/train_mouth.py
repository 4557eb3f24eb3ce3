"""``facexpr train-mouth``: an alias of ``facexpr train --model mouth`` that keeps its older
options and also writes the final weights where ``fit-geometry --mouth`` reads them.

It builds the same :class:`~facexpr.training.config.TrainConfig` ``facexpr train`` would and
runs it through the one training loop (:mod:`facexpr.training.loop`, recipe
:mod:`facexpr.training.recipe_mouth`); running it again on the same ``--out`` folder resumes the
run bit-identically (``--steps`` is the new total; the other options are the run's own). At the
end the EMA network is written as ``OUT/mouth.safetensors`` + ``OUT/mouth.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from facexpr.cli.edit import FiniteFloat


@click.command(context_settings={"show_default": True})
@click.option("--data", "data", multiple=True, required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Prepared dataset folder (repeat to merge several); only its training identities are used.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder (resumed when it holds checkpoints).")
@click.option("--steps", type=int, default=3000, help="Total training steps.")
@click.option("--batch", type=int, default=32, help="Batch size.")
@click.option("--lr", type=FiniteFloat(), default=2e-4, help="Adam learning rate (network and critic).")
@click.option("--seed", type=int, default=0, help="Random seed (initialisation, batches, augmentation).")
@click.option("--threads", type=int, default=0, help="CPU threads for torch and OpenCV (0: their defaults).")
@click.option("--min-opening", type=FiniteFloat(), default=0.03, help="Lip opening (inner-lip area / eye distance^2) a training mouth needs.")
@click.option("--adv-weight", type=FiniteFloat(), default=0.01, help="Weight of the adversarial term against the L1 term.")
@click.option("--sample-every", type=int, default=250, help="Steps between sample grids (and validation).")
@click.option("--checkpoint-every", type=int, default=500, help="Steps between checkpoints.")
@click.option("--workers", type=int, default=2, help="DataLoader worker processes.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def train_mouth_command(
    data: tuple[Path, ...],
    out: Path,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    threads: int,
    min_opening: float,
    adv_weight: float,
    sample_every: int,
    checkpoint_every: int,
    workers: int,
    no_progress: bool,
) -> None:
    """Train the network that paints a mouth interior (teeth, cavity) into an opened mouth.

    An alias of `facexpr train --model mouth` (same loop, run folder and checkpoints) that also
    writes OUT/mouth.safetensors + mouth.json for `facexpr fit-geometry --mouth OUT`.

    \b
    facexpr train-mouth --data prepared/taiwanese --data prepared/lfw --out runs/mouth --steps 3000
    same as:
    facexpr train --model mouth --data prepared/taiwanese --data prepared/lfw --out runs/mouth --steps 3000
    facexpr export runs/mouth models/mouth
    """
    from facexpr.training.mouth import train_mouth

    if threads:
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    metrics = train_mouth(
        list(data), out, steps=steps, batch=batch, seed=seed, workers=workers, progress=not no_progress,
        sample_every=sample_every, checkpoint_every=checkpoint_every, log=click.echo,
        lr=lr, min_opening=min_opening, adv_weight=adv_weight,
    )
    click.echo(json.dumps(metrics, indent=2))
    click.echo(f"weights: {out / 'mouth.safetensors'} (+ mouth.json)")
