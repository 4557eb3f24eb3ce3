"""Multi-process data-parallel training under ``torchrun``: the environment is read here, once.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``FACEXPR_DIST_BACKEND`` overrides the backend (default: nccl with CUDA, gloo on CPU) and
``FACEXPR_DIST_TIMEOUT`` the collective timeout in seconds. Nothing happens at import:
:func:`read_env` is a pure function of a mapping and :func:`init` is called by the loop.

Gradients are averaged with one explicit all-reduce per phase (flattened, as stylegan2/3 do)
instead of wrapping modules in ``DistributedDataParallel``: the critic phase needs
``torch.autograd.grad(create_graph=True)`` for the gradient penalty, which DDP's reducer does
not support, and the two phases alternate which network receives gradients. Weights are
broadcast from rank 0 at start, so every rank then applies the same averaged update and the
replicas stay identical (tested).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from facexpr.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = 1800.0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Parse torchrun's variables (and FACEXPR_DIST_*) from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
        timeout = float(env.get("FACEXPR_DIST_TIMEOUT", "1800"))
    except ValueError as exc:
        raise ConfigError(f"invalid distributed environment variable ({exc}); launch with torchrun") from exc
    backend = env.get("FACEXPR_DIST_BACKEND") or None
    if world > 1 and ("MASTER_ADDR" not in env or "MASTER_PORT" not in env):
        raise ConfigError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set; launch with torchrun")
    if not 0 <= rank < max(world, 1):
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return DistEnv(rank=rank, world_size=world, local_rank=local, backend=backend, timeout_s=timeout)


def device_for(env: DistEnv, requested: str) -> torch.device:
    """The device of this rank: ``auto`` -> CUDA if present; CUDA ranks use ``cuda:LOCAL_RANK``."""
    from facexpr.devices import check_device

    requested = check_device(requested)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", env.local_rank if env.enabled else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group (no-op for a single process or when already initialised)."""
    if not env.enabled or dist.is_initialized():
        return
    backend = env.backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(
        backend=backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=env.timeout_s),
    )


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_module(module: nn.Module, env: DistEnv) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not env.enabled:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_gradients(params: Iterable[nn.Parameter], env: DistEnv) -> None:
    """All-reduce-average the gradients of ``params`` in one flattened collective.

    Parameters without a gradient (frozen for this phase) are skipped; every rank has the same
    set because every rank runs the same phases.
    """
    if not env.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_reduce_flag(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if it is True on any rank (used to stop all ranks at one step)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
