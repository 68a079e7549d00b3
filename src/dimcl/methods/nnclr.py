"""NNCLR (Dwibedi et al., ICCV 2021): a view's nearest neighbour in a support queue is its positive.

Each view's normalised projection looks up its nearest neighbour among the queue's past projections (no
gradient); the neighbour of one view meets the other view's predictions, gathered over the global batch,
in an InfoNCE (:func:`~dimcl.losses.nnclr.nnclr_loss`), symmetric. The queue takes the first view's
normalised projections of the global batch (the same on every rank). Two views only, as in solo-learn.

DimCL applies to the projector outputs of the two views, before the normalisation and the support lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dimcl.distributed import gather_no_grad
from dimcl.errors import ConfigError
from dimcl.losses.nnclr import nnclr_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod, enqueue
from dimcl.models.heads import mlp


class NNCLR(SSLMethod):
    """NNCLR: a view's nearest neighbour in a support queue is the positive of the other view's prediction.

    Two views only.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        pred_hidden_dim: ``method.pred_hidden_dim``, the predictor's hidden width.
        temperature: ``method.temperature``, τ of the InfoNCE.
        queue_size: ``method.queue_size``, the support queue's length, >= 1.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is the mean of both
    directions of :func:`~dimcl.losses.nnclr_loss`, and ``z1``, ``z2``, the tensors DimCL regularises: the projector
    outputs of the two views, before the normalisation and the support lookup.
    """

    name = "nnclr"
    multi_crop = False

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 256,
        pred_hidden_dim: int = 4096,
        temperature: float = 0.2,
        queue_size: int = 65536,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        if queue_size < 1:
            raise ConfigError(f"nnclr queue_size must be >= 1, got {queue_size}")
        # solo-learn's NNCLR heads: a three-layer projector ending in a batch norm, a two-layer predictor
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 3, last_norm=True)
        self.predictor = mlp(proj_output_dim, pred_hidden_dim, proj_output_dim, 2)
        self.temperature = temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_output_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def nearest_neighbours(self, z: torch.Tensor) -> torch.Tensor:
        """The queue's nearest neighbour (N, D) of each normalised projection (N, D), by cosine similarity."""
        return self.queue[(z @ self.queue.T.to(z.dtype)).argmax(dim=1)].to(z.dtype)

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W).

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        u1, u2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
        nn1, nn2 = self.nearest_neighbours(u1), self.nearest_neighbours(u2)
        gather = self.gather_distributed
        loss = (nnclr_loss(nn1, p2, self.temperature, gather_distributed=gather)
                + nnclr_loss(nn2, p1, self.temperature, gather_distributed=gather)) / 2
        if self.training:
            enqueue(self.queue, self.queue_ptr, gather_no_grad(u1))
        return self.combine(loss, z1, z2, f1)
