"""Two-process data-parallel training on CPU (gloo) under the real ``torchrun`` launcher.

Checks that both ranks end with bit-identical weights, that only rank 0 writes the run folder,
and that 2 ranks x 4 images compute what 1 process x 8 images does (same data, same gradient
penalty draws; equal up to float summation order).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from facexpr.training import loop
from facexpr.training.config import TrainConfig, make_config
from facexpr.training.distributed import DistEnv, read_env
from facexpr.training.synthetic import make_synthetic_prepared
from facexpr.errors import ConfigError

from helpers import states_equal

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from facexpr.training import loop
    from facexpr.training.config import make_config

    data, run, out = sys.argv[1:4]
    cfg = make_config(model="ganimation-adain", preset="tiny", data=[data], size=32, batch=8, steps=3,
                      critic_steps=2, workers=0, progress=False, log_every=1, sample_every=1000,
                      checkpoint_every=2, sample_faces=2)
    res = loop.start_run(cfg, run, log=lambda s: None)
    tensors = {}
    for name, module in (("G", res.raw_generator), ("G_ema", res.generator), ("D", res.critic)):
        tensors.update({f"{name}/{k}": v.contiguous() for k, v in module.state_dict().items()})
    save_file(tensors, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))
    """
)


def config(data: Path) -> TrainConfig:
    return make_config(model="ganimation-adain", preset="tiny", data=[str(data)], size=32, batch=8, steps=3,
                       critic_steps=2, workers=0, progress=False, log_every=1, sample_every=1000,
                       checkpoint_every=2, sample_faces=2)


def test_read_env_is_pure() -> None:
    assert read_env({}) == DistEnv()
    env = read_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "x", "MASTER_PORT": "1",
                    "FACEXPR_DIST_BACKEND": "gloo"})
    assert env.enabled and env.rank == 1 and env.backend == "gloo" and not env.is_main
    with pytest.raises(ConfigError, match="torchrun"):
        read_env({"WORLD_SIZE": "2", "RANK": "0"})


def test_two_rank_gloo_run_keeps_replicas_identical(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = make_synthetic_prepared(tmp_path / "syn", n=40, size=32, identities=10)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACEXPR_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(data), str(tmp_path / "run"), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = load_file(out / "rank0.safetensors")
    r1 = load_file(out / "rank1.safetensors")
    assert states_equal(r0, r1), "replicas diverged"
    # rank 0 alone wrote the run folder, with its checkpoints
    run = tmp_path / "run"
    assert (run / "config.json").exists() and (run / "checkpoints" / "latest.json").exists()
    # the same run in one process: same data and penalty draws, so the same weights up to
    # float summation order
    single = loop.start_run(config(data), tmp_path / "single", log=lambda s: None)
    for name, module in (("G", single.raw_generator), ("D", single.critic)):
        for k, v in module.state_dict().items():
            torch.testing.assert_close(r0[f"{name}/{k}"], v, rtol=1e-3, atol=1e-4)
