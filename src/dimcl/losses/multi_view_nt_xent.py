"""NT-Xent over more than two views: SimCLR's multi-crop objective (the multi-positive form solo-learn uses).

For V views' projections ``z_1 .. z_V`` (N, d) of the same N images, L2-normalised and stacked into VN
vectors ``u``, the positives of vector i are the other V - 1 views of its image, ``P(i)``:

    L = -1/(VN) Σ_i log( Σ_{p∈P(i)} exp(u_i·u_p/τ) / Σ_{j≠i} exp(u_i·u_j/τ) )

With V = 2 this is NT-Xent (:mod:`dimcl.losses.nt_xent`), which two-view training keeps using. With
``gather_distributed`` the negatives are the whole global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimcl.distributed import gather
from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def multi_view_nt_xent_loss(
    *projections: torch.Tensor, temperature: float = 0.2, gather_distributed: bool = False
) -> torch.Tensor:
    """Multi-positive NT-Xent of V >= 2 views of the same images.

    Args:
        *projections: the V views' projections, (N, d) each, in the same image order.
        temperature: τ.
        gather_distributed: the whole global batch gives the negatives.

    Returns:
        The loss, a scalar.
    """
    if not temperature > 0:
        raise ValueError(f"NT-Xent temperature must be > 0, got {temperature}")
    if len(projections) < 2:
        raise ValueError(f"multi-view NT-Xent needs at least two views, got {len(projections)}")
    if gather_distributed:
        projections = tuple(gather(z) for z in projections)
    u = F.normalize(torch.cat(projections, dim=0), dim=1)
    logits = u @ u.T / temperature
    logits.diagonal().fill_(float("-inf"))  # a vector is neither its own positive nor its own negative
    image = torch.arange(projections[0].shape[0], device=u.device).repeat(len(projections))
    positive = image[:, None] == image[None, :]
    positive.fill_diagonal_(False)
    log_positives = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - log_positives).mean()
