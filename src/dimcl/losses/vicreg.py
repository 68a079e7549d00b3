"""VICReg (Bardes et al., ICLR 2022): invariance, variance and covariance terms.

For projections ``z1, z2`` (N, D) of the (global) batch:

    invariance  s = mean_{i,d} (z1 - z2)²
    variance    v = mean_d relu(1 - sqrt(Var(z1_d) + 1e-4)) + the same for z2    (unbiased Var)
    covariance  c = Σ_{i≠j} Cov(z1)_ij² / D + the same for z2
    L = 25 s + 25 v + 1 c
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimcl.distributed import gather
from dimcl.losses.precision import computed_in_float32


def _variance_term(z: torch.Tensor) -> torch.Tensor:
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    return F.relu(1 - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


@computed_in_float32
def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    *,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """VICReg loss of two views' projections (the module docstring's formula).

    Args:
        z1: projections of view 1 (N, D).
        z2: projections of view 2 (N, D).
        sim_weight: the weight of the invariance term.
        var_weight: the weight of the variance term.
        cov_weight: the weight of the covariance term.
        gather_distributed: the variance and covariance of the global batch of every rank.

    Returns:
        The loss, a scalar.
    """
    if gather_distributed:
        z1, z2 = gather(z1), gather(z2)
    invariance = F.mse_loss(z1, z2)
    variance = _variance_term(z1) + _variance_term(z2)
    covariance = _covariance_term(z1) + _covariance_term(z2)
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance
