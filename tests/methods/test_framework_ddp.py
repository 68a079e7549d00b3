"""Real 2-process gloo runs of the terms of DINO, SwAV, MoCo v3, NNCLR and W-MSE that need the global
batch: each rank's share of the batch gives what one process computes on the whole of it (losses, and
DDP-averaged gradients)."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import TinyBackbone
from test_distributed import GLOBAL_N as N
from test_distributed import _problem as linear_problem
from torch.nn.parallel import DistributedDataParallel

from dimcl.losses import mocov3_loss, nnclr_loss, sinkhorn, updated_center, whitened_mse_loss
from dimcl.methods import build_method

WORLD = 2


def _problem():
    """tests/test_distributed.py's two views of 8 inputs and linear layer, with Sinkhorn's scores and DINO's logits."""
    x1, x2, layer = linear_problem()
    g = torch.Generator().manual_seed(1)
    scores = F.normalize(torch.randn(N, 4, generator=g, dtype=torch.float64), dim=1)
    queue_scores = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    teacher = torch.randn(N, 7, generator=g, dtype=torch.float64)
    center = torch.randn(1, 7, generator=g, dtype=torch.float64)
    return x1, x2, layer, scores, queue_scores, teacher, center


#: objectives of (online projections of view 1, of view 2); keys / neighbours are the other view, detached; W-MSE
#: with sub-batches of 4 across the ranks, of 6 dimensions (so with shrinkage, eps 0.3)
OBJECTIVES = {
    "mocov3": lambda z1, z2, gather: mocov3_loss(z1, z2.detach(), 0.2, gather_distributed=gather),
    "nnclr": lambda z1, z2, gather: nnclr_loss(z2.detach(), z1, 0.1, gather_distributed=gather),
    "wmse": lambda z1, z2, gather: whitened_mse_loss(
        z1, z2, [torch.randperm(N, generator=torch.Generator().manual_seed(3))], 4, 0.3, gather_distributed=gather),
}


def _loss_and_grads(layer, x1, x2, name, gather):
    loss = OBJECTIVES[name](layer(x1), layer(x2), gather)
    loss.backward()
    params = layer.module if isinstance(layer, DistributedDataParallel) else layer
    grads = [p.grad.clone() for p in params.parameters()]
    params.zero_grad()
    return loss.detach(), grads


def _swav_method():
    torch.manual_seed(0)
    method = build_method("swav", TinyBackbone(), proj_hidden_dim=8, proj_output_dim=4, num_prototypes=5,
                          queue_size=6, epoch_queue_starts=0).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        method.queue.copy_(F.normalize(torch.randn(2, 6, 4, generator=g, dtype=torch.float64), dim=-1))
        method.queue_filled.fill_(6)
    views = [torch.randn(N, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    return method, views


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    x1, x2, layer, scores, queue_scores, teacher, center = _problem()
    shard = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    queue_shard = slice(rank * 3, (rank + 1) * 3)
    results = {
        # SwAV: this rank's samples and its share of the queue, the sums over both ranks
        "sinkhorn": sinkhorn(torch.cat([scores[shard], queue_scores[queue_shard]]), 0.05, 3, gather_distributed=True),
        "center": updated_center(center, teacher[shard], 0.9, gather_distributed=True),
    }
    ddp = DistributedDataParallel(layer)
    for name in OBJECTIVES:
        results[name] = _loss_and_grads(ddp, x1[shard], x2[shard], name, gather=True)
    method, views = _swav_method()  # the method: its queue shared out by rank, in eval mode (no batch norm update)
    with torch.no_grad():
        results["swav_method"] = method([v[shard] for v in views])["loss_ssl"]
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # see tests/test_distributed.py: DDP's gloo threads can abort an interpreter's shutdown


@pytest.fixture(scope="module")
def ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]


# float64 throughout: the sharded sums differ from one process's only in their order (a few ulps)
CLOSE = dict(rtol=1e-10, atol=1e-12)


def test_sinkhorn_of_the_shards_is_sinkhorn_of_the_whole_batch(ranks):
    _, _, _, scores, queue_scores, _, _ = _problem()
    whole = sinkhorn(torch.cat([scores[:4], queue_scores[:3], scores[4:], queue_scores[3:]]), 0.05, 3)
    torch.testing.assert_close(torch.cat([r["sinkhorn"] for r in ranks]), whole, **CLOSE)
    # a per-rank Sinkhorn would differ: the guard that the comparison means something
    assert not torch.allclose(sinkhorn(torch.cat([scores[:4], queue_scores[:3]])), whole[:7])


def test_dino_centre_is_the_global_batch_mean(ranks):
    _, _, _, _, _, teacher, center = _problem()
    for r in ranks:
        torch.testing.assert_close(r["center"], updated_center(center, teacher, 0.9), **CLOSE)
    assert not torch.allclose(updated_center(center, teacher[:4], 0.9), updated_center(center, teacher, 0.9))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_gathered_objectives_match_one_process(ranks, name):
    x1, x2, layer, *_ = _problem()
    loss, grads = _loss_and_grads(layer, x1, x2, name, gather=False)
    # MoCo v3 and NNCLR: each rank's loss is the mean over its queries; W-MSE: every rank the global loss
    rank_losses = torch.stack([r[name][0] for r in ranks])
    torch.testing.assert_close(rank_losses.mean(), loss, **CLOSE)
    for r in ranks:
        for a, b in zip(r[name][1], grads, strict=True):
            torch.testing.assert_close(a, b, **CLOSE)


def test_swav_shares_its_queue_out_by_rank(ranks):
    method, views = _swav_method()
    with torch.no_grad():
        whole = method(views)["loss_ssl"]
    torch.testing.assert_close(torch.stack([r["swav_method"] for r in ranks]).mean(), whole, **CLOSE)
