"""MoCo v3's InfoNCE against the batch's momentum keys (Chen, Xie & He, ICCV 2021; solo-learn's form).

For queries ``q`` (N, d) and momentum keys ``k`` (N, d), both L2-normalised, with the keys of the global
batch ``K`` (M, d) (gathered without gradient under data parallelism) and ``r`` this rank's offset in it:

    L = 2τ · -1/N Σ_i log( exp(q_i·K_{r+i}/τ) / Σ_m exp(q_i·K_m/τ) )

The factor 2τ is MoCo v3's (it keeps the gradient's scale independent of τ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimcl.distributed import gather_no_grad, rank
from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def mocov3_loss(
    query: torch.Tensor, key: torch.Tensor, temperature: float = 0.2, *, gather_distributed: bool = False
) -> torch.Tensor:
    """MoCo v3's InfoNCE of queries against the batch's keys, scaled by 2τ.

    Args:
        query: the predictor outputs of one view (N, d); normalised here.
        key: the momentum encoder's projections of the other view (N, d); normalised, no gradient.
        temperature: τ.
        gather_distributed: the keys of every rank are the negatives (gathered without gradient).

    Returns:
        The loss, a scalar.
    """
    if not temperature > 0:
        raise ValueError(f"MoCo v3 temperature must be > 0, got {temperature}")
    q = F.normalize(query, dim=1)
    k = F.normalize(key.detach(), dim=1)
    offset = 0
    if gather_distributed:
        k, offset = gather_no_grad(k), rank() * q.shape[0]
    logits = q @ k.T / temperature
    targets = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, targets) * (2 * temperature)
