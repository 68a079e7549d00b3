"""NNCLR's InfoNCE with nearest-neighbour positives (Dwibedi et al., ICCV 2021; solo-learn's form).

For the nearest neighbours ``nn`` (N, d) of one view's projections in the support queue (no gradient) and
the other view's predictions ``p`` (N, d), both L2-normalised, with ``P`` the predictions of the global
batch (M, d) (gathered with gradient under data parallelism) and ``r`` this rank's offset in it:

    L = -1/N Σ_i log( exp(nn_i·P_{r+i}/τ) / Σ_m exp(nn_i·P_m/τ) )
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimcl.distributed import gather, rank
from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def nnclr_loss(
    nn: torch.Tensor, p: torch.Tensor, temperature: float = 0.1, *, gather_distributed: bool = False
) -> torch.Tensor:
    """InfoNCE of nearest neighbours against the batch of the other view's predictions.

    Args:
        nn: the support queue's nearest neighbours of one view's projections (N, d); no gradient.
        p: the other view's predictor outputs (N, d).
        temperature: τ.
        gather_distributed: the predictions of every rank are the negatives (gathered with gradient).

    Returns:
        The loss, a scalar.
    """
    if not temperature > 0:
        raise ValueError(f"NNCLR temperature must be > 0, got {temperature}")
    neighbours = F.normalize(nn.detach(), dim=-1)
    p = F.normalize(p, dim=-1)
    offset = 0
    if gather_distributed:
        p, offset = gather(p), rank() * neighbours.shape[0]
    logits = neighbours @ p.T / temperature
    targets = torch.arange(neighbours.shape[0], device=p.device) + offset
    return F.cross_entropy(logits, targets)
