"""Two-view InfoNCE over unit vectors, shared by NT-Xent (along the batch) and DimCL (along the dimensions).

Both objectives stack M vectors of view 1 and their M counterparts of view 2 into 2M unit vectors
``u`` (rows 0..M-1 and M..2M-1), take the cosine similarities ``s = u uᵀ`` (2M, 2M) and minimise

    L = -1/(2M) Σ_i log( exp(s_i,p(i)/τ) / Σ_{j≠i} exp(s_ij/τ) ),   p(i) = (i + M) mod 2M

NT-Xent's vectors are the N samples (M = N), DimCL's the D standardised dimensions (M = D). Only how
the vectors are made differs; it stays in ``nt_xent.py`` and ``dimcl.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def positive_index(num_per_view: int, device: torch.device | None = None) -> torch.Tensor:
    """Index (2M,) of each of the 2M stacked vectors' positive: its counterpart in the other view."""
    idx = torch.arange(num_per_view, device=device)
    return torch.cat([idx + num_per_view, idx])


def two_view_info_nce(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE from the (2M, 2M) similarities of two views' stacked vectors (rows are anchors) -> scalar.

    Row i's positive is column (i + M) mod 2M; the diagonal (self-similarity) is left out of the
    denominator.
    """
    logits = similarity / temperature
    # In place (the division's backward does not need its output): no second (2M, 2M) copy, no mask.
    logits.diagonal().fill_(float("-inf"))
    return F.cross_entropy(logits, positive_index(similarity.shape[0] // 2, similarity.device))
