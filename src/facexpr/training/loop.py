"""The one training loop shared by every family (stylegan3's ``training_loop`` pattern).

The loop owns the schedule and the machinery; a family's recipe (:mod:`.recipe`) declares its
networks, optimisers, phases, losses, data and samples. Per iteration: one batch, then every
phase of the recipe whose interval divides the iteration (GANimation: the critic every
iteration, the generator every ``critic_steps``-th, then G's EMA). ``steps`` counts the
recipe's steps (``iterations_per_step`` iterations each: generator updates for the GANs).

Exact resume: every random choice after model initialisation is derived from
``(seed, rank, iteration)`` (e.g. gradient-penalty mixing weights, drawn by the recipe from its
:class:`~.recipe.StepContext`) or ``(seed, epoch, position)`` (data order, flips, sampled
targets), and the data position is a function of the iteration counter.
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
from facexpr.expression import AU_NAMES
from facexpr.training import checkpoint as ckpt
from facexpr.training import distributed as dist_utils
from facexpr.training import reporting
from facexpr.training.config import RESOLVED, TrainConfig, read_run_config, validate
from facexpr.training.data import ResumableSampler, ignore_sigint_in_worker, samples_per_rank
from facexpr.training.recipe import Batch, Phase, Recipe, StepContext


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
    and the model config say what was trained. A family whose input is not the data's crop
    (``size_from_data`` False: the mouth network cuts its own crop) keeps its config's size."""
    if config.size or not config.family().size_from_data:
        return config
    return dataclasses.replace(config, size=int(data.prepared.size))


@dataclass(frozen=True)
class Schedule:
    """Counters derived from the config, the recipe, the data and the number of ranks."""

    world_size: int
    per_rank_batch: int
    iterations_per_epoch: int
    total_steps: int
    iterations_per_step: int

    @property
    def total_iterations(self) -> int:
        return self.total_steps * self.iterations_per_step

    @property
    def epochs(self) -> float:
        return self.total_iterations / self.iterations_per_epoch


def make_schedule(config: TrainConfig, n_train: int, world_size: int, iterations_per_step: int) -> Schedule:
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
        total = max(1, math.ceil(config.epochs * ipe / iterations_per_step))
    return Schedule(world_size, prb, ipe, total, iterations_per_step)


def lr_factor(iteration: int, total_iterations: int, decay_fraction: float) -> float:
    """1 until the last ``decay_fraction`` of training, then linear down to 0 at the end."""
    decay = decay_fraction * total_iterations
    if decay <= 0 or iteration < total_iterations - decay:
        return 1.0
    return max(0.0, (total_iterations - iteration) / decay)


def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1.0 - beta)
        for be, b in zip(ema.buffers(), model.buffers()):
            be.copy_(b)


