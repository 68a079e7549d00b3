"""Distributed helpers: a gather that keeps gradients right, and world information.

Losses that need the whole batch (DimCL's per-dimension statistics, NT-Xent negatives, Barlow Twins'
cross-correlation, VICReg's variance and covariance) gather the per-rank tensors and compute the loss
of the *global* batch on every rank. Every rank then holds the same loss ``L`` of the global batch.

Backward of the gather: rank ``r`` owns the slice ``z_r`` of the gathered tensor. Every rank
computes the same ``dL/dZ``; summing it over ranks (all-reduce) and keeping slice ``r`` gives
``world_size * dL/dz_r``. DDP then averages parameter gradients over ranks, which divides by
``world_size`` again, so the parameters receive exactly the gradient of one process on the whole
batch. A gather whose backward only slices (without the all-reduce) is off by ``1 / world_size``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _check_same_sizes(sizes: torch.Tensor, local: int) -> None:
    """Refuse a gather of unequal per-rank batches (the gathered slices would not line up).

    On the CPU (gloo) the sizes are read and named in the error. On an accelerator reading them would
    make the host wait for the device at every gather, so the check is queued on the device instead
    (``torch._assert_async``): it fails at the next synchronisation, with the same advice.
    """
    advice = "use drop_last=True in the data loader so every rank sees equal batches"
    if sizes.device.type == "cpu":
        if (sizes != local).any():
            raise ValueError(
                f"distributed gather needs the same batch size on every rank, got {sizes.tolist()}; {advice}"
            )
    else:
        message = f"distributed gather needs the same batch size on every rank; {advice}"
        torch._assert_async((sizes == local).all(), message)


class _GatherWithGradient(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces the gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
        _check_same_sizes(torch.cat(sizes), tensor.shape[0])
        parts = [torch.empty_like(tensor) for _ in sizes]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank = dist.get_rank()
        ctx.local_size = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_size
        return grad[start : start + ctx.local_size]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (N, ...) from every rank along dim 0 -> (world_size * N, ...).

    Identity when not distributed. Gradients flow back to every rank (see the module docstring).
    """
    if not is_distributed():
        return tensor
    return _GatherWithGradient.apply(tensor)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather without autograd, e.g. for momentum-encoder keys entering a queue."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_unequal(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 tensors whose length differs by rank -> (sum of the lengths, ...), in rank order.

    For the shards of a dataset that does not divide evenly (evaluation, not training: no gradients). The
    lengths are gathered first; each rank's tensor is padded to the longest for the collective, and the
    padding is cut off again by those lengths, so nothing is counted twice. The other dimensions must
    agree across ranks. Identity when not distributed.
    """
    if not is_distributed():
        return tensor
    lengths = gather_no_grad(torch.tensor([tensor.shape[0]], device=tensor.device)).tolist()
    longest = max(lengths)
    if longest == 0:
        return tensor
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = gather_no_grad(padded).split(longest)
    return torch.cat([part[:length] for part, length in zip(parts, lengths, strict=True)])


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers of ``module`` (BatchNorm running statistics) into every rank's, in place.

    Between DDP's own broadcasts (at the start of each forward) every rank's running statistics move with
    its own batches, so before an evaluation in which every rank runs the model they are made rank
    ``src``'s, the ones a checkpoint written by that rank holds. No-op when not distributed.
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)
