"""Training the mouth-interior inpainter (:mod:`facexpr.models.mouth`) on real open mouths.

Its own compact loop, not the generic engine of :mod:`facexpr.training.loop` (that one is built
around AU-conditioned generators, cycles and EMA-per-family recipes; this network has one input,
one target and trains in minutes on one CPU core).

Data: the training identities (``PreparedDataset.split(0.1, 0)``) whose mouth is open
(:func:`facexpr.face.mouth.lip_opening` above ``min_opening``; below ~0.03 MediaPipe's inner-lip
polygon on a closed mouth often covers the lips themselves, which would teach "fill the hole
with lip"). Each mouth is cut once into a ``size`` px crop (:func:`~facexpr.face.mouth.mouth_frame`)
and kept in memory as uint8 with its inner-lip polygon in crop pixels. The hole of a sample is
that mouth's own polygon, grown by 1-3 px (sometimes shrunk by 1 px), so the network learns to
paint exactly the region the editor will ask for: everything inside the lips. Horizontal flips
double the data (a mouth is near-symmetric; a flipped one is still a real mouth).

Loss: L1 of the raw output against the real crop, ``hole_weight`` times heavier inside the hole
(outside it the composed output is the input anyway; the light L1 there only helps the network
keep its features aligned), plus ``adv_weight`` x LSGAN from a small PatchGAN critic that sees
(image, mask), its patch scores counted only where a patch touches the hole. L1 alone paints
the average interior, a grey band; the critic is what makes teeth separate and cavities dark.

Determinism: the network is initialised from ``seed``; the batch of step ``s`` and all its
augmentations come from ``numpy.random.default_rng([seed, s])`` and an epoch permutation from
``default_rng([seed, 1_000_003, epoch])``, so a resumed run draws exactly the batches an
uninterrupted one would.

Run folder::

    OUT/config.json              the resolved training options
    OUT/metrics.jsonl            one line per ``log_every`` steps (+ validation at checkpoints)
    OUT/samples/step-*.png       rows of (input with the hole | output | real) triplets
    OUT/checkpoints/             safetensors + JSON (facexpr.training.checkpoint), newest two
    OUT/mouth.safetensors/.json  the final EMA weights (written at the end)
    OUT/metrics.json             the final figures (validation L1 in the hole vs baselines)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from facexpr.errors import ConfigError, DatasetError
from facexpr.face.align import transform_points, warp_crop
from facexpr.face.mouth import inner_lip_polygon, lip_opening, mouth_frame
from facexpr.models.mouth import MouthConfig, MouthCritic, MouthInpainter, count_parameters, save_mouth
from facexpr.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, write_text_atomic


@dataclass
class MouthTrainConfig:
    """Options of :func:`train_mouth` (stored in ``OUT/config.json``)."""

    steps: int = 3000
    batch: int = 32
    lr: float = 2e-4
    seed: int = 0
    min_opening: float = 0.03
    hole_weight: float = 6.0
    adv_weight: float = 0.01
    ema: float = 0.999
    val_fraction: float = 0.1
    val_seed: int = 0
    log_every: int = 25
    sample_every: int = 250
    checkpoint_every: int = 500
    max_val: int = 1000


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


def build_mouth_set(
    dataset: Any,
    rows: Sequence[int] | NDArray[np.integer[Any]],
    landmarks: NDArray[np.floating],
    config: MouthConfig,
    min_opening: float,
    limit: int | None = None,
) -> MouthSet:
    """Cut the mouth crop of every row of ``rows`` whose mouth is open (read once, kept as uint8).

    ``landmarks`` are the dataset's (N, 478, 3) crop-pixel landmarks (NaN = no face: skipped).
    ``limit`` keeps the first rows only (after filtering), for validation and tests.
    """
    crops: list[np.ndarray] = []
    polys: list[np.ndarray] = []
    opens: list[float] = []
    kept: list[int] = []
    for i in np.asarray(rows, dtype=np.int64).tolist():
        lm = landmarks[i]
        if not np.isfinite(lm[:, :2]).all():
            continue
        op = lip_opening(lm)
        if not op >= min_opening:
            continue
        m = mouth_frame(lm, config.size, width_fraction=config.width_fraction)
        crops.append(warp_crop(dataset.image(i), m, config.size))
        polys.append(transform_points(inner_lip_polygon(lm), m).astype(np.float32))
        opens.append(op)
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
    """Rows of (input with the hole in grey | output | real) triplets as one uint8 image."""
    with torch.inference_mode():
        y = net(x, m)
    shown = x * (1 - m)  # the hole as the network sees it: 0 = mid-grey
    to8 = lambda t: t.add(1).mul(127.5).clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
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


def _save_png(path: Path, rgb: NDArray[np.uint8]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    Image.fromarray(rgb).save(tmp)
    os.replace(tmp, path)


def _sample_set(train: MouthSet, val: MouthSet) -> tuple[Tensor, Tensor]:
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


def evaluate_mouths(net: nn.Module, val: MouthSet, fill_colour: NDArray[np.float32] | None = None, batch: int = 64) -> dict[str, float]:
    """Mean |output - real| over hole pixels (0..1 units) on ``val``, with two baselines:
    filling with the mean colour of the crop's visible pixels, and with ``fill_colour`` (the
    mean hole colour of the training mouths)."""
    tot = {"net": 0.0, "crop_mean": 0.0, "train_mean": 0.0}
    count = 0.0
    for start in range(0, len(val), batch):
        picks = np.arange(start, min(start + batch, len(val)), dtype=np.int64)
        x, m = make_batch(val, picks, None)
        with torch.inference_mode():
            y = net(x, m)
        d, c = hole_l1(y, x, m)
        tot["net"] += d
        count += c
        vis = (1 - m)
        mean = (x * vis).sum((2, 3), keepdim=True) / vis.sum((2, 3), keepdim=True).clamp_min(1)
        tot["crop_mean"] += hole_l1(mean.expand_as(x), x, m)[0]
        if fill_colour is not None:
            col = torch.from_numpy(fill_colour).view(1, 3, 1, 1).float() / 127.5 - 1
            tot["train_mean"] += hole_l1(col.expand_as(x), x, m)[0]
    if count == 0:
        return {}
    out = {"val_l1_hole": tot["net"] / count, "val_l1_hole_crop_mean": tot["crop_mean"] / count}
    if fill_colour is not None:
        out["val_l1_hole_train_mean"] = tot["train_mean"] / count
    out["val_l1_hole_pixels"] = int(count // 3)
    return out


def mean_hole_colour(mouths: MouthSet, limit: int = 2000) -> NDArray[np.float32]:
    """Mean RGB (0..255) of the hole pixels of (up to ``limit``) mouths."""
    acc, n = np.zeros(3), 0.0
    for i in range(min(len(mouths), limit)):
        h = hole_mask(mouths.polygons[i], mouths.crops.shape[1], VAL_GROW) > 0
        acc += mouths.crops[i][h].astype(np.float64).sum(0)
        n += h.sum()
    return (acc / max(n, 1.0)).astype(np.float32)


# -- the loop -------------------------------------------------------------------------------------


def _epoch_order(seed: int, epoch: int, n: int) -> NDArray[np.int64]:
    return np.random.default_rng([seed, 1_000_003, epoch]).permutation(n).astype(np.int64)


def _batch_picks(seed: int, step: int, batch: int, n: int) -> NDArray[np.int64]:
    """Indices of step ``step``: consecutive slices of per-epoch permutations."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, pos = divmod(start + len(out), n)
        order = _epoch_order(seed, epoch, n)
        take = min(batch - len(out), n - pos)
        out.extend(order[pos:pos + take].tolist())
    return np.asarray(out, np.int64)


