"""The one training loop shared by every family (stylegan3's ``training_loop`` pattern).

The loop owns the schedule and the machinery; a family's recipe (:mod:`.recipes`) only says
what one critic step and one generator step compute. Per iteration: one batch, one critic step;
every ``critic_steps``-th iteration also one generator step on the same batch (GANimation's
schedule), then the EMA update of G. ``steps`` counts generator steps.

Exact resume: every random choice after model initialisation is derived from
``(seed, rank, iteration)`` (gradient-penalty mixing weights) or ``(seed, epoch, position)``
(data order, flips, target AUs), and the data position is a function of the iteration counter.
Restoring weights, optimiser states and the counters therefore continues a run bit-identically;
the global RNG states are saved and restored too, for code that does use them.

Outputs in the run folder: ``config.json`` (resolved), ``metrics.jsonl``, ``loss_curves.png``,
``samples/step-XXXXXXX.png`` and ``checkpoints/``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from facexpr import __version__
from facexpr.data.dataset import PreparedDataset, read_meta
from facexpr.errors import ConfigError, DatasetError, FacexprError
from facexpr.expression import AU_NAMES, emotion_aus
from facexpr.models import au_condition
from facexpr.training import checkpoint as ckpt
from facexpr.training import distributed as dist_utils
from facexpr.training import reporting
from facexpr.training.config import RESOLVED, TrainConfig, read_run_config, validate
from facexpr.training.data import (
    ExpressionPairs,
    ResumableSampler,
    ignore_sigint_in_worker,
    resize_rgb,
    samples_per_rank,
    to_tensor_image,
)
from facexpr.training.recipes import Batch, recipe_for, sample_grid_for


class TrainingDiverged(FacexprError):
    """A loss became NaN/inf; the last checkpoint is kept untouched."""


# -- data -----------------------------------------------------------------------------------------


@dataclass
class DataBundle:
    """The merged prepared data and its identity-disjoint split."""

    prepared: PreparedDataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    parts: list[dict[str, Any]]

    def describe(self) -> dict[str, Any]:
        return {
            "folders": self.parts,
            "total": len(self.prepared),
            "train": int(len(self.train_idx)),
            "val": int(len(self.val_idx)),
            "crop_size": int(self.prepared.size),
        }


def open_data(config: TrainConfig) -> DataBundle:
    """Open every ``--data`` folder, merge them and split by identity (no images are read)."""
    datasets = []
    parts = []
    for folder in config.data:
        ds = PreparedDataset(folder)
        meta = read_meta(Path(folder))
        datasets.append(ds)
        parts.append({
            "root": str(Path(folder).resolve()),
            "name": str(meta.get("name") or Path(folder).name),
            "count": len(ds),
            "size": int(ds.size),
            "sources": meta.get("sources", meta.get("source", "")),
            "expressions": ds.expression_counts(),
        })
    prepared = PreparedDataset.merge(datasets)
    train_idx, val_idx = prepared.split(config.val_fraction, config.split_seed)
    if len(train_idx) < 2:
        raise DatasetError(f"only {len(train_idx)} training image(s) after the split; need more data")
    return DataBundle(prepared, train_idx, val_idx, parts)


def data_fingerprint(data: DataBundle) -> str:
    """Hash of the training split's files and labels: a resumed run checks it did not change."""
    h = hashlib.sha1()
    for i in data.train_idx.tolist():
        h.update(data.prepared.files[i].encode() + b"\0")
    h.update(np.ascontiguousarray(data.prepared.aus[data.train_idx]).tobytes())
    return h.hexdigest()


def with_data_size(config: TrainConfig, data: DataBundle) -> TrainConfig:
    """Fix ``size = 0`` ("the data's crop size") to the actual size, so the saved run config
    and the model config say what was trained."""
    if config.size:
        return config
    return dataclasses.replace(config, size=int(data.prepared.size))


@dataclass(frozen=True)
class Schedule:
    """Counters derived from the config, the data and the number of ranks."""

    world_size: int
    per_rank_batch: int
    iterations_per_epoch: int
    total_steps: int
    critic_steps: int

    @property
    def total_iterations(self) -> int:
        return self.total_steps * self.critic_steps

    @property
    def epochs(self) -> float:
        return self.total_iterations / self.iterations_per_epoch


