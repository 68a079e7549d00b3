"""VICReg (Bardes et al., ICLR 2022): invariance, variance and covariance, weighted 25/25/1."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dimcl.losses.vicreg import vicreg_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod
from dimcl.models.heads import mlp


class VICReg(SSLMethod):
    """VICReg: invariance between two views' projections, variance and covariance within each.

    Two views only (no multi-crop form). The projector is three layers.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        sim_weight: ``method.sim_weight``, the weight of the invariance term.
        var_weight: ``method.var_weight``, the weight of the variance term.
        cov_weight: ``method.cov_weight``, the weight of the covariance term.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is
    :func:`~dimcl.losses.vicreg_loss`, and ``z1``, ``z2``, the tensors DimCL regularises: the projector outputs of
    the two views.
    """

    name = "vicreg"
    # solo-learn's VICReg computes its loss on the two global views only (local crops would go through the
    # backbone for nothing), and the objective is defined on one pair of batches: no multi-crop form here.
    multi_crop = False

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 3)
        self.weights = (sim_weight, var_weight, cov_weight)

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W).

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        loss = vicreg_loss(z1, z2, *self.weights, gather_distributed=self.gather_distributed)
        return self.combine(loss, z1, z2, f1)
