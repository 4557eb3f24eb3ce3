"""A tiny synthetic prepared dataset, for smoke tests and speed benchmarks.

It follows the prepared-dataset format exactly (``images/``, ``labels.csv``, ``dataset.json``)
so it exercises the same reader as real data, but needs no faces: each image is a smooth
random blob pattern and each row gets random AUs. Training on it says nothing about quality.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from facexpr.data.dataset import IMAGES, LABELS, META, label_columns, write_csv_atomic
from facexpr.expression import AU_NAMES


def make_synthetic_prepared(
    root: str | Path,
    n: int = 40,
    size: int = 32,
    identities: int = 10,
    seed: int = 0,
    name: str = "synthetic",
) -> Path:
    """Write ``n`` random ``size`` px crops of ``identities`` fake people under ``root``."""
    from PIL import Image

    root = Path(root)
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    rows = []
    header = label_columns([])
    for i in range(n):
        colour = rng.uniform(40, 215, 3)
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img = colour * blob + rng.uniform(0, 60, (1, 1, 3)) + rng.normal(0, 8, (size, size, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        rel = f"{IMAGES}/{i:05d}.png"
        (root / rel).write_bytes(buf.getvalue())
        aus = np.clip(rng.gamma(0.8, 0.8, len(AU_NAMES)), 0, 5)
        cells = {"file": rel, "source": f"synthetic/{i:05d}", "identity": f"p{i % identities:03d}",
                 "expression": ["neutral", "happy", ""][i % 3]}
        cells.update({a: f"{v:.4f}" for a, v in zip(AU_NAMES, aus)})
        rows.append([cells.get(h, "") for h in header])
    write_csv_atomic(root / LABELS, header, rows)
    meta = {"name": name, "size": size, "complete": True, "counts": {"kept": n}, "synthetic": True}
    (root / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root
