"""Real 2-process DDP on the CPU (gloo), through Fabric's own launcher."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, write_fashion_mnist

SCRIPT = Path(__file__).with_name("ddp_script.py")
sys.path.insert(0, str(SCRIPT.parent))
from ddp_script import fixed_batch, fixed_config, run_fixed_steps  # noqa: E402

from dimcl.build import build_method_from_config  # noqa: E402
from dimcl.checkpoint import load_checkpoint  # noqa: E402
from dimcl.eval.offline import knn_of_run  # noqa: E402
from dimcl.run_dir import TIMING_KEYS, read_metrics  # noqa: E402
from dimcl.train.optim import build_optimizer  # noqa: E402
from dimcl.train.pretrainer import Pretrainer  # noqa: E402


def _launch(*args: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


#: Tolerance of the 2-process vs 1-process comparison, both in float64.
#: The two runs differ only in summation order: each rank reduces its half of the batch and the
#: all-reduce adds the halves, where one process reduces all 16 samples at once. A sum of n terms in
#: another order differs by at most about n·eps relative to the sum of magnitudes; the longest
#: reductions here are the convolution / linear backward sums over N·H·W = 16·28·28 ≈ 1.3e4 terms, and
#: three SGD steps (lr 0.1) plus the momentum update pass the differences through a few dozen further
#: operations. With float64's eps = 2.2e-16 that bounds the difference by ≈ 1.3e4 · 2.2e-16 · 1e2 ≈ 3e-10
#: of the values' scale (which is O(1) here), so 1e-9 holds on every CPU and every BLAS kernel choice.
#: In float32 the same bound is ≈ 1.3e4 · 1.2e-7 · 1e2 ≈ 0.2: no tolerance both holds everywhere and
#: catches a wrong gradient, which is why the comparison runs in float64. A gradient off by
#: 1/world_size (the classic gather bug) moves the weights by O(lr · grad) ≈ 1e-2, seven orders above.
FLOAT64_TOLERANCE = 1e-9


def test_two_process_steps_match_one_process_on_the_global_batch(tmp_path):
    _launch("fixed", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # One process on the whole global batch, in float64 as the two ranks.
    torch.manual_seed(0)
    cfg = fixed_config()
    method = build_method_from_config(cfg).double()
    model = Pretrainer(method, None)
    optimizer = build_optimizer(method, None, cfg.optim, 16)

    def step_fn():
        optimizer.step()
        optimizer.zero_grad()

    losses = run_fixed_steps(model, optimizer, method, fixed_batch(), lambda loss: loss.backward(), step_fn)
    single = model.state_dict()
    # DimCL gathers the global batch; BYOL's term is a per-rank mean, so the global loss is the rank mean.
    mean_losses = (ranks[0]["losses"] + ranks[1]["losses"]) / 2
    assert losses.dtype == torch.float64
    torch.testing.assert_close(mean_losses, losses, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)
    for key, value in single.items():
        # Both ranks apply the same all-reduced gradient to the same weights: equal bit for bit.
        torch.testing.assert_close(ranks[0]["state"][key], ranks[1]["state"][key], rtol=0, atol=0)
        if value.is_floating_point():
            torch.testing.assert_close(ranks[0]["state"][key], value, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)


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
    # Both ranks took part in the kNN, on rank 0's BatchNorm statistics (broadcast before it), and got its figure.
    assert [r["knn_top1"] for r in ranks[0]["records"]] == [r["knn_top1"] for r in ranks[1]["records"]]
    backbone_statistics = [key for key in ranks[0]["state"] if key.startswith("method.backbone.") and "running_" in key]
    assert backbone_statistics
    for key in backbone_statistics:
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key


DIMCL = str(Path(sys.executable).with_name("dimcl"))
#: One intra-op thread in every process of the runs compared below: torchrun sets OMP_NUM_THREADS=1 for its
#: workers, Fabric's launcher leaves torch's default, and another thread count sums convolutions in another
#: order. Pinned, the runs are deterministic by construction and compared with ==.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _ddp_pretrain(root: Path, run: Path) -> list[str]:
    """`dimcl pretrain` on 2 CPU processes (gloo), 2 epochs of 10 steps with kNN and the online probe."""
    return [DIMCL, "pretrain", "-c", "fashion_mnist/byol", "-o", str(run), f"data.root={root}", *TINY_RUN,
            "trainer.max_epochs=2", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu",
            "eval.diagnose=false"]


@pytest.fixture(scope="module")
def uninterrupted_ddp_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, run): the reference 2-process run, uninterrupted, started by Fabric's launcher."""
    # 320 images: 10 steps of 2 x 16 per epoch.
    tmp = tmp_path_factory.mktemp("ddp")
    root, full = write_fashion_mnist(tmp / "data", n_train=320, n_test=48), tmp / "full"
    done = subprocess.run(_ddp_pretrain(root, full), capture_output=True, text=True, timeout=1200, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, full


def test_the_epoch_knn_of_two_processes_is_the_offline_knn_of_its_checkpoint(uninterrupted_ddp_run, tmp_path):
    """Under DDP each rank extracts its shard of the bank and of the test set and the neighbours are merged
    across ranks: the last epoch's figures are what `dimcl knn` (one process, the whole sets) gives the
    checkpoint that epoch wrote. Equal, not close: they are hit counts of 48 test images, and the two
    features differ at most in float32's last bits (other batch sizes), which moves a count only if two
    neighbours or two class scores tie to ~1e-5 (the argument of tests/eval/test_knn_ddp.py)."""
    _, full = uninterrupted_ddp_run
    run = tmp_path / "run"
    shutil.copytree(full, run)  # the offline kNN writes knn.json and a feature cache: not into the shared run
    offline = knn_of_run(run / "checkpoints" / "last.ckpt")  # what the `dimcl knn` command runs
    last = read_metrics(full)[-1]
    assert (offline["knn_top1"], offline["knn_top5"]) == (last["knn_top1"], last["knn_top5"])


def _assert_same_run(got_run: Path, want_run: Path) -> None:
    """Equal metrics (timings aside) and equal checkpointed tensors: floats equal, not close."""
    got = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(got_run)]
    want = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(want_run)]
    assert [r["epoch"] for r in got] == [1, 2] and "knn_top1" in got[-1] and "probe_top1" in got[-1]
    assert got == want  # losses, kNN, probe
    a, b = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (got_run, want_run))
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_killed_and_resumed_two_process_run_ends_as_the_uninterrupted_one(uninterrupted_ddp_run, tmp_path):
    root, full = uninterrupted_ddp_run
    killed = tmp_path / "killed"
    # A session of its own, so the kill reaches both ranks (Fabric starts rank 1 as a child of rank 0).
    proc = subprocess.Popen(_ddp_pretrain(root, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env=ONE_THREAD)
    deadline = time.time() + 1200
    while not read_metrics(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
    done = len(read_metrics(killed))
    assert done == 1, "the kill should land after the first checkpoint and before the end"
    # The resumed processes start with fresh counters (Fabric's loader wrapper counts its own epochs).
    resumed = subprocess.run([*_ddp_pretrain(root, killed), "--resume"], capture_output=True, text=True, timeout=1200,
                             env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(killed, full)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_torchrun_nodes_end_as_one_node_with_two_processes(uninterrupted_ddp_run, tmp_path):
    """Two "nodes" on the loopback, one process each, started by torchrun as on a cluster (static
    rendezvous: node rank, master address and port), through the real command: global ranks 0 and 1
    are the same as on one node with two processes, so the run is the same to the bit."""
    root, full = uninterrupted_ddp_run
    run, port = tmp_path / "two_nodes", _free_port()
    command = [arg for arg in _ddp_pretrain(root, run) if arg != "trainer.devices=2"]
    command += ["trainer.devices=1", "trainer.num_nodes=2"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
             f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}", *command],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ONE_THREAD,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=1200)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    _assert_same_run(run, full)
