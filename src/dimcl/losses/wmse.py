"""W-MSE: the MSE of whitened projections (Ermolov et al., ICML 2021).

:func:`whiten` maps a batch ``z`` (M, D) to ``(z - mean) · Wᵀ`` with ``W = L⁻¹``, ``L`` the Cholesky factor
of the shrunk covariance ``(1 - ε) · Σ + ε · I``, ``Σ = (z - mean)ᵀ (z - mean) / (M - 1)``: the result has
identity covariance. :func:`wmse_loss` is the normalised MSE of two views' whitened features,

    L(w1, w2) = 2 - 2 · mean_i cos(w1_i, w2_i)

(W-MSE's, gradients through both views; solo-learn's "simplified" form detaches the second).
:func:`whitened_mse_loss` is W-MSE's objective: each view's (global) batch cut into sub-batches of
``whitening_size`` by a permutation, each sub-batch whitened on its own, the loss of the two whitened views,
averaged over the permutations (W-MSE's ``w_iter``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dimcl.distributed import gather
from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def whiten(z: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cholesky whitening: ``(z - mean) · L⁻ᵀ``, ``L`` the Cholesky factor of the shrunk covariance.

    Args:
        z: a batch (M, D); M > D unless ``eps`` > 0 (the covariance must be positive definite).
        eps: ε, the shrinkage towards the identity.

    Returns:
        The whitened batch (M, D): zero mean and identity covariance.
    """
    centred = z - z.mean(dim=0, keepdim=True)
    eye = torch.eye(z.shape[1], device=z.device, dtype=z.dtype)
    cov = centred.T @ centred / (z.shape[0] - 1)
    lower = torch.linalg.cholesky((1 - eps) * cov + eps * eye)
    inverse = torch.linalg.solve_triangular(lower, eye, upper=False)
    return centred @ inverse.T


@computed_in_float32
def wmse_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """W-MSE's normalised MSE of two views' whitened features, ``2 - 2 · mean_i cos(w1_i, w2_i)``.

    Args:
        z1: whitened features of view 1 (N, D).
        z2: whitened features of view 2 (N, D); gradients flow through both views.

    Returns:
        The loss, a scalar.
    """
    return 2 - 2 * (F.normalize(z1, dim=-1) * F.normalize(z2, dim=-1)).sum(dim=-1).mean()


@computed_in_float32
def whitened_mse_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    permutations: Sequence[torch.Tensor],
    whitening_size: int,
    eps: float = 0.0,
    *,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """W-MSE's objective: whiten sub-batches of each view, then the normalised MSE, averaged over permutations.

    Args:
        z1: projections of view 1 (N, D).
        z2: projections of view 2 (N, D).
        permutations: permutations of the (global) batch's indices, one per whitening iteration, the same
            on every rank.
        whitening_size: the size of the sub-batches whitened on their own; >= 2 and dividing the batch.
        eps: ε of [`whiten`][dimcl.losses.wmse.whiten].
        gather_distributed: the permutations cut the global batch of every rank.

    Returns:
        The loss, a scalar.

    Raises:
        ValueError: ``whitening_size`` is under 2 or does not divide the batch.
    """
    if gather_distributed:
        z1, z2 = gather(z1), gather(z2)
    n = z1.shape[0]
    if whitening_size < 2 or n % whitening_size:
        raise ValueError(f"W-MSE's whitening_size={whitening_size} must be >= 2 and divide the batch of {n}")
    losses = []
    for perm in permutations:
        w1, w2 = torch.empty_like(z1), torch.empty_like(z2)
        for idx in perm.to(z1.device).view(-1, whitening_size):
            w1[idx], w2[idx] = whiten(z1[idx], eps), whiten(z2[idx], eps)
        losses.append(wmse_loss(w1, w2))
    return torch.stack(losses).mean()