class Engine:
    """A recipe's networks, EMA copies and optimisers, and the one way a phase updates them;
    no data, files or schedule.

    Shared by the loop and the speed benchmark so both time exactly the same work. A phase is:
    only the phase optimiser's parameters take gradients; autocast forward through the recipe's
    loss, backward, gradient averaging across ranks, optional clipping, optimiser step, then the
    EMA copies the phase names.
    """

    def __init__(self, config: TrainConfig, device: torch.device, env: dist_utils.DistEnv | None = None) -> None:
        self.config = config
        self.device = device
        self.env = env or dist_utils.DistEnv()
        self.model_config = config.resolved_model_config()
        self.recipe_config = config.resolved_recipe_config()
        ctx = StepContext(0, 0, config.seed, config.batch, self.env.rank, self.env.world_size)
        self.recipe: Recipe = config.recipe()(config.model, self.model_config, self.recipe_config, ctx)
        torch.manual_seed(config.seed)  # identical initialisation on every rank
        self.networks = {k: m.to(device) for k, m in self.recipe.networks().items()}
        self.ema = {k: copy.deepcopy(self.networks[src]).eval().requires_grad_(False)
                    for k, src in self.recipe.ema.items()}
        self.modules: dict[str, nn.Module] = {**self.networks, **self.ema}
        self.recipe.bind(self.modules)
        self.optimizers = self.recipe.optimizers(self.networks)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.phases: tuple[Phase, ...] = self.recipe.phases()
        self._params = {name: [p for g in opt.param_groups for p in g["params"]]
                        for name, opt in self.optimizers.items()}
        self.use_amp = config.amp and device.type == "cuda"

    @property
    def iterations_per_step(self) -> int:
        return self.recipe.iterations_per_step

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (no loss scaling needed: bf16 has fp32's range); fp32 on CPU."""
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def set_lr_factor(self, f: float) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * f

    def context(self, iteration: int, step: int) -> StepContext:
        return StepContext(iteration, step, self.config.seed, self.config.batch, self.env.rank, self.env.world_size)

    def run_phase(self, phase: Phase, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        """One update of ``phase`` on ``batch``; ``ctx.step`` (steps done before it) sets the
        EMA warm-up."""
        params = self._params[phase.optimizer]
        own = {id(p) for p in params}
        frozen = [p for m in self.networks.values() for p in m.parameters() if id(p) not in own and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self.autocast():
                loss, metrics = self.recipe.loss(phase.name, batch, ctx)
            opt = self.optimizers[phase.optimizer]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _finish_grads(params, self.env, self.config.grad_clip)
            opt.step()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        for name in phase.ema:
            ema_update(self.ema[name], self.networks[self.recipe.ema[name]], self.recipe.ema_beta(ctx.step))
        return metrics

    def run_iteration(self, batch: Batch, iteration: int, step: int) -> dict[str, Tensor]:
        """Every phase due at ``iteration``, in the recipe's order; their metrics merged."""
        ctx = self.context(iteration, step)
        metrics: dict[str, Tensor] = {}
        for phase in self.phases:
            if (iteration + 1) % phase.every == 0:
                metrics.update(self.run_phase(phase, batch, ctx))
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
    family: str
    modules: dict[str, nn.Module]  # every network and EMA copy of the run, by name
    exports: dict[str, str]  # model component -> network name (the recipe's ``exports``)
    checkpoint: Path | None

    @property
    def generator(self) -> nn.Module:
        """What an exported model of this run would run: the network behind the ``generator``
        component (the EMA generator for the GANs), or the family's generator assembled from its
        components (a CycleGAN's two translators)."""
        if "generator" in self.exports:
            return self.modules[self.exports["generator"]]
        from facexpr.models import get_family

        return assemble(get_family(self.family), self.modules, self.exports)

    @property
    def raw_generator(self) -> nn.Module:
        return self.modules["G"]

    @property
    def critic(self) -> nn.Module:
        return self.modules["D"]


def assemble(family: Any, modules: dict[str, nn.Module], exports: dict[str, str], config: Any = None) -> nn.Module:
    """The family's generator with each exported component's weights copied in."""
    source = modules[next(iter(exports.values()))]
    generator = family.build_generator(config if config is not None else source.config)
    generator.to(next(source.parameters()).device)
    for component, target in family.component_modules(generator).items():
        target.load_state_dict(modules[exports[component]].state_dict())
    return generator.eval().requires_grad_(False)


def make_recipe(config: TrainConfig, env: dist_utils.DistEnv | None = None) -> Recipe:
    """The run's recipe object (declarations only: no network is built)."""
    env = env or dist_utils.DistEnv()
    ctx = StepContext(0, 0, config.seed, config.batch, env.rank, env.world_size)
    return config.recipe()(config.model, config.resolved_model_config(), config.resolved_recipe_config(), ctx)


def plan(config: TrainConfig, data: DataBundle, world_size: int) -> tuple[np.ndarray, Schedule]:
    """The training rows the recipe uses and the schedule they give."""
    recipe = make_recipe(config)
    rows = recipe.training_rows(data.prepared, data.train_idx)
    if len(rows) < 2:
        raise DatasetError(f"only {len(rows)} usable training image(s) for {config.model} after the split; need more data")
    return rows, make_schedule(config, len(rows), world_size, recipe.iterations_per_step)


def resolved_config_doc(config: TrainConfig, data: DataBundle, schedule: Schedule,
                        rows: np.ndarray | None = None) -> dict[str, Any]:
    """The ``RUN/config.json`` content: options, the resolved model and recipe configs, data and
    schedule."""
    recipe = make_recipe(config)
    return {
        "train": config.to_json(),
        "family": config.model,
        "model_config": dataclasses.asdict(config.resolved_model_config()),
        "recipe": type(recipe).__name__,
        "recipe_config": dataclasses.asdict(config.resolved_recipe_config()),
        "phases": [dataclasses.asdict(ph) for ph in recipe.phases()],
        "exports": dict(recipe.exports),
        "data": {**data.describe(), **({"train_used": int(len(rows))} if rows is not None else {})},
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
    rows_train, schedule = plan(config, data, env.world_size)
    engine = Engine(config, device, env)
    recipe = engine.recipe
    modules, optimizers = engine.modules, engine.optimizers
    size = int(getattr(engine.model_config, config.family().size_field))

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
            raise ConfigError(f"{run_dir}: already at step {step}; --steps must be at least that")
        if main and state.get("data_fingerprint") not in (None, fingerprint):
            log(f"warning: the training data of {run_dir} changed since the checkpoint (files added, removed or "
                "relabelled); the run continues, but not with the data order it would have had")
        if main:
            rows = reporting.truncate_metrics(run_dir, step)
            log(f"resuming {run_dir} from {latest.name} (step {step}, iteration {iteration}) to step {schedule.total_steps}")
    if main and not resume:
        log(f"training {config.model} ({config.preset} preset, {size} px) on {len(rows_train)} train / "
            f"{len(data.val_idx)} val images of {', '.join(p['name'] for p in data.parts)}: {schedule.total_steps} "
            f"steps = {schedule.epochs:.2f} epochs at batch {config.batch} on {device}"
            f"{f' x {env.world_size} processes' if env.enabled else ''}; run folder {run_dir}")
    dist_utils.barrier(env)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        doc = resolved_config_doc(config, data, schedule, rows_train)
        ckpt.write_text_atomic(run_dir / RESOLVED, json.dumps(doc, indent=2) + "\n")
    for m in modules.values():
        dist_utils.broadcast_module(m, env)

    autocast = engine.autocast

    train_set = recipe.dataset(data.prepared, rows_train, size, config.seed, config.flip)
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

    pool = data.val_idx if len(data.val_idx) >= 2 else rows_train  # fixed validation faces
    sample_set = recipe.sample_set(data.prepared, pool, size, config.sample_faces, device) if main else None

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
        grid, val = recipe.report(sample_set, autocast)
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
    ips_ = schedule.iterations_per_step
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
                _accumulate(sums, counts, engine.run_iteration(batch, iteration, step))
                iteration += 1
                step = iteration // ips_

                if (iteration % ips_ == 0) and main:
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
                if bar is not None and iteration % ips_ == 0:
                    bar.update(step - bar.n)
                if iteration % ips_ == 0 and step % config.checkpoint_every == 0:
                    last_ckpt = save(iteration, step) or last_ckpt

                stop = sigint[0] or (stop_after_steps is not None and step >= stop_after_steps
                                     and iteration % ips_ == 0)
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
    return TrainResult(run_dir, step, iteration, schedule.total_steps, interrupted, ips, config.model, modules,
                       dict(recipe.exports), last_ckpt)


def _finish_grads(params: list[nn.Parameter], env: dist_utils.DistEnv, clip: float) -> None:
    params = [p for p in params if p.grad is not None]
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
