"""BYOL (Grill et al., NeurIPS 2020): an online network with a predictor chases an EMA target.

Multi-crop as in solo-learn: the predictions of the local views chase the momentum targets of both global
views too. solo-learn sums the pair losses; here their mean is scaled by 2, the two-view loss's number of
pairs, so the loss (and its balance with DimCL's λ) keeps its two-view scale: solo-learn's is (1 + N) x ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dimcl.losses.negative_cosine import byol_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod, momentum_copy
from dimcl.models.heads import mlp


class BYOL(SSLMethod):
    """BYOL: an online network with a predictor regresses an EMA target's projection of the other view.

    The target (momentum backbone and projector) follows the online network by an EMA whose momentum goes
    from ``base_momentum`` to 1 on a cosine schedule; it gets no gradient.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        pred_hidden_dim: ``method.pred_hidden_dim``, the predictor's hidden width.
        base_momentum: ``method.base_momentum``, the EMA momentum at step 0.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is the symmetric normalised
    MSE (:func:`~dimcl.losses.byol_loss`, both directions summed), and ``z1``, ``z2``, the tensors DimCL
    regularises: the online projector outputs of the two global views, not the predictor outputs.
    """

    name = "byol"

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        pred_hidden_dim: int = 4096,
        base_momentum: float = 0.99,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 2)
        self.predictor = mlp(proj_output_dim, pred_hidden_dim, proj_output_dim, 2)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.base_momentum = base_momentum

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W), then any multi-crop local views.

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        x1, x2, _ = self.split_views(views)
        local_z = self.encode_locals(views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.momentum_projector(self.momentum_backbone(x1))
            t2 = self.momentum_projector(self.momentum_backbone(x2))
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        if local_z:
            pairs = [byol_loss(self.predictor(z), t) for z in local_z for t in (t1, t2)]
            loss = (loss + torch.stack(pairs).sum()) * 2 / (2 + len(pairs))
        # DimCL regularises the online projector outputs z, not the predictor outputs p.
        return self.combine(loss, z1, z2, f1, local_z)
