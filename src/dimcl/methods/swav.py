"""SwAV (Caron et al., NeurIPS 2020): predict one view's cluster assignment from another view.

The projections are L2-normalised and scored against ``num_prototypes`` prototypes, which are renormalised
to unit length before every forward pass (SwAV's in-place projection, outside autograd) and learn nothing
during the first ``freeze_prototypes_epochs`` epochs. The two global views' assignments come from
Sinkhorn-Knopp (:func:`~dimcl.losses.swav.sinkhorn`, sums over the global batch under data parallelism);
every view, local ones included, predicts the other global views' assignments.

The queue (``queue_size`` > 0) keeps the global views' recent projections, from every rank in the same
order; from epoch ``epoch_queue_starts`` on, once full, each rank adds its share of it to the Sinkhorn
problem (SwAV's queue for small batches). Its shape does not depend on the number of ranks.

DimCL applies to the projector outputs of the two global views, before their normalisation and the prototypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dimcl.distributed import gather_no_grad, rank, world_size
from dimcl.errors import ConfigError
from dimcl.losses.swav import sinkhorn, swav_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod
from dimcl.models.heads import mlp


class SwAV(SSLMethod):
    """SwAV: each view predicts the other global views' Sinkhorn cluster assignments (the module docstring).

    The prototypes are renormalised before every step and frozen for the first epochs.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        num_prototypes: ``method.num_prototypes``, K, the number of prototypes.
        temperature: ``method.temperature``, τ of the swapped prediction's softmax.
        sk_iters: ``method.sk_iters``, Sinkhorn-Knopp's iterations, >= 1.
        sk_epsilon: ``method.sk_epsilon``, Sinkhorn-Knopp's ε, > 0.
        queue_size: ``method.queue_size``, the queued projections per global view (0: no queue).
        epoch_queue_starts: ``method.epoch_queue_starts``, the first epoch that uses the queue.
        freeze_prototypes_epochs: ``method.freeze_prototypes_epochs``, the epochs during which the
            prototypes learn nothing.
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is
    :func:`~dimcl.losses.swav_loss`, and ``z1``, ``z2``, the tensors DimCL regularises: the projector outputs of the
    two global views, before their normalisation and the prototypes.
    """

    name = "swav"
    nonnegative_options = ("queue_size", "epoch_queue_starts", "freeze_prototypes_epochs")

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        sk_iters: int = 3,
        sk_epsilon: float = 0.05,
        queue_size: int = 65536,
        epoch_queue_starts: int = 15,
        freeze_prototypes_epochs: int = 1,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        if queue_size < 0 or sk_iters < 1 or not sk_epsilon > 0 or not temperature > 0:
            raise ConfigError(f"swav needs queue_size >= 0, sk_iters >= 1, sk_epsilon > 0 and temperature > 0; got "
                             f"{queue_size}, {sk_iters}, {sk_epsilon}, {temperature}")
        # solo-learn's SwAV projector: Linear -> BN -> ReLU -> Linear
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 2)
        self.prototypes = nn.Linear(proj_output_dim, num_prototypes, bias=False)
        self.temperature = temperature
        self.sk_iters = sk_iters
        self.sk_epsilon = sk_epsilon
        self.epoch_queue_starts = epoch_queue_starts
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        # the global views' normalised projections, newest first; queue_filled counts the rows written
        self.register_buffer("queue", torch.zeros(2, queue_size, proj_output_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [self.prototypes.weight] if self.epoch < self.freeze_prototypes_epochs else []

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (N, K) of projections z (N, D) with the prototypes."""
        return self.prototypes(F.normalize(z, dim=-1))

    def _queue_share(self, view: int) -> torch.Tensor | None:
        """This rank's share of view ``view``'s queue for Sinkhorn, or None while it is not in use."""
        size = self.queue.shape[1]
        if size == 0 or self.epoch < self.epoch_queue_starts or int(self.queue_filled) < size:
            return None
        ranks = world_size() if self.gather_distributed else 1
        me = rank() if self.gather_distributed else 0
        return self.queue[view, me * size // ranks : (me + 1) * size // ranks]

    @torch.no_grad()
    def assignments(self, global_scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Sinkhorn-Knopp assignments (N, K) of the two global views' scores, with the queue when in use."""
        out = []
        for view, scores in enumerate(global_scores):
            queued = self._queue_share(view)
            if queued is not None:
                scores = torch.cat([scores, self.prototypes(queued.to(scores.dtype))])
            q = sinkhorn(scores, self.sk_epsilon, self.sk_iters, gather_distributed=self.gather_distributed)
            out.append(q[: global_scores[0].shape[0]])
        return out

    @torch.no_grad()
    def _enqueue(self, z1: torch.Tensor, z2: torch.Tensor) -> None:
        size = self.queue.shape[1]
        if size == 0:
            return
        new = F.normalize(torch.stack([gather_no_grad(z1), gather_no_grad(z2)]), dim=-1)[:, :size]
        self.queue.copy_(torch.cat([new.to(self.queue.dtype), self.queue[:, : size - new.shape[1]]], dim=1))
        self.queue_filled.add_(new.shape[1]).clamp_(max=size)

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W), then any multi-crop local views.

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        with torch.no_grad():  # SwAV's projection of the prototypes onto the unit sphere, before the step
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        f1, z1, z2 = self.encode(views)
        local_z = self.encode_locals(views)
        preds = [self.scores(z) for z in (z1, z2, *local_z)]
        loss = swav_loss(preds, self.assignments(preds[:2]), self.temperature)
        if self.training:
            self._enqueue(z1, z2)
        return self.combine(loss, z1, z2, f1, local_z)
