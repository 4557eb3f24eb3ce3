"""Pretraining the depth network (:mod:`facexpr.models.depthnet`) on depth rendered from the mesh.

StarGAN with 3D depth guidance (seed 003) needs a network RGB -> depth before the GAN starts,
so its depth critic judges real depth from the first step. No monocular depth network or depth
dataset is available offline, so the targets are the depth and normal maps rendered from each
crop's own MediaPipe mesh (:mod:`facexpr.training.depth_data`): the network learns to reproduce
the mesh's geometry from the pixels alone, which is what the GAN needs (a differentiable depth
of a generated face, consistent with that of real faces).

Data: the training identities of ``PreparedDataset.merge(folders).split(val_fraction, val_seed)``
(identity-disjoint; by default Taiwanese + LFW, 0.1, seed 0: the split every other facexpr
model uses, so the validation people were never fitted on by any of them).

Loss: pixel L1 on the depth map over the whole crop (so the background is learned as 0), plus,
when the model predicts normals, ``normals_weight x (1 - cosine)`` between predicted and
rendered normals on the face. Pixel losses only: a perceptual term would need an offline
pretrained feature network, and none is available. Adam with a cosine learning-rate decay.

Determinism: weights from ``torch.manual_seed(seed)``; the items of step ``s`` are the
``s * batch ... (s + 1) * batch - 1``-th of an endless sequence of epoch permutations
(``default_rng((seed, 1_000_003, epoch))``), each item's flip keyed by ``(seed, epoch,
position)`` (:class:`~facexpr.training.depth_data.DepthTargets`).

Evaluation (:func:`evaluate_depth`) on the validation people, inside the rendered face mask:
Pearson correlation of predicted and rendered depth (per image, then averaged; and pooled over
all pixels), mean absolute depth error, the same for the mean training depth map as a trivial
baseline, the face-mask IoU, and the normals' mean angular error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from facexpr import __version__
from facexpr.data.dataset import PreparedDataset
from facexpr.errors import ConfigError, DatasetError
from facexpr.face.depth import DEPTH_FLOOR
from facexpr.models.depthnet import (
    DepthNet,
    DepthNetConfig,
    count_parameters,
    save_depthnet,
)
from facexpr.training.depth_data import DepthTargets

__all__ = [
    "MASK_THRESHOLD",
    "DepthPretrainConfig",
    "depth_grid",
    "depth_loss",
    "evaluate_depth",
    "mean_targets",
    "model_card",
    "pretrain_depth",
]

#: Predicted depth above this counts as face (half the depth of the farthest face point).
MASK_THRESHOLD: float = DEPTH_FLOOR / 2

#: Terms under which the training data may be used, by the prepared set's name.
DATA_TERMS: dict[str, str] = {
    "taiwanese": "Taiwanese Facial Expression Image Database: academic research use only",
    "lfw": "Labeled Faces in the Wild (LFW): research use; cite Huang et al., \"Labeled Faces in the Wild: "
           "A Database for Studying Face Recognition in Unconstrained Environments\", UMass TR 07-49, 2007",
}


@dataclass
class DepthPretrainConfig:
    """Options of :func:`pretrain_depth` (stored in the model's ``config.json`` ``training``)."""

    steps: int = 2500
    batch: int = 16
    lr: float = 1e-3
    final_lr_fraction: float = 0.02
    seed: int = 0
    normals_weight: float = 1.0
    val_fraction: float = 0.1
    val_seed: int = 0
    max_val: int = 0  # 0 = every validation crop
    log_every: int = 50


def depth_loss(pred: dict[str, Tensor], batch: dict[str, Tensor], normals_weight: float = 1.0) -> dict[str, Tensor]:
    """``{"total", "depth_l1", ["normals_cos"]}``: L1 on depth everywhere, 1 - cosine of the
    normals on the face (rendered mask)."""
    l1 = (pred["depth"] - batch["depth"]).abs().mean()
    out = {"depth_l1": l1, "total": l1}
    if "normals" in pred:
        mask = batch["mask"]
        cos = (pred["normals"] * batch["normals"]).sum(dim=1, keepdim=True)
        ncos = ((1.0 - cos) * mask).sum() / mask.sum().clamp_min(1.0)
        out["normals_cos"] = ncos
        out["total"] = l1 + normals_weight * ncos
    return out


def _stack(items: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _epoch_order(seed: int, epoch: int, n: int) -> NDArray[np.int64]:
    return np.random.default_rng((seed, 1_000_003, epoch)).permutation(n)


def _batch_keys(seed: int, step: int, batch: int, n: int, orders: dict[int, NDArray[np.int64]]) -> list[tuple[int, int]]:
    """(epoch, position) keys of the items of ``step`` (``orders`` caches epoch permutations)."""
    keys = []
    for g in range(step * batch, (step + 1) * batch):
        epoch, k = divmod(g, n)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = _epoch_order(seed, epoch, n)
        keys.append((epoch, int(orders[epoch][k])))
    return keys


def mean_targets(data: DepthTargets, limit: int | None = None) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Mean depth map (S, S) and mean normal map (S, S, 3) (re-normalised where non-zero) of
    ``data``'s items and their mirror images (training flips, so the baseline is symmetric too)."""
    n = len(data) if limit is None else min(len(data), limit)
    if n == 0:
        raise DatasetError("no items to average: the training part has no crop with landmarks")
    depth = np.zeros((data.size, data.size), np.float64)
    normals = np.zeros((data.size, data.size, 3), np.float64)
    for pos in range(n):
        _, d, nm = data.render(int(data.indices[pos]))
        depth += d + d[:, ::-1]
        nm_f = nm[:, ::-1].copy()
        nm_f[..., 0] *= -1.0
        normals += nm + nm_f
    depth /= 2 * n
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    normals = np.where(length > 1e-9, normals / np.maximum(length, 1e-12), 0.0)
    return depth.astype(np.float32), normals.astype(np.float32)


@torch.inference_mode()
def evaluate_depth(
    net: DepthNet,
    data: DepthTargets,
    mean_depth: NDArray[np.floating] | None = None,
    mean_normals: NDArray[np.floating] | None = None,
    batch: int = 32,
    limit: int | None = None,
) -> dict[str, float]:
    """Metrics of ``net`` on the unflipped items of ``data`` (module docstring), and of the mean
    maps as a baseline when given. Each figure comes with its count (``images``, ``pixels``)."""
    net.eval()
    n = len(data) if limit is None else min(len(data), limit)
    r_img: list[float] = []
    r_base: list[float] = []
    abs_sum = base_abs_sum = 0.0
    ang_sum = base_ang_sum = 0.0
    inter = union = 0.0
    pixels = 0
    # pooled Pearson: running sums over all face pixels
    sums = np.zeros(5)  # sum p, sum t, sum p^2, sum t^2, sum p*t
    base_sums = np.zeros(5)
    mdepth = None if mean_depth is None else torch.from_numpy(np.asarray(mean_depth, np.float32))
    mnorm = None if mean_normals is None else torch.from_numpy(np.asarray(mean_normals, np.float32)).permute(2, 0, 1)

    def pearson(a: Tensor, b: Tensor) -> float:
        a = a - a.mean()
        b = b - b.mean()
        den = float(a.norm() * b.norm())
        return float((a * b).sum()) / den if den > 0 else 0.0

    def accumulate(s: NDArray[np.float64], p: Tensor, t: Tensor) -> None:
        p64, t64 = p.double(), t.double()
        s += [float(p64.sum()), float(t64.sum()), float((p64 * p64).sum()), float((t64 * t64).sum()), float((p64 * t64).sum())]

    def pooled(s: NDArray[np.float64], count: int) -> float:
        cov = s[4] / count - s[0] / count * s[1] / count
        vp = s[2] / count - (s[0] / count) ** 2
        vt = s[3] / count - (s[1] / count) ** 2
        return float(cov / math.sqrt(vp * vt)) if vp > 0 and vt > 0 else 0.0

    def angle(a: Tensor, b: Tensor) -> Tensor:
        return torch.rad2deg(torch.acos((a * b).sum(dim=0).clamp(-1.0, 1.0)))

    for start in range(0, n, batch):
        items = [data.item(pos, False) for pos in range(start, min(n, start + batch))]
        b = _stack(items)
        pred = net.predict(b["image"])
        for k in range(len(items)):
            mask = b["mask"][k, 0] > 0
            if not bool(mask.any()):
                continue
            t = b["depth"][k, 0][mask]
            p = pred["depth"][k, 0][mask]
            r_img.append(pearson(p, t))
            abs_sum += float((p - t).abs().sum())
            accumulate(sums, p, t)
            pixels += int(mask.sum())
            face_pred = pred["depth"][k, 0] > MASK_THRESHOLD
            inter += float((face_pred & mask).sum())
            union += float((face_pred | mask).sum())
            if mdepth is not None:
                m = mdepth[mask]
                r_base.append(pearson(m, t))
                base_abs_sum += float((m - t).abs().sum())
                accumulate(base_sums, m, t)
            if "normals" in pred:
                nt = b["normals"][k][:, mask]
                ang_sum += float(angle(pred["normals"][k][:, mask], nt).sum())
                if mnorm is not None:
                    base_ang_sum += float(angle(mnorm[:, mask], nt).sum())
    if not r_img:
        raise DatasetError("no validation crop with a rendered face to evaluate on")
    out: dict[str, float] = {
        "images": len(r_img),
        "pixels": pixels,
        "depth_pearson_mean": float(np.mean(r_img)),
        "depth_pearson_median": float(np.median(r_img)),
        "depth_pearson_pooled": pooled(sums, pixels),
        "depth_mae": abs_sum / pixels,
        "mask_iou": inter / max(union, 1.0),
    }
    if "normals" in pred:
        out["normals_angle_deg"] = ang_sum / pixels
    if mdepth is not None:
        out.update({
            "baseline_depth_pearson_mean": float(np.mean(r_base)),
            "baseline_depth_pearson_pooled": pooled(base_sums, pixels),
            "baseline_depth_mae": base_abs_sum / pixels,
        })
        if "normals" in pred and mnorm is not None:
            out["baseline_normals_angle_deg"] = base_ang_sum / pixels
    return out


def _grey(x: Tensor) -> NDArray[np.uint8]:
    """(1,S,S) in [0,1] -> uint8 (S,S,3)."""
    return (x.clamp(0, 1) * 255).round().byte().expand(3, -1, -1).permute(1, 2, 0).numpy()


def _normals_rgb(n: Tensor, mask: Tensor) -> NDArray[np.uint8]:
    """(3,S,S) unit normals -> uint8 (S,S,3) as (n + 1) / 2, black outside ``mask`` (1,S,S)."""
    rgb = (n.clamp(-1, 1) + 1.0) * 0.5 * mask
    return (rgb * 255).round().byte().permute(1, 2, 0).numpy()


@torch.inference_mode()
def depth_grid(net: DepthNet, data: DepthTargets, positions: Sequence[int]) -> NDArray[np.uint8]:
    """uint8 grid, one row per item (unflipped): image | rendered depth | predicted depth
    [| rendered normals | predicted normals (shown where the predicted depth says face)]."""
    net.eval()
    b = _stack([data.item(int(p), False) for p in positions])
    pred = net.predict(b["image"])
    rows = []
    for k in range(len(positions)):
        cells = [((b["image"][k] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy(),
                 _grey(b["depth"][k]), _grey(pred["depth"][k])]
        if "normals" in pred:
            cells += [_normals_rgb(b["normals"][k], b["mask"][k]),
                      _normals_rgb(pred["normals"][k], (pred["depth"][k] > MASK_THRESHOLD).float())]
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def spread_positions(data: DepthTargets, count: int) -> list[int]:
    """``count`` positions of ``data`` spread over its people (one crop per identity first)."""
    seen: set[str] = set()
    first: list[int] = []
    for pos, row in enumerate(data.indices.tolist()):
        ident = data.prepared.identities[row] or f"row{row}"
        if ident not in seen:
            seen.add(ident)
            first.append(pos)
    if len(first) < count:
        first += [p for p in range(len(data)) if p not in set(first)][: count - len(first)]
    step = max(1, len(first) // max(count, 1))
    return first[::step][:count]


def _set_name(root: Path) -> str:
    from facexpr.data.dataset import read_meta

    return str(read_meta(root).get("name") or root.name)


def model_card(config: DepthNetConfig, training: dict[str, Any]) -> str:
    """The ``MODEL_CARD.md`` of a pretrained depth network, from its training summary."""
    m = training.get("metrics", {})
    names = training.get("sets", [])
    terms = [DATA_TERMS.get(n, f"{n}: see the data's own licence") for n in names]

    def f(key: str, digits: int = 3) -> str:
        v = m.get(key)
        return "—" if v is None else f"{v:.{digits}f}"

    normals = bool(config.normals)
    lines = [
        f"# facexpr depth network ({training.get('name', 'depthnet')})",
        "",
        "RGB face crop -> depth map" + (" + surface normals" if normals else "") + ", the depth network of "
        "StarGAN with 3D depth guidance (seed 003): its depth critic judges (image, depth of image) and the "
        "generator gets its gradient through this network. Code: `facexpr.models.depthnet` (`DepthNet`, "
        "`load_depthnet`); training: `facexpr.training.depth_pretrain.pretrain_depth`.",
        "",
        "## Use",
        "",
        "```python",
        "from facexpr.models.depthnet import load_depthnet",
        "net = load_depthnet()              # this folder, or load_depthnet(PATH); eval mode, frozen",
        "out = net.predict(image)           # image (B,3,S,S) in [-1,1], an aligned facexpr crop",
        "out['depth']                       # (B,1,S,S) in [0,1]: 1 nearest, 0.1 farthest face point, 0 background",
        *(["out['normals']                   # (B,3,S,S) unit, x right, y up, z toward the viewer"] if normals else []),
        "```",
        "",
        f"- Input: aligned face crops of {config.image_size} px (facexpr's alignment), RGB in [-1, 1].",
        ("- Depth is relative per face, as rendered by `facexpr.face.depth.render_depth_normals`: 1 at the "
        "nearest face point, 0.1 at the farthest, 0 on the background (a sigmoid, so only near 0; "
        f"`depth > {MASK_THRESHOLD}` is the face mask)."),
        (f"- {training.get('parameters', 0):,} parameters (width {config.width}), stored as "
        f"{training.get('dtype', 'float32')}. Forward + backward of a batch of 8 at {config.image_size} px on "
        f"one CPU thread: {training.get('ms_fwd_bwd_batch8', '—')} ms; forward only: "
        f"{training.get('ms_fwd_batch8', '—')} ms."),
        "",
        "## Training data",
        "",
        *[f"- {t}" for t in terms],
        (f"- Prepared as {training.get('data_size', '?')} px aligned crops with `facexpr prepare`; targets rendered "
        "from each crop's own MediaPipe 478-point mesh (`facexpr.data.landmarks`), resized to "
        f"{config.image_size} px. The targets are MediaPipe's mesh geometry, not measured depth: the network can "
        "be no more right than that mesh (smooth, no hair, no ears, no neck; eyes and the mouth opening "
        "closed by fans, an open mouth a shallow cavity)."),
        (f"- Identity-disjoint split `PreparedDataset.merge([{', '.join(names)}]).split({training.get('val_fraction')}, "
        f"{training.get('val_seed')})`: {training.get('train_crops')} training crops "
        f"({training.get('train_dropped')} without landmarks left out), {training.get('val_crops')} validation "
        f"crops of {training.get('val_identities')} people never trained on."),
        "",
        "## Training",
        "",
        (f"- {training.get('steps')} steps of batch {training.get('batch')} ({training.get('epochs', 0):.1f} epochs), "
        f"random horizontal flips (normals' x negated). Adam lr {training.get('lr')} with a cosine decay to "
        f"{training.get('final_lr_fraction')} of it. Seed {training.get('seed')}."),
        "- Loss: pixel L1 on depth over the whole crop" + (
            f" + {training.get('normals_weight')} x (1 - cosine) of the normals on the face" if normals else "") + ". "
        "**Pixel losses only**: a perceptual term would need an offline pretrained feature network and none "
        "was available.",
        f"- {training.get('train_seconds', 0) / 60:.1f} minutes of training on one CPU thread of a shared 2-core "
        f"machine (+ {training.get('data_seconds', 0):.0f} s rendering the targets once). Final training losses "
        f"(mean of the last {training.get('log_every')} steps): depth L1 {training.get('final_depth_l1', float('nan')):.4f}"
        + (f", normals 1 - cos {training.get('final_normals_cos', float('nan')):.4f}" if normals else "") + ".",
        *[f"- {note}" for note in training.get("notes", [])],
        "",
        f"## Evaluation (validation people, {m.get('images', 0)} crops, inside the rendered face mask)",
        "",
        "| metric | this network | mean training depth map |",
        "|---|---|---|",
        f"| depth Pearson r, mean over images | **{f('depth_pearson_mean')}** | {f('baseline_depth_pearson_mean')} |",
        f"| depth Pearson r, pooled over pixels | **{f('depth_pearson_pooled')}** | {f('baseline_depth_pearson_pooled')} |",
        f"| depth mean absolute error (0..1) | **{f('depth_mae', 4)}** | {f('baseline_depth_mae', 4)} |",
        *([f"| normals mean angular error (deg) | **{f('normals_angle_deg', 1)}** | {f('baseline_normals_angle_deg', 1)} |"]
          if normals else []),
        f"| face-mask IoU (depth > {MASK_THRESHOLD}) | {f('mask_iou')} | — |",
        "",
        *[f"- {note}" for note in training.get("evaluation_notes", [])],
        *([""] if training.get("evaluation_notes") else []),
        ("The baseline is the mean of the training depth (and normal) maps and their mirror images: aligned "
        "faces share much of their shape, so it is already correlated with every face; the network's margin "
        "over it is what it reads from the pixels (pose, jaw, nose, open mouth)."),
        "",
        "## Limitations",
        "",
        ("- Relative depth of the face only, at the scale of facexpr's aligned crop; hair, ears, neck and "
        "background are 0. Not metric depth."),
        ("- Learned from MediaPipe's fitted mesh, so it inherits its smoothness and its errors on extreme poses, "
        "occlusions and unusual faces. Trained on real photos: on a GAN's early, smeared outputs its depth "
        "is an estimate of what the face would be, not a measurement."),
        "",
        "## Licence",
        "",
        ("Code: Apache-2.0 (facexpr). The weights are derived from the data above; use them under those terms "
        "(Taiwanese: academic research use only; LFW: research use, cite LFW)."),
        "",
    ]
    return "\n".join(lines)


def time_step(config: DepthNetConfig, batch: int = 8, repeats: int = 5) -> tuple[float, float]:
    """(ms forward + backward, ms forward) of a fresh network on ``batch`` random images, best of
    ``repeats``, with the current torch thread count."""
    net = DepthNet(config)
    x = torch.rand(batch, 3, config.image_size, config.image_size) * 2 - 1
    fb, fw = [], []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        out = net.predict(x)
        loss = sum(v.mean() for v in out.values())
        loss.backward()  # type: ignore[union-attr]
        fb.append(time.perf_counter() - t0)
        with torch.no_grad():
            t0 = time.perf_counter()
            net.predict(x)
            fw.append(time.perf_counter() - t0)
    return round(min(fb[1:]) * 1000, 1), round(min(fw[1:]) * 1000, 1)


def _lr_at(tc: DepthPretrainConfig, step: int) -> float:
    t = step / max(tc.steps, 1)
    return tc.lr * (tc.final_lr_fraction + (1 - tc.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def pretrain_depth(
    data_folders: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model_config: DepthNetConfig | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    progress: bool = True,
    limit: int | None = None,
    overwrite: bool = False,
    fp16: bool = False,
    name: str = "depthnet",
    **options: Any,
) -> dict[str, Any]:
    """Pretrain a :class:`DepthNet` on mesh-rendered depth and save it as the model folder ``out``.

    Args:
        data_folders: prepared datasets, merged in this order (identities namespaced by set).
        out: the model folder to write (``depth.safetensors`` + ``config.json`` + ``MODEL_CARD.md``).
        model_config: the network's shape (default :class:`DepthNetConfig`); its ``image_size``
            is the training size.
        run_dir: where to write ``metrics.jsonl`` and ``samples.png`` (validation faces: image |
            rendered depth | predicted depth [| rendered | predicted normals]); None = nowhere.
        threads: torch CPU threads (None: leave as is).
        progress: show a tqdm progress bar.
        limit: use at most this many training and validation crops (tests).
        overwrite: replace an earlier depth-net folder at ``out`` (never anything else).
        fp16: store the weights as float16.
        name: the model's name in its card.
        options: :class:`DepthPretrainConfig` fields (``steps``, ``batch``, ``lr``, ...).

    Returns:
        The training summary stored in ``config.json`` (``training``), validation metrics under
        ``"metrics"``.
    """
    known = {f.name for f in dataclasses.fields(DepthPretrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown pretrain_depth option(s) {unknown}; valid: {sorted(known)}")
    tc = DepthPretrainConfig(**options)
    if tc.steps < 0 or tc.batch < 1 or tc.lr <= 0:
        raise ConfigError(f"steps must be >= 0, batch >= 1 and lr > 0 (got {tc.steps}, {tc.batch}, {tc.lr})")
    if not data_folders:
        raise ConfigError("pretrain_depth needs at least one prepared dataset folder")
    mc = model_config or DepthNetConfig()
    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    from facexpr.models.depthnet import _check_replaceable

    _check_replaceable(out, overwrite)  # fail before spending the training time
    run = Path(run_dir) if run_dir is not None else None
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)

    # -- data -----------------------------------------------------------------------------------
    from facexpr.data.landmarks import dataset_landmarks

    t_data = time.perf_counter()
    parts = [PreparedDataset(p) for p in data_folders]
    merged = PreparedDataset.merge(parts)
    train_idx, val_idx = merged.split(tc.val_fraction, tc.val_seed)
    landmarks = dataset_landmarks(merged, progress=progress)
    if limit is not None:
        train_idx, val_idx = train_idx[:limit], val_idx[:limit]
    if tc.max_val:
        val_idx = val_idx[: tc.max_val]
    train = DepthTargets(merged, train_idx, landmarks, mc.image_size, seed=tc.seed, flip=True, cache=True)
    val = DepthTargets(merged, val_idx, landmarks, mc.image_size, flip=False, cache=True)
    if len(train) == 0:
        raise DatasetError(f"no training crop with landmarks in {', '.join(map(str, data_folders))}")
    # Render every training target once (the cache), and the baseline from them.
    mean_depth, mean_normals = mean_targets(train)
    data_seconds = time.perf_counter() - t_data

    # -- training -------------------------------------------------------------------------------
    torch.manual_seed(tc.seed)
    net = DepthNet(mc)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    orders: dict[int, NDArray[np.int64]] = {}
    log_path = run / "metrics.jsonl" if run is not None else None
    if log_path is not None:
        log_path.write_text("", encoding="utf-8")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, unit="step", dynamic_ncols=True, desc="depth")
    running: dict[str, float] = {}
    last: dict[str, float] = {}
    train_seconds = 0.0
    try:
        for step in range(tc.steps):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = _lr_at(tc, step)
            batch = _stack([train[k] for k in _batch_keys(tc.seed, step, tc.batch, len(train), orders)])
            net.train()
            losses = depth_loss(net.predict(batch["image"]), batch, tc.normals_weight)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            train_seconds += time.perf_counter() - t0
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + v.item()
            done = step + 1
            if done % tc.log_every == 0 or done == tc.steps:
                count = (done - 1) % tc.log_every + 1
                last = {k: v / count for k, v in running.items()}
                running = {}
                if log_path is not None:
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"step": done, "lr": _lr_at(tc, step), **last,
                                             "train_seconds": round(train_seconds, 1)}) + "\n")
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in last.items() if k != "total"})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    # -- evaluation, card, folder ---------------------------------------------------------------
    net.eval()
    metrics = evaluate_depth(net, val, mean_depth, mean_normals) if len(val) else {}
    ms_fb, ms_fw = time_step(mc)
    names = [_set_name(p.root) for p in parts]
    val_people = {merged.identities[i] or f"row{i}" for i in val.indices.tolist()}
    training: dict[str, Any] = {
        "name": name,
        **{k: v for k, v in dataclasses.asdict(tc).items()},
        "epochs": tc.steps * tc.batch / len(train),
        "train_seconds": round(train_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "final_depth_l1": last.get("depth_l1", float("nan")),
        **({"final_normals_cos": last.get("normals_cos", float("nan"))} if mc.normals else {}),
        "parameters": count_parameters(net),
        "dtype": "float16" if fp16 else "float32",
        "ms_fwd_bwd_batch8": ms_fb,
        "ms_fwd_batch8": ms_fw,
        "threads": torch.get_num_threads(),
        "sets": names,
        "folders": [str(p) for p in data_folders],
        "data_size": merged.size,
        "train_crops": len(train),
        "train_dropped": train.dropped,
        "val_crops": len(val),
        "val_identities": len(val_people),
        "loss": "pixel L1 on depth" + (" + (1 - cosine) on normals in the face mask" if mc.normals else "")
                + "; no perceptual term (no offline pretrained feature network available)",
        "metrics": metrics,
        "facexpr_version": __version__,
        "torch_version": torch.__version__,
    }
    save_depthnet(net, out, fp16=fp16, model_card=model_card(mc, training), training=training, overwrite=overwrite)
    if run is not None and len(val):
        from PIL import Image

        grid = depth_grid(net, val, spread_positions(val, min(8, len(val))))
        Image.fromarray(grid).save(run / "samples.png")
        (run / "metrics.json").write_text(json.dumps(training, indent=2) + "\n", encoding="utf-8")
    return training
