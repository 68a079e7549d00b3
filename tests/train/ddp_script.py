"""Run by test_ddp.py as a real multi-process job (Fabric launches the other ranks, gloo on CPU).

    python ddp_script.py loop  OUT ROOT   # the real pretraining loop on 2 processes
    python ddp_script.py fixed OUT        # 3 optimizer steps on a fixed global batch split over 2 processes

Each rank saves what it holds to OUT/rank<r>.pt for the test to compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_RUN  # noqa: E402

from dimcl.build import build_method_from_config  # noqa: E402
from dimcl.methods import cosine_momentum  # noqa: E402
from dimcl.recipes import (
    load_config,  # noqa: E402
    resolve_recipe,  # noqa: E402
)
from dimcl.train.loop import pretrain  # noqa: E402
from dimcl.train.optim import build_optimizer  # noqa: E402
from dimcl.train.pretrainer import Pretrainer  # noqa: E402

DDP = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
FIXED_STEPS = 3
GLOBAL_BATCH = 16


def fixed_config():
    return load_config(resolve_recipe("fashion_mnist/byol"), [*TINY_RUN, "optim.name=sgd", "optim.lr=0.1"])


def fixed_batch():
    """Two views of the fixed global batch, (GLOBAL_BATCH, 1, 28, 28) float64."""
    g = torch.Generator().manual_seed(123)
    return [torch.randn(GLOBAL_BATCH, 1, 28, 28, generator=g, dtype=torch.float64) for _ in range(2)]


def freeze_batchnorm_statistics(module: torch.nn.Module) -> None:
    """BatchNorm in eval mode, so each sample's forward is independent of how the batch is split.

    (SyncBatchNorm would do the same for batch statistics, but PyTorch runs it on CUDA only.)
    """
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def run_fixed_steps(model, optimizer, method, views, backward, step_fn):
    """The loop's step, on a fixed batch: forward, backward, optimizer step, momentum update."""
    freeze_batchnorm_statistics(model)
    losses = []
    for step in range(FIXED_STEPS):
        out = model(views, torch.full((views[0].shape[0],), -1))
        backward(out["loss"])
        step_fn()
        method.momentum_update(cosine_momentum(step + 1, 10, method.base_momentum))
        losses.append(out["loss"].detach().clone())
    return torch.stack(losses)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "loop":
        cfg = load_config(resolve_recipe("fashion_mnist/byol"), [*TINY_RUN, f"data.root={sys.argv[3]}", *DDP,
                                                                "data.batch_size=8"])
        result = pretrain(cfg, out)
        rank = torch.distributed.get_rank()
        torch.save({"state": result.model.state_dict(), "records": result.records}, out / f"rank{rank}.pt")
        return
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    torch.manual_seed(0)
    cfg = fixed_config()
    method = build_method_from_config(cfg).double()  # float64: see the test for why the comparison needs it
    pretrainer = Pretrainer(method, None)
    optimizer = build_optimizer(method, None, cfg.optim, GLOBAL_BATCH)
    model, optimizer = fabric.setup(pretrainer, optimizer)
    half = GLOBAL_BATCH // 2
    shard = slice(fabric.global_rank * half, (fabric.global_rank + 1) * half)
    views = [v[shard] for v in fixed_batch()]

    def step_fn():
        optimizer.step()
        optimizer.zero_grad()

    losses = run_fixed_steps(model, optimizer, method, views, fabric.backward, step_fn)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"losses": losses, "state": pretrainer.state_dict()}, out / f"rank{fabric.global_rank}.pt")


if __name__ == "__main__":
    main()
