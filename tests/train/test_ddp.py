"""Real 2-process DDP on the CPU (gloo), through Fabric's own launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("ddp_script.py")
sys.path.insert(0, str(SCRIPT.parent))
from ddp_script import fixed_batch, fixed_config, run_fixed_steps  # noqa: E402

from dimcl.train.loop import Pretrainer  # noqa: E402
from dimcl.train.optim import build_optimizer  # noqa: E402
from dimcl.train.setup import build_method_from_config  # noqa: E402


def _launch(*args: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_process_steps_match_one_process_on_the_global_batch(tmp_path):
    _launch("fixed", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # One process on the whole global batch.
    torch.manual_seed(0)
    cfg = fixed_config()
    method = build_method_from_config(cfg)
    model = Pretrainer(method, None)
    optimizer = build_optimizer(method, None, cfg.optim, 16)

    def step_fn():
        optimizer.step()
        optimizer.zero_grad()

    losses = run_fixed_steps(model, optimizer, method, fixed_batch(), lambda loss: loss.backward(), step_fn)
    single = model.state_dict()
    # DimCL gathers the global batch; BYOL's term is a per-rank mean, so the global loss is the rank mean.
    mean_losses = (ranks[0]["losses"] + ranks[1]["losses"]) / 2
    torch.testing.assert_close(mean_losses, losses, rtol=1e-5, atol=1e-5)
    for key, value in single.items():
        torch.testing.assert_close(ranks[0]["state"][key], ranks[1]["state"][key], rtol=0, atol=0)
        if value.is_floating_point():
            torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5)


def test_the_pretraining_loop_runs_on_two_processes(tiny_fashion_mnist, tmp_path):
    _launch("loop", str(tmp_path), str(tiny_fashion_mnist))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Parameters (online and momentum) are identical; BatchNorm running statistics are per rank
    # between DDP's buffer broadcasts, as in any DDP run, and rank 0's are the ones saved.
    for key, value in ranks[0]["state"].items():
        if "running_" in key or "num_batches_tracked" in key:
            continue
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert (tmp_path / "backbone.safetensors").is_file()
    assert [r["epoch"] for r in ranks[0]["records"]] == [1, 2]
    assert ranks[0]["records"][-1]["loss"] == ranks[1]["records"][-1]["loss"]  # averaged over ranks
