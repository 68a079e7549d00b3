"""Barlow Twins' redundancy-reduction objective (Zbontar et al., ICML 2021).

Both views' projections (N, D) are standardised per dimension over the (global) batch, then
``C = ẑ1ᵀ ẑ2 / N`` (D, D) and

    L = scale · ( Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij² )

with λ = 0.0051 and, as in solo-learn's recipes, scale = 0.1.
"""

from __future__ import annotations

import torch

from dimcl.distributed import gather
from dimcl.losses.dimcl import standardize
from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def barlow_twins_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lambd: float = 0.0051,
    scale_loss: float = 0.1,
    *,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Barlow Twins loss of two views' projections (the module docstring's formula).

    Args:
        z1: projections of view 1, (N, D).
        z2: projections of view 2, (N, D).
        lambd: λ, the weight of the off-diagonal (redundancy) term.
        scale_loss: the factor of the whole loss.
        gather_distributed: standardise and correlate over the global batch of every rank.

    Returns:
        The loss, a scalar.
    """
    if gather_distributed:
        z1, z2 = gather(z1), gather(z2)
    n = z1.shape[0]
    c = standardize(z1).T @ standardize(z2) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return scale_loss * (on_diag + lambd * off_diag)
