"""What a run leaves for a human: metrics JSONL, loss-curve PNG and sample grids.

Matplotlib is used through ``Figure`` objects directly (no pyplot), so plotting touches no
global state and works in worker processes and headless servers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from facexpr.models import au_condition
from facexpr.training.checkpoint import write_text_atomic

METRICS = "metrics.jsonl"
CURVES = "loss_curves.png"
SAMPLES = "samples"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line cut by a kill: everything after it is unusable too
    return rows


def truncate_metrics(run_dir: Path, max_step: int) -> list[dict[str, Any]]:
    """Drop rows logged after the checkpoint a run resumes from (they will be logged again)."""
    rows = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= max_step]
    path = Path(run_dir) / METRICS
    if path.exists():
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per metric family (critic, generator, validation), written atomically."""
    if not rows:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted({k for r in rows for k, v in r.items() if "/" in k and isinstance(v, (int, float))})
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split("/", 1)[0], []).append(k)
    n = len(groups)
    if n == 0:
        return
    fig = Figure(figsize=(6 * n, 4), dpi=100)
    FigureCanvasAgg(fig)
    titles = {"d": "critic", "g": "generator", "val": "validation (EMA G)"}
    for ax_i, (group, names) in enumerate(sorted(groups.items())):
        ax = fig.add_subplot(1, n, ax_i + 1)
        for name in names:
            pts = [(r["step"], r[name]) for r in rows if name in r and math.isfinite(r[name])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=name.split("/", 1)[1], linewidth=1)
        ax.set_title(titles.get(group, group))
        ax.set_xlabel("generator step")
        if group != "val":  # losses span decades and change sign; validation numbers do not
            ax.set_yscale("symlog", linthresh=1e-2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def to_uint8(x: Tensor) -> NDArray[np.uint8]:
    """(B,C,H,W) in [-1,1] (C = 1 or 3) -> uint8 (B,H,W,3)."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def render_grid(
    generator: nn.Module,
    images: Tensor,
    targets: Sequence[tuple[str, Tensor]],
    autocast: Any,
) -> NDArray[np.uint8]:
    """Rows: faces. Columns: source | (attention | colour | result) per named target.

    ``targets`` are ``(name, aus (B,17) on the 0..5 scale)``. Attention is shown white where the
    source pixel is kept (A = 1), so the edited region appears dark.
    """
    columns = [to_uint8(images)]
    for _, aus in targets:
        with autocast():
            out = generator(images, au_condition(aus))
        columns += [to_uint8(out.attention * 2 - 1), to_uint8(out.colour), to_uint8(out.result)]
    s = images.shape[-1]
    grid = np.concatenate([np.concatenate(list(col), axis=0) for col in columns], axis=1)
    header = _header([name for name, _ in targets], s, grid.shape[1])
    return np.concatenate([header, grid], axis=0)


def _header(names: Sequence[str], cell: int, width: int) -> NDArray[np.uint8]:
    from PIL import Image, ImageDraw

    h = 14
    im = Image.new("RGB", (width, h), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    draw.text((2, 1), "source", fill=(0, 0, 0))
    for i, name in enumerate(names):
        x0 = cell * (1 + 3 * i)
        draw.text((x0 + 2, 1), f"{name}: A | C | result", fill=(0, 0, 0))
        draw.line([(x0, 0), (x0, h)], fill=(128, 128, 128))
    return np.asarray(im, dtype=np.uint8)


def save_png(path: Path, rgb: NDArray[np.uint8]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(rgb).save(tmp)
    os.replace(tmp, path)


def labelled_grid(columns: Sequence[Tensor], names: Sequence[str]) -> NDArray[np.uint8]:
    """Rows: faces. One column per ``(B,C,H,W)`` tensor in [-1, 1], each named in a header."""
    from PIL import Image, ImageDraw

    cell = columns[0].shape[-1]
    grid = np.concatenate([np.concatenate(list(to_uint8(c)), axis=0) for c in columns], axis=1)
    im = Image.new("RGB", (grid.shape[1], 14), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for i, name in enumerate(names):
        draw.text((cell * i + 2, 1), str(name)[: max(1, cell // 6)], fill=(0, 0, 0))
        draw.line([(cell * i, 0), (cell * i, 14)], fill=(128, 128, 128))
    return np.concatenate([np.asarray(im, dtype=np.uint8), grid], axis=0)
