"""NT-Xent, SimCLR's objective (Chen et al., ICML 2020).

For projections ``z1, z2`` (N, d), L2-normalised and stacked into 2N vectors ``u``:

    L = -1/(2N) Σ_i log( exp(u_i·u_p(i)/τ) / Σ_{j≠i} exp(u_i·u_j/τ) ),   p(i) = (i + N) mod 2N

that is the two-view InfoNCE of :mod:`dimcl.losses.info_nce` with the samples as its vectors.
With ``gather_distributed`` the negatives are the whole global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimcl.distributed import gather
from dimcl.losses.info_nce import two_view_info_nce
from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2, *, gather_distributed: bool = False
) -> torch.Tensor:
    """NT-Xent of two views' projections (the module docstring's formula).

    Args:
        z1: projections of view 1 (N, d); normalised here.
        z2: projections of view 2 (N, d), image i of both views a positive pair.
        temperature: τ.
        gather_distributed: the whole global batch gives the negatives.

    Returns:
        The loss, a scalar.
    """
    if not temperature > 0:
        raise ValueError(f"NT-Xent temperature must be > 0, got {temperature}")
    if gather_distributed:
        z1, z2 = gather(z1), gather(z2)
    u = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    return two_view_info_nce(u @ u.T, temperature)
