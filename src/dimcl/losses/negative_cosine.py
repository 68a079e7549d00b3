"""Negative cosine objectives of the predictor methods, the target side always stop-gradient.

BYOL (Grill et al., NeurIPS 2020):     L(p, z) = 2 - 2 · mean_i cos(p_i, z_i)
SimSiam (Chen & He, CVPR 2021):        L(p, z) =   - mean_i cos(p_i, z_i)

``p`` is the online predictor output (N, d), ``z`` the target projection (N, d), detached here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dimcl.losses.precision import computed_in_float32


@computed_in_float32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE, ``2 - 2 · mean_i cos(p_i, z_i)``.

    Args:
        p: the online predictor outputs (N, d).
        z: the momentum target's projections of the other view (N, d); detached here.

    Returns:
        The loss, a scalar in [0, 4].
    """
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


@computed_in_float32
def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's negative cosine similarity, ``-mean_i cos(p_i, z_i)``.

    Args:
        p: the predictor outputs of one view (N, d).
        z: the projections of the other view (N, d); detached here (the stop-gradient).

    Returns:
        The loss, a scalar in [-1, 1].
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()
