"""SimSiam (Chen & He, CVPR 2021): a predictor and a stop-gradient, no momentum encoder.

Multi-crop (an extension: solo-learn's SimSiam uses the two global views only): the predictions of the
local views also chase the stop-gradient projections of both global views, the loss the mean over all pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dimcl.losses.negative_cosine import simsiam_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod
from dimcl.models.heads import mlp


class SimSiam(SSLMethod):
    name = "simsiam"

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        pred_hidden_dim: int = 512,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        self.projector = mlp(
            backbone.num_features, proj_hidden_dim, proj_output_dim, 3, last_norm=True, last_norm_affine=False
        )
        self.predictor = mlp(proj_output_dim, pred_hidden_dim, proj_output_dim, 2)

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        f1, z1, z2 = self.encode(views)
        local_z = self.encode_locals(views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
        if local_z:
            pairs = [simsiam_loss(self.predictor(z), g) for z in local_z for g in (z1, z2)]
            loss = (loss * 2 + torch.stack(pairs).sum()) / (2 + len(pairs))
        # DimCL regularises the projector outputs z, not the predictor outputs p (as the authors do).
        return self.combine(loss, z1, z2, f1, local_z)