def make_schedule(config: TrainConfig, n_train: int, world_size: int) -> Schedule:
    if config.batch % world_size:
        raise ConfigError(f"batch {config.batch} is not divisible by the {world_size} processes; choose a multiple")
    prb = config.batch // world_size
    ipe = samples_per_rank(n_train, world_size) // prb
    if ipe < 1:
        raise ConfigError(
            f"the training split has {n_train} images, fewer than one batch of {config.batch}; "
            "use a smaller --batch or more data"
        )
    if config.steps > 0:
        total = config.steps
    else:
        total = max(1, math.ceil(config.epochs * ipe / config.critic_steps))
    return Schedule(world_size, prb, ipe, total, config.critic_steps)


def lr_factor(iteration: int, total_iterations: int, decay_fraction: float) -> float:
    """1 until the last ``decay_fraction`` of training, then linear down to 0 at the end."""
    decay = decay_fraction * total_iterations
    if decay <= 0 or iteration < total_iterations - decay:
        return 1.0
    return max(0.0, (total_iterations - iteration) / decay)


def gp_alpha(seed: int, iteration: int, batch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """Interpolation weights of the gradient penalty, a pure function of the step (see module).

    Drawn for the whole global batch and sliced like the sampler slices the data (rank r holds
    global slots r, r + world, ...), so an N-rank run computes what one process would.
    """
    g = torch.Generator().manual_seed((seed * (1 << 32) + iteration) % (1 << 63))
    return torch.rand(batch, 1, 1, 1, generator=g)[rank::world_size]


def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1.0 - beta)
        for be, b in zip(ema.buffers(), model.buffers()):
            be.copy_(b)


