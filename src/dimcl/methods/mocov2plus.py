"""MoCo v2+ (Chen et al. 2020, symmetric as in solo-learn): a momentum encoder and a queue of keys.

Multi-crop (an extension: solo-learn's MoCo v2+ uses the two global views only): the local views' queries
also meet the momentum keys of both global views (each with that view's queue), the loss the mean over all
(query, key) pairs; the queues take the global keys only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dimcl.distributed import gather_no_grad
from dimcl.losses.moco import moco_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod, enqueue, momentum_copy
from dimcl.models.heads import mlp


class MoCoV2Plus(SSLMethod):
    """MoCo v2+: queries meet a momentum encoder's keys, with a queue of past keys as negatives.

    Symmetric: view 1's queries meet view 2's keys and view 2's queue, and the other way round. The
    momentum encoder (backbone and projector) follows the online one by an EMA whose momentum goes from
    ``base_momentum`` to 1 on a cosine schedule.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        temperature: ``method.temperature``, τ of the InfoNCE.
        queue_size: ``method.queue_size``, K, the number of past keys per view, >= 1.
        base_momentum: ``method.base_momentum``, the EMA momentum at step 0.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is the mean of the two
    InfoNCE terms (:func:`~dimcl.losses.moco_loss`), and ``z1``, ``z2``, the tensors DimCL regularises: the query
    projections of the two global views, before their L2 normalisation.
    """

    name = "mocov2plus"

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 256,
        temperature: float = 0.2,
        queue_size: int = 65536,
        base_momentum: float = 0.99,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        if queue_size < 1:
            raise ValueError(f"mocov2plus queue_size must be >= 1, got {queue_size}")
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 2)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.temperature = temperature
        self.base_momentum = base_momentum
        # One queue per view: queries of view 1 meet past keys of view 2 and the other way round.
        self.register_buffer("queue", F.normalize(torch.randn(2, queue_size, proj_output_dim), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    @torch.no_grad()
    def _enqueue(self, k1: torch.Tensor, k2: torch.Tensor) -> None:
        keys = F.normalize(torch.stack([gather_no_grad(k1), gather_no_grad(k2)]), dim=-1)  # (2, global N, d)
        enqueue(self.queue, self.queue_ptr, keys)

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W), then any multi-crop local views.

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, q1, q2 = self.encode(views)
        x1, x2, _ = self.split_views(views)
        local_q = self.encode_locals(views)
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_backbone(x1))
            k2 = self.momentum_projector(self.momentum_backbone(x2))
        queue = self.queue.clone().detach()
        loss = (
            moco_loss(q1, k2, queue[1], self.temperature) + moco_loss(q2, k1, queue[0], self.temperature)
        ) / 2
        if local_q:
            pairs = [moco_loss(q, k, queue[j], self.temperature) for q in local_q for j, k in enumerate((k1, k2))]
            loss = (loss * 2 + torch.stack(pairs).sum()) / (2 + len(pairs))
        if self.training:
            self._enqueue(k1, k2)
        # DimCL regularises the query projections before their L2 normalisation (as the authors do).
        return self.combine(loss, q1, q2, f1, local_q)
