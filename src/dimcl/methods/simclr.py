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
    """SimCLR: NT-Xent between the projections of two views of each image.

    The negatives of a view are every other view of the (global) batch. With multi-crop local views every
    other view of the same image is a positive (multi-positive NT-Xent).

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        temperature: ``method.temperature``, τ of NT-Xent.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is NT-Xent
    (:func:`~dimcl.losses.nt_xent_loss`), and ``z1``, ``z2``, the tensors DimCL regularises: the projector outputs
    of the two global views.
    """

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
        """One training step on two global views (N, C, H, W), then any multi-crop local views.

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        local_z = self.encode_locals(views)
        if local_z:
            loss = multi_view_nt_xent_loss(
                z1, z2, *local_z, temperature=self.temperature, gather_distributed=self.gather_distributed
            )
        else:
            loss = nt_xent_loss(z1, z2, self.temperature, gather_distributed=self.gather_distributed)
        return self.combine(loss, z1, z2, f1, local_z)
