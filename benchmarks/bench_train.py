"""Training speed of the GANimation families: images/s, FLOPs per image, and on CUDA the
achieved FLOP/s against the GPU's bf16 dense peak.

It times the engine's own update functions (:class:`facexpr.training.loop.Engine`) on random
batches already on the device, so the numbers are the model's cost without data loading
(prepared crops decode far faster than these models train). "img/s" counts training images
consumed: each image goes through one critic step, and every ``critic_steps``-th batch also
through one generator step, so ``img/s = batch * k / (k * t_critic + t_generator)``.

    nice python benchmarks/bench_train.py                     # CPU: paper @ batch 25, small @ 16
    python benchmarks/bench_train.py --device cuda --iters 20 # GPU: adds FLOP/s and MFU

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add;
convolutions and matmuls only, which is where all the time of these models goes).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from facexpr.training.config import TrainConfig
from facexpr.training.loop import Engine, gp_alpha
from facexpr.training.recipes import Batch

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


def random_batch(n: int, size: int, device: torch.device, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        image=(torch.rand(n, 3, size, size, generator=g) * 2 - 1).to(device),
        aus=(torch.rand(n, 17, generator=g) * 5).to(device),
        target_aus=(torch.rand(n, 17, generator=g) * 5).to(device),
    )


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


def count_flops(cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """G forward FLOPs per image, and training FLOPs per image (critic + G steps, amortised)."""
    engine = Engine(dataclasses.replace(cfg, batch=2), device)
    size = engine.model_config.image_size
    b = random_batch(2, size, device)
    with flop_counter() as fc:
        with torch.no_grad():
            engine.G(b.image[:1], b.aus[:1] / 5)
    g_fwd = fc.get_total_flops()
    with flop_counter() as fc:
        engine.critic_update(b, gp_alpha(0, 0, 2))
    critic = fc.get_total_flops() / 2
    with flop_counter() as fc:
        engine.generator_update(b, 0)
    gen = fc.get_total_flops() / 2
    k = cfg.critic_steps
    return {"g_forward": g_fwd, "train_per_image": (k * critic + gen) / k, "critic_step_per_image": critic,
            "generator_step_per_image": gen,
            "g_params": sum(p.numel() for p in engine.G.parameters()),
            "d_params": sum(p.numel() for p in engine.D.parameters())}


def time_training(cfg: TrainConfig, device: torch.device, iters: int, warmup: int) -> dict[str, float]:
    engine = Engine(cfg, device)
    size = engine.model_config.image_size
    batch = random_batch(cfg.batch, size, device)
    # warm-up (allocator, cuDNN autotuning); on CPU a small batch is enough and much cheaper
    wb = batch if device.type == "cuda" else random_batch(2, size, device, seed=1)
    for i in range(warmup):
        engine.critic_update(wb, gp_alpha(0, i, wb.image.shape[0]))
        engine.generator_update(wb, i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(iters):
        engine.critic_update(batch, gp_alpha(0, i, cfg.batch))
    sync(device)
    t_critic = (time.perf_counter() - t0) / iters
    g_iters = max(1, iters // cfg.critic_steps)
    t0 = time.perf_counter()
    for i in range(g_iters):
        engine.generator_update(batch, i)
    sync(device)
    t_gen = (time.perf_counter() - t0) / g_iters
    k = cfg.critic_steps
    return {"t_critic": t_critic, "t_generator": t_gen,
            "img_per_s": cfg.batch * k / (k * t_critic + t_gen)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=25, help="batch of the paper-size runs")
    ap.add_argument("--small-batch", type=int, default=16, help="batch of the 'small' preset run")
    ap.add_argument("--iters", type=int, default=None, help="timed critic steps [cpu 1, cuda 20]")
    ap.add_argument("--families", nargs="+", default=["ganimation", "ganimation-adain"])
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
    header = "| family | preset | size | batch | G params | G fwd GFLOP/img | train GFLOP/img | critic s/step | G s/step | img/s |"
    if peak:
        header += " TFLOP/s | MFU |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for fam, preset, batch in runs:
        cfg = TrainConfig(model=fam, preset=preset, size=args.size, batch=batch, amp=not args.no_amp)
        flops = count_flops(cfg, device)
        speed = time_training(cfg, device, iters, warmup)
        row = (f"| {fam} | {preset} | {args.size} | {batch} | {flops['g_params'] / 1e6:.2f} M | "
               f"{flops['g_forward'] / 1e9:.2f} | {flops['train_per_image'] / 1e9:.2f} | "
               f"{speed['t_critic']:.3f} | {speed['t_generator']:.3f} | {speed['img_per_s']:.2f} |")
        if peak:
            achieved = flops["train_per_image"] * speed["img_per_s"] / 1e12
            row += f" {achieved:.1f} | {100 * achieved / peak[1]:.1f}% |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
