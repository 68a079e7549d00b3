"""SwAV's swapped prediction and the Sinkhorn-Knopp assignments it predicts (Caron et al., NeurIPS 2020).

``scores`` are the cosine similarities (B, K) of L2-normalised projections with the K unit-norm prototypes.
Sinkhorn-Knopp turns them into soft assignments ``Q`` (B, K) with equal mass on every prototype:

    Q = exp(scores / ε)ᵀ / Σ exp(scores / ε)                     (K, B), all entries summing to 1
    repeat ``iterations`` times:  rows ← rows / (K · row sums);  columns ← columns / (B · column sums)
    return B · Qᵀ                                                 every row (a sample) sums to 1

With ``gather_distributed`` the sums over samples run over every rank's columns (the global batch, and a
queue's share), so N ranks give one process's assignments. The swapped prediction, for the V views'
scores ``p_v`` and the assignments ``q_a`` of the global views a:

    L = mean over the pairs (a, v), v ≠ a, of  -1/N Σ_i Σ_k q_a[i, k] · log_softmax(p_v / τ)[i, k]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from dimcl.distributed import is_distributed
from dimcl.losses.precision import computed_in_float32


@torch.no_grad()
@computed_in_float32
def sinkhorn(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3, *, gather_distributed: bool = False
) -> torch.Tensor:
    """Sinkhorn-Knopp soft assignments with equal mass on every prototype (the module docstring's steps).

    Args:
        scores: cosine similarities of projections with the prototypes (B, K).
        epsilon: ε, the entropic regularisation (smaller is sharper).
        iterations: the number of row and column normalisations.
        gather_distributed: the sums over samples run over every rank's batch.

    Returns:
        The assignments (B, K), every row summing to 1; no gradient.
    """
    if not epsilon > 0:
        raise ValueError(f"Sinkhorn's epsilon must be > 0, got {epsilon}")
    distributed = gather_distributed and is_distributed()
    q = torch.exp(scores.detach() / epsilon).T  # (K, B)
    k = q.shape[0]
    totals = torch.stack([q.sum(), torch.tensor(float(q.shape[1]), device=q.device, dtype=q.dtype)])
    if distributed:
        dist.all_reduce(totals)  # the global sum, and the global number of samples B
    b = totals[1]
    q /= totals[0]
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(rows)
        q /= rows
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.T


@computed_in_float32
def swav_loss(
    preds: Sequence[torch.Tensor], assignments: Sequence[torch.Tensor], temperature: float = 0.1
) -> torch.Tensor:
    """Swapped prediction: every view predicts the assignments of the other global views.

    Args:
        preds: the V views' prototype scores, (N, K) each, global views first.
        assignments: the Sinkhorn assignments of the global views, (N, K) each; no gradient.
        temperature: τ of the softmax over the prototypes.

    Returns:
        The loss, a scalar.
    """
    if not temperature > 0:
        raise ValueError(f"SwAV temperature must be > 0, got {temperature}")
    if len(assignments) > len(preds):
        raise ValueError(f"SwAV needs at least as many views as assignments, got {len(preds)} and {len(assignments)}")
    terms = [
        -(q.detach() * torch.log_softmax(p / temperature, dim=1)).sum(dim=1).mean()
        for a, q in enumerate(assignments)
        for v, p in enumerate(preds)
        if v != a
    ]
    return torch.stack(terms).mean()