class Engine:
    """Networks, optimisers and the one-phase updates of a run; no data, files or schedule.

    Shared by the loop and the speed benchmark so both time exactly the same work. A phase is:
    autocast forward through the recipe, backward, gradient averaging across ranks, optional
    clipping, optimiser step (and, for G, the EMA update).
    """

    def __init__(self, config: TrainConfig, device: torch.device, env: dist_utils.DistEnv | None = None) -> None:
        self.config = config
        self.device = device
        self.env = env or dist_utils.DistEnv()
        family = config.family()
        self.model_config = config.resolved_model_config()
        torch.manual_seed(config.seed)  # identical initialisation on every rank
        self.G = family.build_generator(self.model_config).to(device)
        self.D = family.build_critic(self.model_config).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas)
        self.recipe = recipe_for(config.model)(self.G, self.D, config)
        self.use_amp = config.amp and device.type == "cuda"

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"G": self.opt_g, "D": self.opt_d}

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (no loss scaling needed: bf16 has fp32's range); fp32 on CPU."""
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def set_lr_factor(self, f: float) -> None:
        for group in self.opt_d.param_groups:
            group["lr"] = self.config.lr_d * f
        for group in self.opt_g.param_groups:
            group["lr"] = self.config.lr_g * f

    def critic_update(self, batch: Batch, alpha: Tensor) -> dict[str, Tensor]:
        with self.autocast():
            loss, metrics = self.recipe.critic_step(batch, alpha)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        _finish_grads(self.D, self.env, self.config.grad_clip)
        self.opt_d.step()
        return metrics

    def generator_update(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """One G step; ``step`` (G steps done before it) sets the EMA warm-up."""
        self.D.requires_grad_(False)
        try:
            with self.autocast():
                loss, metrics = self.recipe.generator_step(batch)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            _finish_grads(self.G, self.env, self.config.grad_clip)
            self.opt_g.step()
        finally:
            self.D.requires_grad_(True)
        ema_update(self.G_ema, self.G, min(self.config.ema_beta, (1 + step) / (10 + step)))
        return metrics


# -- the run --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    iteration: int
    total_steps: int
    interrupted: bool
    images_per_second: float
    generator: nn.Module  # the EMA generator (eval mode)
    raw_generator: nn.Module
    critic: nn.Module
    checkpoint: Path | None


def resolved_config_doc(config: TrainConfig, data: DataBundle, schedule: Schedule) -> dict[str, Any]:
    """The ``RUN/config.json`` content: options, the resolved model config, data and schedule."""
    return {
        "train": config.to_json(),
        "family": config.model,
        "model_config": dataclasses.asdict(config.resolved_model_config()),
        "data": data.describe(),
        "schedule": {**dataclasses.asdict(schedule), "total_iterations": schedule.total_iterations,
                     "epochs": round(schedule.epochs, 4)},
        "au_names": list(AU_NAMES),
        "facexpr_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def start_run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    env: dist_utils.DistEnv | None = None,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Start a new run in ``run_dir`` (which must not exist or be empty)."""
    validate(config)
    return _train(config, Path(run_dir), resume=False, env=env, stop_after_steps=stop_after_steps, log=log)


def resume_run(
    run_dir: str | Path,
    *,
    steps: int | None = None,
    overrides: dict[str, Any] | None = None,
    env: dist_utils.DistEnv | None = None,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Continue ``run_dir`` from its latest checkpoint to ``steps`` generator steps in total
    (default: the run's own total). ``overrides`` may change only options that do not affect
    the result (workers, device, progress, logging/sampling/checkpoint intervals)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    harmless = {"workers", "device", "progress", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"}
    bad = sorted(set(overrides or {}) - harmless)
    if bad:
        raise ConfigError(f"cannot change {bad} when resuming (it would change the run); start a new run instead")
    config = dataclasses.replace(config, **(overrides or {}))
    if steps is not None:
        config = dataclasses.replace(config, steps=int(steps))
    validate(config)
    if ckpt.latest_checkpoint(run_dir) is None:
        raise ConfigError(f"{run_dir}: has no checkpoint to resume from; start a new run instead")
    return _train(config, run_dir, resume=True, env=env, stop_after_steps=stop_after_steps, log=log)


@contextlib.contextmanager
def _stop_flag() -> Iterator[list[bool]]:
    """Turn the first Ctrl-C (SIGINT) or SIGTERM (schedulers, torchrun) into a flag the loop
    polls, so it can finish the step, save a checkpoint and exit; a second signal aborts."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            for s, h in previous.items():
                signal.signal(s, h)
            raise KeyboardInterrupt
        flag[0] = True

    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _train(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    env: dist_utils.DistEnv | None,
    stop_after_steps: int | None,
    log: Callable[[str], None],
) -> TrainResult:
    env = env or dist_utils.read_env()
    device = dist_utils.device_for(env, config.device)
    own_group = env.enabled and not torch.distributed.is_initialized()
    dist_utils.init(env, device)
    try:
        return _train_in_group(config, run_dir, resume, env, device, stop_after_steps, log)
    finally:
        if own_group:
            dist_utils.shutdown(env)


def _train_in_group(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    env: dist_utils.DistEnv,
    device: torch.device,
    stop_after_steps: int | None,
    log: Callable[[str], None],
) -> TrainResult:
    main = env.is_main
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: already exists; continue it with `facexpr train --resume {run_dir}` or choose a new --out")
    data = open_data(config)
    config = with_data_size(config, data)
    schedule = make_schedule(config, len(data.train_idx), env.world_size)
    engine = Engine(config, device, env)
    G, D, G_ema = engine.G, engine.D, engine.G_ema
    modules, optimizers = engine.modules, engine.optimizers
    size = engine.model_config.image_size

    fingerprint = data_fingerprint(data)
    step = iteration = 0
    elapsed_before = 0.0
    rows: list[dict[str, Any]] = []
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        assert latest is not None
        state = ckpt.load_checkpoint(latest, modules, optimizers)
        step, iteration = int(state["step"]), int(state["iteration"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        if step > schedule.total_steps:
            raise ConfigError(f"{run_dir}: already at generator step {step}; --steps must be at least that")
        if main and state.get("data_fingerprint") not in (None, fingerprint):
            log(f"warning: the training data of {run_dir} changed since the checkpoint (files added, removed or "
                "relabelled); the run continues, but not with the data order it would have had")
        if main:
            rows = reporting.truncate_metrics(run_dir, step)
            log(f"resuming {run_dir} from {latest.name} (step {step}, iteration {iteration}) to step {schedule.total_steps}")
    if main and not resume:
        log(f"training {config.model} ({config.preset} preset, {size} px) on {len(data.train_idx)} train / "
            f"{len(data.val_idx)} val images of {', '.join(p['name'] for p in data.parts)}: {schedule.total_steps} "
            f"generator steps = {schedule.epochs:.2f} epochs at batch {config.batch} on {device}"
            f"{f' x {env.world_size} processes' if env.enabled else ''}; run folder {run_dir}")
    dist_utils.barrier(env)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        doc = resolved_config_doc(config, data, schedule)
        ckpt.write_text_atomic(run_dir / RESOLVED, json.dumps(doc, indent=2) + "\n")
    for m in (G, D, G_ema):
        dist_utils.broadcast_module(m, env)

    autocast = engine.autocast

    train_set = ExpressionPairs(data.prepared, data.train_idx, size, config.seed, config.flip, config.target_noise)
    sampler = ResumableSampler(train_set, env.world_size, env.rank, seed=config.seed, shuffle=True)
    loader = DataLoader(
        train_set,
        batch_size=schedule.per_rank_batch,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=config.workers > 0,
        worker_init_fn=ignore_sigint_in_worker if config.workers > 0 else None,
    )

    sample_set = _sample_batch(data, size, config.sample_faces, device) if main else None

    def save(it: int, st: int) -> Path | None:
        path = None
        if main:
            path = ckpt.save_checkpoint(
                run_dir, it, modules, optimizers,
                {"step": st, "epoch": it / schedule.iterations_per_epoch, "total_steps": schedule.total_steps,
                 "elapsed_s": elapsed_before + time.perf_counter() - t_start,
                 "images_seen": it * config.batch, "data_fingerprint": fingerprint},
                keep=config.keep_checkpoints,
            )
        dist_utils.barrier(env)
        return path

    def report(st: int) -> None:
        assert sample_set is not None
        grid, val = _samples_and_val(G_ema, D, sample_set, autocast, sample_grid_for(config.model))
        reporting.save_png(run_dir / reporting.SAMPLES / f"step-{st:07d}.png", grid)
        row = {"step": st, **{f"val/{k}": v for k, v in val.items()}}
        reporting.append_metrics(run_dir, row)
        rows.append(row)
        reporting.plot_curves(rows, run_dir / reporting.CURVES)

    bar = None
    if main and config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=schedule.total_steps, initial=step, unit="step", dynamic_ncols=True, desc=config.model)

    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    t_start = time.perf_counter()
    t_log, it_log = t_start, iteration
    start_iteration = iteration
    interrupted = False
    loader_iter = None
    last_ckpt: Path | None = None
    ipe = schedule.iterations_per_epoch
    try:
        with _stop_flag() as sigint:
            while iteration < schedule.total_iterations:
                epoch, within = divmod(iteration, ipe)
                if loader_iter is None or within == 0:
                    sampler.set_epoch(epoch)
                    sampler.set_start(within * schedule.per_rank_batch)
                    loader_iter = iter(loader)
                try:
                    items = next(loader_iter)
                except RuntimeError:
                    if not sigint[0]:
                        raise
                    # workers killed by a group-wide SIGTERM: save what is done and stop
                    interrupted = True
                    break
                batch = Batch.from_items(items, device)
                f = lr_factor(iteration, schedule.total_iterations, config.decay_fraction)
                engine.set_lr_factor(f)
                alpha = gp_alpha(config.seed, iteration, config.batch, env.rank, env.world_size)
                _accumulate(sums, counts, engine.critic_update(batch, alpha))
                if (iteration + 1) % config.critic_steps == 0:
                    _accumulate(sums, counts, engine.generator_update(batch, step))
                    step += 1
                iteration += 1

                if (iteration % config.critic_steps == 0) and main:
                    if step % config.log_every == 0 or iteration == schedule.total_iterations:
                        now = time.perf_counter()
                        ips = (iteration - it_log) * config.batch / max(now - t_log, 1e-9)
                        row = {"step": step, "iteration": iteration, "epoch": round(iteration / ipe, 4),
                               "lr_factor": round(f, 6), "img_per_s": round(ips, 3),
                               **_means(sums, counts)}
                        sums.clear()
                        counts.clear()
                        t_log, it_log = now, iteration
                        bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
                        if bad:
                            raise TrainingDiverged(
                                f"non-finite {', '.join(bad)} at step {step}; the last checkpoint in {run_dir} is "
                                "intact: lower the learning rates or set grad_clip (e.g. --set grad_clip=10)"
                            )
                        reporting.append_metrics(run_dir, row)
                        rows.append(row)
                        if bar is not None:
                            bar.set_postfix({"img/s": f"{ips:.1f}", "d": f"{row.get('d/total', 0):.3g}",
                                             "g": f"{row.get('g/total', 0):.3g}"}, refresh=False)
                    if step % config.sample_every == 0:
                        report(step)
                if bar is not None and iteration % config.critic_steps == 0:
                    bar.update(step - bar.n)
                if iteration % config.critic_steps == 0 and step % config.checkpoint_every == 0:
                    last_ckpt = save(iteration, step) or last_ckpt

                stop = sigint[0] or (stop_after_steps is not None and step >= stop_after_steps
                                     and iteration % config.critic_steps == 0)
                if dist_utils.all_reduce_flag(stop, env, device):
                    interrupted = iteration < schedule.total_iterations
                    break
            last_ckpt = save(iteration, step) or last_ckpt
            if main and step % config.sample_every != 0:
                report(step)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t_start
    ips = (iteration - start_iteration) * config.batch / max(elapsed, 1e-9)
    if main:
        what = "interrupted: checkpoint saved" if interrupted else "finished"
        log(f"{what} at step {step}/{schedule.total_steps} ({ips:.2f} img/s); run folder {run_dir}")
        if interrupted:
            log(f"continue with: facexpr train --resume {run_dir}")
    return TrainResult(run_dir, step, iteration, schedule.total_steps, interrupted, ips, G_ema, G, D, last_ckpt)


def _finish_grads(module: nn.Module, env: dist_utils.DistEnv, clip: float) -> None:
    params = [p for p in module.parameters() if p.grad is not None]
    dist_utils.average_gradients(params, env)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)


def _accumulate(sums: dict[str, Tensor], counts: dict[str, int], metrics: dict[str, Tensor]) -> None:
    for k, v in metrics.items():
        v = v.detach().float()
        sums[k] = sums[k] + v if k in sums else v
        counts[k] = counts.get(k, 0) + 1


def _means(sums: dict[str, Tensor], counts: dict[str, int]) -> dict[str, float]:
    if not sums:
        return {}
    keys = sorted(sums)
    values = torch.stack([sums[k] / counts[k] for k in keys]).cpu().tolist()
    return {k: float(v) for k, v in zip(keys, values)}


# -- samples --------------------------------------------------------------------------------------


@dataclass
class _SampleSet:
    images: Tensor
    aus: Tensor
    targets: list[tuple[str, Tensor]]


def _sample_batch(data: DataBundle, size: int, n: int, device: torch.device) -> _SampleSet:
    """Fixed faces from the validation split (training split if it is empty) and fixed targets:
    three emotion prototypes applied to each face, and the real AUs of the next face."""
    pool = data.val_idx if len(data.val_idx) >= 2 else data.train_idx
    idx = [int(i) for i in pool[: max(2, n)]]
    images = torch.stack([to_tensor_image(resize_rgb(data.prepared.image(i), size)) for i in idx]).to(device)
    aus_np = data.prepared.aus[idx].astype(np.float32)
    targets = [
        (name, torch.from_numpy(np.stack([emotion_aus(name, 1.0, a) for a in aus_np])).to(device))
        for name in ("happy", "surprised", "angry")
    ]
    targets.append(("next face's AUs", torch.from_numpy(np.roll(aus_np, -1, axis=0)).to(device)))
    return _SampleSet(images, torch.from_numpy(aus_np).to(device), targets)


@torch.no_grad()
def _samples_and_val(
    G_ema: nn.Module,
    D: nn.Module,
    s: _SampleSet,
    autocast: Callable[[], Any],
    render: Callable[..., np.ndarray] = reporting.render_grid,
) -> tuple[np.ndarray, dict[str, float]]:
    """The sample grid, and validation numbers on the same faces with the EMA generator:
    AU error of the edits as judged by the critic's AU head (0..5 scale), cycle L1, mean A."""
    grid = render(G_ema, s.images, s.targets, autocast)
    target = s.targets[-1][1]
    with autocast():
        out = G_ema(s.images, au_condition(target))
        back = G_ema(out.result, au_condition(s.aus))
        _, pred = D(out.result)
    val = {
        "au_mae": float((pred.float() * 5 - target).abs().mean()),
        "cycle_l1": float((back.result.float() - s.images).abs().mean()),
        "attention_mean": float(out.attention.float().mean()),
    }
    return grid, val
