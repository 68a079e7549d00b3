"""MoCo's InfoNCE against a queue of keys (He et al., CVPR 2020; MoCo v2+ as in solo-learn).

For queries ``q`` (N, d), momentum-encoder keys ``k`` (N, d) and a queue (K, d), all L2-normalised:

    L = -1/N Σ_i log( exp(q_i·k_i/τ) / (exp(q_i·k_i/τ) + Σ_m exp(q_i·queue_m/τ)) )
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def moco_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of queries against their keys (positives) and a queue of past keys (negatives).

    Args:
        query: the online projections (N, d); normalised here.
        key: the momentum encoder's projections of the other view (N, d); normalised, no gradient.
        queue: past keys (K, d), L2-normalised; no gradient.
        temperature: τ.

    Returns:
        The loss, a scalar.
    """
    if not temperature > 0:
        raise ValueError(f"MoCo temperature must be > 0, got {temperature}")
    q = F.normalize(query, dim=1)
    k = F.normalize(key.detach(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)
