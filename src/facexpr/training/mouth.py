"""The mouth-interior inpainter's data: real open mouths cut from prepared face crops, the
holes it learns to fill, its losses, sample grid and validation numbers.

Trained through the generic loop (:mod:`facexpr.training.loop`) by its recipe
(:mod:`facexpr.training.recipe_mouth`); this module holds what is specific to mouths and has
no loop of its own.

Data: the training identities whose mouth is open (:func:`facexpr.face.mouth.lip_opening` above
``min_opening``; below ~0.03 MediaPipe's inner-lip polygon on a closed mouth often covers the
lips themselves, which would teach "fill the hole with lip"). Each mouth is cut into a ``size``
px crop (:func:`~facexpr.face.mouth.mouth_frame`) with its inner-lip polygon in crop pixels.
The hole of a training sample is that mouth's own polygon, grown by 1-3 px (sometimes shrunk by
1 px), so the network learns to paint exactly the region the editor will ask for: everything
inside the lips. Horizontal flips double the data (a mouth is near-symmetric; a flipped one is
still a real mouth). Every random choice of an item is keyed on ``(seed, epoch, position)``
(:class:`MouthCrops`), so a resumed run sees exactly the items an uninterrupted one would.

Loss: L1 of the raw output against the real crop, ``hole_weight`` times heavier inside the hole
(outside it the composed output is the input anyway; the light L1 there only helps the network
keep its features aligned), plus ``adv_weight`` x LSGAN from a small PatchGAN critic that sees
(image, mask), its patch scores counted only where a patch touches the hole. L1 alone paints
the average interior, a grey band; the critic is what makes teeth separate and cavities dark.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import Dataset

from facexpr.face.align import transform_points, warp_crop
from facexpr.face.mouth import inner_lip_polygon, lip_opening, mouth_frame
from facexpr.models.mouth import MouthConfig
from facexpr.training.data import to_tensor_image


# -- data -----------------------------------------------------------------------------------------


@dataclass
class MouthSet:
    """Mouth crops in memory: uint8 (N, S, S, 3), inner-lip polygons (N, K, 2) in crop pixels,
    the opening of each, and the dataset row each came from."""

    crops: NDArray[np.uint8]
    polygons: NDArray[np.float32]
    openings: NDArray[np.float32]
    rows: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.crops)


def open_mouth_rows(
    landmarks: NDArray[np.floating], rows: Sequence[int] | NDArray[np.integer[Any]], min_opening: float
) -> NDArray[np.int64]:
    """The rows of ``rows`` whose face was found and whose lip opening is at least ``min_opening``."""
    keep = []
    for i in np.asarray(rows, dtype=np.int64).tolist():
        lm = landmarks[i]
        if np.isfinite(lm[:, :2]).all() and lip_opening(lm) >= min_opening:
            keep.append(i)
    return np.asarray(keep, np.int64)


def cut_mouth(rgb: NDArray[np.uint8], landmarks: NDArray[np.floating],
              config: MouthConfig) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """(the ``config.size`` px mouth crop of a face crop, its inner-lip polygon in crop pixels)."""
    m = mouth_frame(landmarks, config.size, width_fraction=config.width_fraction)
    return warp_crop(rgb, m, config.size), transform_points(inner_lip_polygon(landmarks), m).astype(np.float32)


class MouthCrops(Dataset):
    """Training items ``{image (3,S,S) in [-1,1], mask (1,S,S), index}``: the mouth crop of each
    row and its own hole, grown 1-3 px (12 %: shrunk 1 px) and mirrored half the time.

    Indexed by ``(epoch, position)`` keys (:class:`~facexpr.training.data.ResumableSampler`);
    the grow and the flip come from ``numpy.random.default_rng((seed, epoch, position))``, so any
    number of workers, ranks or a resume see the same items. Crops are cut when read (a face
    crop decode and one affine warp), nothing is held in memory.
    """

    def __init__(self, prepared: Any, rows: NDArray[np.int64], landmarks: NDArray[np.floating],
                 config: MouthConfig, seed: int = 0, flip: bool = True) -> None:
        self.prepared = prepared
        self.rows = np.asarray(rows, dtype=np.int64)
        self.landmarks = np.ascontiguousarray(landmarks[self.rows], dtype=np.float32)
        self.config = config
        self.seed = int(seed)
        self.flip = bool(flip)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Tensor]:
        epoch, pos = (0, int(key)) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        rng = np.random.default_rng((self.seed, epoch, pos))
        i = int(self.rows[pos])
        crop, polygon = cut_mouth(self.prepared.image(i), self.landmarks[pos], self.config)
        grow = -1 if rng.random() < 0.12 else int(rng.integers(1, 4))
        mask = hole_mask(polygon, self.config.size, grow)
        if self.flip and rng.random() < 0.5:
            crop, mask = crop[:, ::-1], mask[:, ::-1]
        return {"image": to_tensor_image(crop), "mask": torch.from_numpy(np.ascontiguousarray(mask))[None],
                "index": torch.tensor(i)}


def build_mouth_set(
    dataset: Any,
    rows: Sequence[int] | NDArray[np.integer[Any]],
    landmarks: NDArray[np.floating],
    config: MouthConfig,
    min_opening: float,
    limit: int | None = None,
) -> MouthSet:
    """Cut the mouth crop of every row of ``rows`` whose mouth is open, kept in memory as uint8
    (the fixed validation and display mouths).

    ``landmarks`` are the dataset's (N, 478, 3) crop-pixel landmarks (NaN = no face: skipped).
    ``limit`` keeps the first rows only (after filtering), for validation and tests.
    """
    crops: list[np.ndarray] = []
    polys: list[np.ndarray] = []
    opens: list[float] = []
    kept: list[int] = []
    for i in open_mouth_rows(landmarks, rows, min_opening).tolist():
        crop, polygon = cut_mouth(dataset.image(i), landmarks[i], config)
        crops.append(crop)
        polys.append(polygon)
        opens.append(lip_opening(landmarks[i]))
        kept.append(i)
        if limit is not None and len(kept) >= limit:
            break
    s = config.size
    return MouthSet(
        crops=np.stack(crops) if crops else np.zeros((0, s, s, 3), np.uint8),
        polygons=np.stack(polys) if polys else np.zeros((0, 20, 2), np.float32),
        openings=np.asarray(opens, np.float32),
        rows=np.asarray(kept, np.int64),
    )


def hole_mask(polygon: NDArray[np.floating], size: int, grow: int) -> NDArray[np.float32]:
    """Binary (size, size) hole: the polygon (pixels whose centre is inside), grown by ``grow`` px
    (shrunk when negative). The editor's hole covers the whole inner-lip area plus ~1-2 px."""
    hard = np.zeros((size, size), np.uint8)
    cv2.fillPoly(hard, [np.round(np.asarray(polygon)[:, :2] * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    if grow:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(grow) + 1, 2 * abs(grow) + 1))
        hard = cv2.dilate(hard, k) if grow > 0 else cv2.erode(hard, k)
    return hard.astype(np.float32)


#: Hole growth used for validation and the sample grids (what :func:`fill_mouth`'s default
#: feather amounts to at crop scale).
VAL_GROW = 2


def make_batch(
    mouths: MouthSet, picks: NDArray[np.int64], rng: np.random.Generator | None, grow: int = VAL_GROW
) -> tuple[Tensor, Tensor]:
    """(images (B,3,S,S) in [-1,1], holes (B,1,S,S)); random grow/erode and flips when ``rng``."""
    size = mouths.crops.shape[1]
    imgs = mouths.crops[picks].copy()
    masks = np.empty((len(picks), size, size), np.float32)
    for k, i in enumerate(picks.tolist()):
        g = grow
        flip = False
        if rng is not None:
            g = -1 if rng.random() < 0.12 else int(rng.integers(1, 4))
            flip = bool(rng.random() < 0.5)
        masks[k] = hole_mask(mouths.polygons[i], size, g)
        if flip:
            imgs[k] = imgs[k, :, ::-1]
            masks[k] = masks[k, :, ::-1]
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    m = torch.from_numpy(masks)[:, None]
    return x.contiguous(), m.contiguous()


# -- losses ---------------------------------------------------------------------------------------


def weighted_l1(raw: Tensor, real: Tensor, mask: Tensor, hole_weight: float) -> Tensor:
    w = 1.0 + (hole_weight - 1.0) * mask
    return ((raw - real).abs() * w).sum() / (w.sum() * 3.0)


def patch_weights(mask: Tensor, scores: Tensor) -> Tensor:
    """Per-patch weight: 1 where a critic patch overlaps the hole (else 0), normalised to sum 1."""
    w = F.adaptive_max_pool2d(mask, scores.shape[-2:])
    return w / w.sum().clamp_min(1.0)


def hole_l1(out: Tensor, real: Tensor, mask: Tensor) -> tuple[float, float]:
    """(sum of |out - real| over hole pixels and channels in 0..1 units, hole pixel count x 3)."""
    d = ((out - real).abs() * 0.5 * mask).sum().item()
    return d, mask.sum().item() * 3.0


# -- samples --------------------------------------------------------------------------------------


def sample_grid(net: nn.Module, x: Tensor, m: Tensor, per_row: int = 4, zoom: int = 2) -> NDArray[np.uint8]:
    """Rows of (input with the hole in grey | output | real) triplets as one uint8 image; ``x``
    and ``m`` on the network's device."""
    with torch.inference_mode():
        y = net(x, m).float()
    shown = x * (1 - m)  # the hole as the network sees it: 0 = mid-grey
    to8 = lambda t: t.add(1).mul(127.5).clamp(0, 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    a, b, c = to8(shown), to8(y), to8(x)
    n, s = len(a), a.shape[1]
    gap = 4
    tiles = [np.concatenate([a[i], b[i], c[i]], axis=1) for i in range(n)]
    rows = math.ceil(n / per_row)
    tw = tiles[0].shape[1]
    grid = np.full((rows * (s + gap) + gap, per_row * (tw + gap) + gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, col = divmod(i, per_row)
        grid[gap + r * (s + gap): gap + r * (s + gap) + s, gap + col * (tw + gap): gap + col * (tw + gap) + tw] = t
    if zoom > 1:
        grid = cv2.resize(grid, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    return grid


def display_set(train: MouthSet, val: MouthSet) -> tuple[Tensor, Tensor]:
    """A fixed display set: training and validation mouths across the range of openings, then
    validation mouths that are barely open given the hole of a wide-open one (the editor's case:
    the target opens wider than the source; does a tall hole get a cavity?)."""
    def spread(ms: MouthSet, n: int) -> NDArray[np.int64]:
        if len(ms) == 0:
            return np.zeros(0, np.int64)
        order = np.argsort(ms.openings, kind="stable")
        return order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(np.int64)]

    xs, ms = [], []
    for ms_, n in ((train, 8), (val, 8)):
        pick = spread(ms_, n)
        if len(pick):
            x, m = make_batch(ms_, pick, None)
            xs.append(x)
            ms.append(m)
    src = val if len(val) >= 8 else train
    if len(src) >= 8:
        order = np.argsort(src.openings, kind="stable")
        small, big = order[:4], order[-4:][::-1]
        x, _ = make_batch(src, small, None)
        holes = torch.from_numpy(np.stack([hole_mask(src.polygons[j], src.crops.shape[1], VAL_GROW) for j in big]))[:, None]
        xs.append(x)
        ms.append(holes)
    return torch.cat(xs), torch.cat(ms)


# -- validation -----------------------------------------------------------------------------------


def evaluate_mouths(net: nn.Module, val: MouthSet, fill_colour: NDArray[np.float32] | None = None,
                    batch: int = 64) -> dict[str, float]:
    """Mean |output - real| over hole pixels (0..1 units) on ``val`` (``l1_hole``), with two
    baselines a network must beat to be worth running: filling with the mean colour of the
    crop's visible pixels (``l1_hole_crop_mean``) and with ``fill_colour``, the mean hole colour
    of the training mouths (``l1_hole_train_mean``). Runs on the network's device, in float32."""
    device = next(net.parameters()).device
    tot = {"net": 0.0, "crop_mean": 0.0, "train_mean": 0.0}
    count = 0.0
    for start in range(0, len(val), batch):
        picks = np.arange(start, min(start + batch, len(val)), dtype=np.int64)
        x, m = (t.to(device) for t in make_batch(val, picks, None))
        with torch.inference_mode():
            y = net(x, m).float()
        d, c = hole_l1(y, x, m)
        tot["net"] += d
        count += c
        vis = (1 - m)
        mean = (x * vis).sum((2, 3), keepdim=True) / vis.sum((2, 3), keepdim=True).clamp_min(1)
        tot["crop_mean"] += hole_l1(mean.expand_as(x), x, m)[0]
        if fill_colour is not None:
            col = torch.from_numpy(fill_colour).to(device).view(1, 3, 1, 1).float() / 127.5 - 1
            tot["train_mean"] += hole_l1(col.expand_as(x), x, m)[0]
    if count == 0:
        return {}
    out = {"l1_hole": tot["net"] / count, "l1_hole_crop_mean": tot["crop_mean"] / count}
    if fill_colour is not None:
        out["l1_hole_train_mean"] = tot["train_mean"] / count
    out["l1_hole_pixels"] = int(count // 3)
    return out


def mean_hole_colour(mouths: MouthSet, limit: int = 2000) -> NDArray[np.float32]:
    """Mean RGB (0..255) of the hole pixels of (up to ``limit``) mouths."""
    acc, n = np.zeros(3), 0.0
    for i in range(min(len(mouths), limit)):
        h = hole_mask(mouths.polygons[i], mouths.crops.shape[1], VAL_GROW) > 0
        acc += mouths.crops[i][h].astype(np.float64).sum(0)
        n += h.sum()
    return (acc / max(n, 1.0)).astype(np.float32)


# -- the ``train-mouth`` alias --------------------------------------------------------------------


def train_mouth(
    data_folders: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    steps: int = 3000,
    *,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Train (or resume, when ``out_dir`` holds a checkpoint) the mouth inpainter through the
    generic loop, then write its EMA weights as ``out_dir/mouth.safetensors`` + ``mouth.json``
    and the final figures as ``out_dir/metrics.json``; returns those figures.

    What ``facexpr train-mouth`` runs: ``options`` are run options (``batch``, ``seed``,
    ``workers``, ``sample_every``, ...) and recipe options (``lr``, ``min_opening``,
    ``adv_weight``, ...), routed by name as ``facexpr train --set`` does. A resume continues to
    ``steps`` with the run's own options (only logging, workers and progress may change).
    """
    from facexpr.models.mouth import save_mouth
    from facexpr.training import loop
    from facexpr.training.checkpoint import latest_checkpoint, write_text_atomic
    from facexpr.training.config import make_config
    from facexpr.training.reporting import read_metrics

    out = Path(out_dir)
    if latest_checkpoint(out) is not None:
        harmless = {"workers", "progress", "log_every", "sample_every", "checkpoint_every"}
        result = loop.resume_run(out, steps=steps, overrides={k: v for k, v in options.items() if k in harmless},
                                 log=log)
    else:
        config = make_config(model="mouth", data=[str(p) for p in data_folders], steps=int(steps), **options)
        result = loop.start_run(config, out, log=log)
    rows = [r for r in read_metrics(out) if any(k.startswith("val/") for k in r)]
    metrics: dict[str, Any] = {"steps": result.step, "img_per_s": round(result.images_per_second, 1),
                               **({k[4:]: v for k, v in rows[-1].items() if k.startswith("val/")} if rows else {})}
    save_mouth(result.generator, out / "mouth.safetensors", training=metrics)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
