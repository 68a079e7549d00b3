"""SimCLR (Chen et al., ICML 2020): NT-Xent on the projections of two views.

With multi-crop local views, every other view of the same image is a positive (solo-learn's multi-positive
NT-Xent, :mod:`dimcl.losses.multi_view_nt_xent`); two-view training keeps plain NT-Xent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dimcl.losses.multi_view_nt_xent import multi_view_nt_xent_loss
from dimcl.losses.nt_xent import nt_xent_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod
from dimcl.models.heads import mlp


class SimCLR(SSLMethod):
    name = "simclr"

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 256,
        temperature: float = 0.2,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 2)
        self.temperature = temperature

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        f1, z1, z2 = self.encode(views)
        local_z = self.encode_locals(views)
        if local_z:
            loss = multi_view_nt_xent_loss(
                z1, z2, *local_z, temperature=self.temperature, gather_distributed=self.gather_distributed
            )
        else:
            loss = nt_xent_loss(z1, z2, self.temperature, gather_distributed=self.gather_distributed)
        return self.combine(loss, z1, z2, f1, local_z)
