"""VICReg (Bardes et al., ICLR 2022): invariance, variance and covariance, weighted 25/25/1."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dimcl.losses.vicreg import vicreg_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod
from dimcl.models.heads import mlp


class VICReg(SSLMethod):
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
        f1, z1, z2 = self.encode(views)
        loss = vicreg_loss(z1, z2, *self.weights, gather_distributed=self.gather_distributed)
        return self.combine(loss, z1, z2, f1)