def load_mouth_data(
    data_folders: Sequence[str | os.PathLike[str]],
    model_config: MouthConfig,
    train_config: MouthTrainConfig,
    progress: bool = True,
    limit: int | None = None,
) -> tuple[MouthSet, MouthSet, dict[str, Any]]:
    """(training mouths, validation mouths, counts) from prepared folders, identity-disjoint."""
    from facexpr.data.dataset import PreparedDataset
    from facexpr.data.landmarks import dataset_landmarks

    if not data_folders:
        raise ConfigError("train-mouth needs at least one --data folder (a prepared dataset)")
    merged = PreparedDataset.merge([PreparedDataset(p) for p in data_folders])
    train_idx, val_idx = merged.split(train_config.val_fraction, train_config.val_seed)
    landmarks = dataset_landmarks(merged, progress=progress)
    train = build_mouth_set(merged, train_idx, landmarks, model_config, train_config.min_opening, limit=limit)
    val = build_mouth_set(merged, val_idx, landmarks, model_config, train_config.min_opening,
                          limit=min(train_config.max_val, limit) if limit else train_config.max_val)
    if len(train) == 0:
        raise DatasetError(
            f"no open mouth (lip opening >= {train_config.min_opening}) among the {len(train_idx)} training crops of "
            f"{', '.join(map(str, data_folders))}; add data with smiles showing teeth or open jaws, or lower --min-opening"
        )
    counts = {"rows": len(merged), "train_rows": int(len(train_idx)), "val_rows": int(len(val_idx)),
              "train_mouths": len(train), "val_mouths": len(val),
              "folders": [str(p) for p in data_folders]}
    return train, val, counts


