"""Barlow Twins (Zbontar et al., ICML 2021): cross-correlation towards the identity."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dimcl.losses.barlow_twins import barlow_twins_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod
from dimcl.models.heads import mlp


class BarlowTwins(SSLMethod):
    """Barlow Twins: the cross-correlation of two views' standardised projections towards the identity.

    Two views only (no multi-crop form). The projector is three layers.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        lambd: ``method.lambd``, λ, the weight of the off-diagonal (redundancy) term.
        scale_loss: ``method.scale_loss``, the factor of the whole loss.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is
    :func:`~dimcl.losses.barlow_twins_loss`, and ``z1``, ``z2``, the tensors DimCL regularises: the projector
    outputs of the two views.
    """

    name = "barlow_twins"
    # solo-learn's Barlow Twins computes its loss on the two global views only (local crops would go through the
    # backbone for nothing), and the objective is defined on one pair of batches: no multi-crop form here.
    multi_crop = False

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        lambd: float = 0.0051,
        scale_loss: float = 0.1,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 3)
        self.lambd = lambd
        self.scale_loss = scale_loss

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W).

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        loss = barlow_twins_loss(
            z1, z2, self.lambd, self.scale_loss, gather_distributed=self.gather_distributed
        )
        return self.combine(loss, z1, z2, f1)
