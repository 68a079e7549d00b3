"""W-MSE (Ermolov et al., ICML 2021): the MSE of two views' projections after whitening them.

Each view's projections of the global batch are cut into sub-batches of ``whitening_size`` by a random
permutation and every sub-batch is whitened on its own (Cholesky, :func:`~dimcl.losses.wmse.whiten`),
then the normalised MSE of the two whitened views is the loss, averaged over ``whitening_iters``
permutations (:func:`~dimcl.losses.wmse.whitened_mse_loss`). The permutations follow from a seed drawn
when the method is built and a step counter, both buffers: every rank draws the same ones (no
broadcast), and a resumed run draws those of an uninterrupted one. Two views only.

DimCL applies to the projector outputs of the two views, before whitening.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dimcl.distributed import world_size
from dimcl.errors import ConfigError
from dimcl.losses.wmse import whitened_mse_loss
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod
from dimcl.models.heads import mlp


class WMSE(SSLMethod):
    """W-MSE: the normalised MSE of two views' projections after whitening sub-batches of them.

    Two views only; the global batch must be a multiple of ``whitening_size``.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features`` (its output
            width F).
        dimcl: the DimCL settings (``dimcl.*``: λ, τ, the form of the loss); None trains the plain method.
        proj_hidden_dim: ``method.proj_hidden_dim``, the projector's hidden width.
        proj_output_dim: ``method.proj_output_dim``, D, the projector's output width.
        whitening_size: ``method.whitening_size``, the sub-batches whitened on their own (> D unless
            ``whitening_eps`` > 0).
        whitening_iters: ``method.whitening_iters``, the permutations averaged per step, >= 1.
        whitening_eps: ``method.whitening_eps``, the covariance's shrinkage towards the identity, in [0, 1).
        gather_distributed: compute the loss over the global batch under data parallelism.

    ``forward(views)`` returns a :class:`~dimcl.methods.base.MethodOutput`: ``loss_ssl`` is
    :func:`~dimcl.losses.whitened_mse_loss`, and ``z1``, ``z2``, the tensors DimCL regularises: the projector
    outputs of the two views, before whitening.
    """

    name = "wmse"
    nonnegative_options = ("whitening_eps",)
    multi_crop = False

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_hidden_dim: int = 1024,
        proj_output_dim: int = 64,
        whitening_size: int = 256,
        whitening_iters: int = 1,
        whitening_eps: float = 0.0,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        if whitening_iters < 1 or not 0 <= whitening_eps < 1:
            raise ConfigError(f"wmse needs whitening_iters >= 1 and whitening_eps in [0, 1), got {whitening_iters}, "
                             f"{whitening_eps}")
        if whitening_eps == 0 and whitening_size <= proj_output_dim:
            raise ConfigError(
                f"wmse whitening_size={whitening_size} must exceed proj_output_dim={proj_output_dim}: the covariance "
                "of fewer samples than dimensions is singular (W-MSE uses 128 for 64 dimensions), or set whitening_eps"
            )
        # solo-learn's W-MSE projector: Linear -> BN -> ReLU -> Linear
        self.projector = mlp(backbone.num_features, proj_hidden_dim, proj_output_dim, 2)
        self.whitening_size = whitening_size
        self.whitening_iters = whitening_iters
        self.whitening_eps = whitening_eps
        self.register_buffer("permutation_seed", torch.randint(0, 2**62, ()))
        self.register_buffer("permutation_step", torch.zeros((), dtype=torch.long))
        #: (seed, step) as Python ints, read from the buffers once an epoch (reading them every step would
        #: make the host wait for an accelerator)
        self._drawn: list[int] | None = None

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self._drawn = None  # a resumed run has loaded its buffers since

    def check_global_batch(self, global_batch: int) -> None:
        if global_batch % self.whitening_size:
            raise ConfigError(
                f"method.whitening_size={self.whitening_size} must divide the global batch of {global_batch} "
                "images (W-MSE whitens sub-batches of that size); pick a divisor of it, or change data.batch_size"
            )

    def permutations(self, n: int) -> list[torch.Tensor]:
        """This step's ``whitening_iters`` permutations of ``n`` indices (the same on every rank)."""
        if self._drawn is None:
            self._drawn = [int(self.permutation_seed), int(self.permutation_step)]
        seed, step = self._drawn
        generator = torch.Generator().manual_seed((seed + step) % 2**63)
        return [torch.randperm(n, generator=generator) for _ in range(self.whitening_iters)]

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """One training step on two global views (N, C, H, W).

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The losses and tensors of the step, ``loss = (1 - λ) · loss_ssl + λ · loss_dimcl``.
        """
        f1, z1, z2 = self.encode(views)
        global_n = z1.shape[0] * (world_size() if self.gather_distributed else 1)
        loss = whitened_mse_loss(z1, z2, self.permutations(global_n), self.whitening_size, self.whitening_eps,
                                 gather_distributed=self.gather_distributed)
        if self.training:
            self.permutation_step.add_(1)
            self._drawn[1] += 1
        return self.combine(loss, z1, z2, f1)
