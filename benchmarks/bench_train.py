"""Training speed of any trainable family: images/s, FLOPs per image, and on CUDA the
achieved FLOP/s against the GPU's bf16 dense peak.

It times the engine's own phase updates (:meth:`facexpr.training.loop.Engine.run_phase`) on one
batch of the recipe's own batch type (drawn from a small synthetic prepared set) already on the
device, so the numbers are the model's cost without data loading (prepared crops decode far
faster than these models train). "img/s" counts training images consumed: a step is
``iterations_per_step`` batches, and each phase runs ``iterations_per_step / every`` times per
step, so ``img/s = batch * k / sum(t_phase * k / every)`` (GANimation: 5 critic + 1 G update).

    nice python benchmarks/bench_train.py                     # CPU: paper @ batch 25, small @ 16
    python benchmarks/bench_train.py --device cuda --iters 20 # GPU: adds FLOP/s and MFU

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add;
convolutions and matmuls only, which is where all the time of these models goes).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

import torch
from torch.utils.flop_counter import FlopCounterMode

from facexpr.training.config import TrainConfig, apply_overrides
from facexpr.training.loop import Engine
from facexpr.training.recipe import Batch
from facexpr.training.synthetic import make_synthetic_prepared

# bf16 dense tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.4,
    "GH200": 989.4,
    "H100 SXM": 989.4,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.5,
    "H100": 989.4,  # unspecified H100: assume SXM
    "A100": 312.0,
    "L40S": 362.1,
}


def gpu_peak(name: str) -> tuple[str, float] | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific first
        if all(part in name for part in key.split()):
            return key, value
    return None


def recipe_batch(engine: Engine, n: int, size: int, device: torch.device, data: str) -> Batch:
    """``n`` items of the recipe's dataset over a synthetic prepared set, stacked on ``device``."""
    from facexpr.data.dataset import PreparedDataset

    prepared = PreparedDataset(data)
    rows = engine.recipe.training_rows(prepared, np.arange(len(prepared)))
    ds = engine.recipe.dataset(prepared, rows, size, 0, True)
    items = [ds[(0, i % len(ds))] for i in range(n)]
    return Batch.from_items({k: torch.stack([it[k] for it in items]) for k in items[0]}, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _GlobalOnly:
    """Stand-in for FlopCounterMode's module tracker: its per-module backward hooks fail inside
    ``torch.autograd.grad`` (the gradient penalty), and only the global total is needed here."""

    parents = frozenset({"Global"})

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    return counter


def count_flops(cfg: TrainConfig, device: torch.device, data: str) -> dict[str, float]:
    """Training FLOPs per image (every phase, amortised over a step) and parameter counts."""
    engine = Engine(dataclasses.replace(cfg, batch=2), device)
    b = recipe_batch(engine, 2, engine.model_config.image_size, device, data)
    k = engine.iterations_per_step
    total = 0.0
    for phase in engine.phases:
        with flop_counter() as fc:
            engine.run_phase(phase, b, engine.context(0, 0))
        total += fc.get_total_flops() / 2 * (k // phase.every)
    return {"train_per_image": total / k,
            "params": {name: sum(p.numel() for p in m.parameters()) for name, m in engine.networks.items()}}


def time_training(cfg: TrainConfig, device: torch.device, iters: int, warmup: int, data: str) -> dict[str, float]:
    engine = Engine(cfg, device)
    size = engine.model_config.image_size
    batch = recipe_batch(engine, cfg.batch, size, device, data)
    # warm-up (allocator, cuDNN autotuning); on CPU a small batch is enough and much cheaper
    wb = batch if device.type == "cuda" else recipe_batch(engine, 2, size, device, data)
    for i in range(warmup):
        for phase in engine.phases:
            engine.run_phase(phase, wb, engine.context(i, i))
    k = engine.iterations_per_step
    times = {}
    for phase in engine.phases:
        sync(device)
        t0 = time.perf_counter()
        for i in range(iters):
            engine.run_phase(phase, batch, engine.context(i, i))
        sync(device)
        times[phase.name] = (time.perf_counter() - t0) / iters
    per_step = sum(t * k / ph.every for ph, t in zip(engine.phases, times.values()))
    return {"t_phase": times, "img_per_s": cfg.batch * k / per_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=25, help="batch of the paper-size runs")
    ap.add_argument("--small-batch", type=int, default=16, help="batch of the 'small' preset run")
    ap.add_argument("--iters", type=int, default=None, help="timed updates per phase [cpu 1, cuda 20]")
    ap.add_argument("--families", nargs="+", default=["ganimation", "ganimation-adain"])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe or model option for every run (as facexpr train --set)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    iters = args.iters or (20 if device.type == "cuda" else 1)
    warmup = 3 if device.type == "cuda" else 1
    peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name)
        print(f"device: {name}; bf16 dense peak: {peak[1] if peak else 'unknown'} TFLOP/s")
    else:
        print(f"device: cpu, {torch.get_num_threads()} threads, fp32")
    runs = [(fam, "paper", args.batch) for fam in args.families]
    runs += [(fam, "small", args.small_batch) for fam in args.families]
    data = str(make_synthetic_prepared(Path(tempfile.mkdtemp()) / "syn", n=16, size=args.size, identities=4))
    header = "| family | preset | size | batch | params (M) | train GFLOP/img | s per update | img/s |"
    if peak:
        header += " TFLOP/s | MFU |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for fam, preset, batch in runs:
        cfg = apply_overrides(TrainConfig(model=fam, preset=preset, size=args.size, batch=batch, amp=not args.no_amp),
                              args.sets)
        flops = count_flops(cfg, device, data)
        speed = time_training(cfg, device, iters, warmup, data)
        params = " ".join(f"{k} {v / 1e6:.2f}" for k, v in flops["params"].items())
        times = " ".join(f"{k} {v:.3f}" for k, v in speed["t_phase"].items())
        row = (f"| {fam} | {preset} | {args.size} | {batch} | {params} | {flops['train_per_image'] / 1e9:.2f} | "
               f"{times} | {speed['img_per_s']:.2f} |")
        if peak:
            achieved = flops["train_per_image"] * speed["img_per_s"] / 1e12
            row += f" {achieved:.1f} | {100 * achieved / peak[1]:.1f}% |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
