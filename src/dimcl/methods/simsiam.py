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
    """SimSiam: a predictor and a stop-gradient, no momentum encoder.

    The projector is three layers ending in a batch norm without affine parameters; each view's prediction
    meets the other view's projection, detached.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        pred_hidden_dim: ``method.pred_hidden_dim``, the predictor's (bottleneck) hidden width.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is the mean negative cosine
    of both directions (:func:`~dimcl.losses.simsiam_loss`), and ``z1``, ``z2``, the tensors DimCL regularises: the
    projector outputs of the two global views, not the predictor outputs.
    """

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
        """One training step on two global views (N, C, H, W), then any multi-crop local views.

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        local_z = self.encode_locals(views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
        if local_z:
            pairs = [simsiam_loss(self.predictor(z), g) for z in local_z for g in (z1, z2)]
            loss = (loss * 2 + torch.stack(pairs).sum()) / (2 + len(pairs))
        # DimCL regularises the projector outputs z, not the predictor outputs p (as the authors do).
        return self.combine(loss, z1, z2, f1, local_z)
