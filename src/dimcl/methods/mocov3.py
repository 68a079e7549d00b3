"""MoCo v3 (Chen, Xie & He, ICCV 2021): a momentum encoder, a predictor, and the batch's keys as negatives.

Symmetric as in solo-learn: each view's predictions meet the momentum keys of the other view, gathered
over the global batch (no queue), the InfoNCE scaled by 2τ (:func:`~dimcl.losses.mocov3.mocov3_loss`).
The heads follow MoCo v3's: with ``proj_num_layers=2`` (ResNet) a two-layer projector ending in a
batch norm without affine parameters and a predictor whose last layer has neither bias nor batch norm;
with ``proj_num_layers=3`` (ViT) a three-layer projector and a predictor ending in that batch norm too.
Two views only (solo-learn's MoCo v3 uses the global views alone).

DimCL applies to the query projector outputs of the two views, before the predictor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dimcl.errors import ConfigError
from dimcl.losses.mocov3 import mocov3_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod, momentum_copy
from dimcl.models.heads import mlp


class MoCoV3(SSLMethod):
    """MoCo v3: a predictor's queries meet the momentum keys of the other view, the batch's keys as negatives.

    Two views only. The heads follow ``proj_num_layers`` (the module docstring).

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        pred_hidden_dim: ``method.pred_hidden_dim``, the predictor's hidden width.
        proj_num_layers: ``method.proj_num_layers``, 2 (ResNet heads) or 3 (ViT heads).
        temperature: ``method.temperature``, τ of the InfoNCE.
        base_momentum: ``method.base_momentum``, the EMA momentum at step 0.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is the sum of both
    directions of :func:`~dimcl.losses.mocov3_loss`, and ``z1``, ``z2``, the tensors DimCL regularises: the query
    projector outputs of the two views, before the predictor.
    """

    name = "mocov3"
    multi_crop = False

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        pred_hidden_dim: int = 4096,
        proj_num_layers: int = 2,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        if proj_num_layers not in (2, 3):
            raise ConfigError(
                f"method.proj_num_layers of mocov3 must be 2 (ResNet heads) or 3 (ViT heads), got {proj_num_layers}"
            )
        vit_heads = proj_num_layers == 3
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, proj_num_layers,
                             last_norm=True, last_norm_affine=False)
        self.predictor = mlp(proj_output_dim, pred_hidden_dim, proj_output_dim, 2,
                             last_norm=vit_heads, last_norm_affine=False, last_bias=False)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.temperature = temperature
        self.base_momentum = base_momentum

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W).

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        x1, x2, _ = self.split_views(views)
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_backbone(x1))
            k2 = self.momentum_projector(self.momentum_backbone(x2))
        gather = self.gather_distributed
        loss = (mocov3_loss(q1, k2, self.temperature, gather_distributed=gather)
                + mocov3_loss(q2, k1, self.temperature, gather_distributed=gather))
        return self.combine(loss, z1, z2, f1)