def train_mouth(
    data_folders: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    steps: int = 3000,
    batch: int = 32,
    lr: float = 2e-4,
    seed: int = 0,
    *,
    model_config: MouthConfig | None = None,
    threads: int | None = None,
    progress: bool = True,
    limit: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train (or resume, when ``out_dir`` holds checkpoints) the mouth inpainter; returns metrics.

    ``options`` are other :class:`MouthTrainConfig` fields (``min_opening``, ``adv_weight``,
    ``sample_every``, ...). ``threads`` sets torch's and OpenCV's CPU threads (None: leave
    them). ``limit`` caps the number of mouths read (tests). The final EMA weights are written
    as ``out_dir/mouth.safetensors`` + ``mouth.json``.
    """
    known = {f.name for f in dataclasses.fields(MouthTrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown train-mouth option(s) {unknown}; valid: {sorted(known)}")
    tc = MouthTrainConfig(steps=int(steps), batch=int(batch), lr=float(lr), seed=int(seed), **options)
    if tc.steps < 0 or tc.batch < 1:
        raise ConfigError(f"steps must be >= 0 and batch >= 1 (got {tc.steps}, {tc.batch})")
    mc = model_config or MouthConfig()
    if threads:
        torch.set_num_threads(int(threads))
        cv2.setNumThreads(int(threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    t_data = time.perf_counter()
    train, val, counts = load_mouth_data(data_folders, mc, tc, progress=progress, limit=limit)
    data_seconds = time.perf_counter() - t_data

    torch.manual_seed(tc.seed)
    G = MouthInpainter(mc)
    D = MouthCritic(mc)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=tc.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=tc.lr, betas=(0.5, 0.999))
    modules = {"G": G, "D": D, "G_ema": G_ema}
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}

    step = 0
    train_seconds = 0.0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        state = load_checkpoint(ckpt, modules, optimizers, restore_rng_state=False)
        step = int(state["iteration"])
        train_seconds = float(state.get("train_seconds", 0.0))
    resolved = {"train": dataclasses.asdict(tc), "model": dataclasses.asdict(mc), "data": counts,
                "parameters": {"G": count_parameters(G), "D": count_parameters(D)}, "threads": torch.get_num_threads()}
    write_text_atomic(out / "config.json", json.dumps(resolved, indent=2) + "\n")

    fill_colour = mean_hole_colour(train)
    sx, sm = _sample_set(train, val)
    log_path = out / "metrics.jsonl"

    def log(entry: dict[str, Any]) -> None:
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def checkpoint() -> None:
        save_checkpoint(out, step, modules, optimizers, {"train_seconds": train_seconds, "config": resolved})

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=min(step, tc.steps), unit="step", dynamic_ncols=True, desc="mouth")
    running: dict[str, float] = {}
    seen = 0
    t_window = time.perf_counter()
    try:
        while step < tc.steps:
            t0 = time.perf_counter()
            rng = np.random.default_rng([tc.seed, step])
            x, m = make_batch(train, _batch_picks(tc.seed, step, tc.batch, len(train)), rng)
            G.train()
            raw = G.generate(x, m)
            fake = m * raw + (1 - m) * x
            # critic: LSGAN, patches that touch the hole only
            d_real, d_fake = D(x, m), D(fake.detach(), m)
            w = patch_weights(m, d_real)
            loss_d = 0.5 * (((d_real - 1) ** 2 * w).sum() + (d_fake ** 2 * w).sum())
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # generator
            l1 = weighted_l1(raw, x, m, tc.hole_weight)
            adv = (((D(fake, m) - 1) ** 2) * w).sum()
            loss_g = l1 + tc.adv_weight * adv
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            with torch.no_grad():
                decay = min(tc.ema, (1 + step) / (10 + step))
                for pe, p in zip(G_ema.parameters(), G.parameters()):
                    pe.lerp_(p, 1 - decay)
            step += 1
            train_seconds += time.perf_counter() - t0
            seen += len(x)
            for k, v in (("l1", l1.item()), ("adv", adv.item()), ("d", loss_d.item())):
                running[k] = running.get(k, 0.0) + v
            if step % tc.log_every == 0 or step == tc.steps:
                n = max(1, (step - 1) % tc.log_every + 1)
                rate = seen / max(time.perf_counter() - t_window, 1e-9)
                entry = {"step": step, **{k: v / n for k, v in running.items()}, "img_s": rate,
                         "train_seconds": round(train_seconds, 1)}
                log(entry)
                if bar is not None:
                    bar.set_postfix(l1=f"{entry['l1']:.4f}", adv=f"{entry['adv']:.3f}", d=f"{entry['d']:.3f}", img_s=f"{rate:.0f}")
                running, seen, t_window = {}, 0, time.perf_counter()
            if bar is not None:
                bar.update(1)
            if step % tc.sample_every == 0 or step == tc.steps:
                _save_png(out / "samples" / f"step-{step:06d}.png", sample_grid(G_ema, sx, sm))
            if step % tc.checkpoint_every == 0 and step < tc.steps:
                if len(val):
                    log({"step": step, **evaluate_mouths(G_ema, val, fill_colour)})
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        if bar is not None:
            bar.close()
    checkpoint()
    metrics: dict[str, Any] = {
        "steps": step, "batch": tc.batch, "train_seconds": round(train_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "img_per_s": round(step * tc.batch / max(train_seconds, 1e-9), 1),
        "parameters": count_parameters(G), **counts,
    }
    if len(val):
        metrics.update(evaluate_mouths(G_ema, val, fill_colour))
    save_mouth(G_ema, out / "mouth.safetensors", training=metrics)
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
