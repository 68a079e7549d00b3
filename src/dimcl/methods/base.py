"""What every SSL method shares: a backbone, the DimCL switch, the loss combination, and the contract
the training loop relies on.

The contract of a method (a subclass of :class:`SSLMethod`):

- ``name``: its registry name, a class attribute (checked when the class is defined); the config's
  ``method.name`` and the recipes' file names ``configs/<dataset>/<name>.yaml``.
- ``__init__(backbone, dimcl=None, *, <options with defaults>, gather_distributed=True)``: the
  keyword options become the config keys ``method.<option>``; a numeric option must be > 0 in a config,
  or >= 0 when the class names it in ``nonnegative_options`` (a number of epochs, a size 0 that turns a
  part off).
- ``forward(views)``: two global augmented batches (N, C, H, W), then any multi-crop local ones
  (N, C, h, w), in; a :class:`MethodOutput` out. ``multi_crop = False`` declares a method that takes
  the two global views only (a third view is then an error).
- ``base_momentum`` and ``momentum_pairs()``: a method with a momentum (EMA) twin sets
  ``base_momentum`` and returns its (online, twin) module pairs; after every optimizer step the
  training loop calls ``momentum_update(cosine_momentum(step, total_steps, base_momentum))``.
  ``base_momentum = None`` (the default) means no twin, and the loop never calls it.
- ``begin_epoch(epoch)``: the loop calls it before each epoch's first step (a resumed run too), so a
  method whose behaviour follows the epoch (DINO's teacher temperature, SwAV's queue) reads ``self.epoch``;
  checkpoints need not hold it.
- ``frozen_parameters()``: parameters whose gradient the loop drops before this step's optimizer step
  (DINO's last layer and SwAV's prototypes during their first epochs); empty by default.
- ``check_global_batch(global_batch)``: refuses, before anything is written, a global batch the method
  cannot take (W-MSE's whitening sub-batches must divide it).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import ClassVar, TypedDict

import torch
from torch import nn

from dimcl.config import DimCLConfig
from dimcl.losses.dimcl import DimCLLoss


class _RequiredOutput(TypedDict):
    loss: torch.Tensor
    loss_ssl: torch.Tensor
    features: torch.Tensor
    z1: torch.Tensor
    z2: torch.Tensor


class MethodOutput(_RequiredOutput, total=False):
    """What ``forward(views)`` returns (built by :meth:`SSLMethod.combine`).

    - ``loss``        the total to minimise, ``(1 - λ) · loss_ssl + λ · loss_dimcl``
    - ``loss_ssl``    the method's own objective
    - ``loss_dimcl``  the DimCL term, only present when λ > 0 (with λ = 0 it is never computed)
    - ``features``    backbone features of the first view (N, F), for online probes and diagnostics
    - ``z1``, ``z2``  the online projector outputs DimCL is applied to (N, D)
    """

    loss_dimcl: torch.Tensor


class SSLMethod(nn.Module):
    """Base of the methods. Subclasses declare ``name``, build ``self.projector`` (and their other heads)
    on ``backbone.num_features``, and implement ``forward``; see the module docstring for the contract.

    Args:
        backbone: the network to train, an ``nn.Module`` with an int attribute ``num_features``.
        dimcl: the DimCL settings; None (or ``weight=0``) builds no DimCL term at all.
        gather_distributed: compute the losses over the global batch under data parallelism.

    Raises:
        ValueError: the backbone has no ``num_features``.
    """

    #: the registry name; every subclass declares its own
    name: ClassVar[str] = ""
    #: τ at step 0 of the momentum twin's cosine schedule; None: the method has no momentum twin
    base_momentum: float | None = None
    #: whether the method's loss uses multi-crop local views (views[2:]); false: it takes two views only
    multi_crop: ClassVar[bool] = True
    #: the numeric options for which 0 is a value (every other numeric option must be > 0)
    nonnegative_options: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if not (isinstance(name, str) and name.isidentifier() and name.islower()):
            raise TypeError(
                f"method class {cls.__qualname__} must declare its registry name as a class attribute of "
                f"its own (not inherited), a lower-case identifier such as name = \"simclr\"; got {name!r}"
            )

    def __init__(self, backbone: nn.Module, dimcl: DimCLConfig | None = None, gather_distributed: bool = True):
        super().__init__()
        if not hasattr(backbone, "num_features"):
            raise ValueError("the backbone must expose its output width as an int attribute `num_features`")
        self.backbone = backbone
        # The config's DimCL settings, checked where they are defined; a method built without them is plain.
        self.dimcl = dimcl if dimcl is not None else DimCLConfig(weight=0.0)
        self.gather_distributed = gather_distributed
        #: the training epoch of the coming steps (0-based), set by ``begin_epoch``
        self.epoch = 0
        self.dimcl_loss = (
            DimCLLoss(
                self.dimcl.temperature, self.dimcl.hardness_aware, gather_distributed, self.dimcl.implementation
            )
            if self.dimcl.enabled
            else None
        )

    def split_views(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The views in multi-crop's layout: two global views, then any local ones.

        Args:
            views: two global batches (N, C, H, W), then any local ones (N, C, h, w).

        Returns:
            (global view 1, global view 2, the list of local views).

        Raises:
            ValueError: fewer than two views, or local views for a method without a multi-crop form.
        """
        if len(views) < 2:
            raise ValueError(f"the methods take two global augmented views (then any local ones), got {len(views)}")
        if len(views) > 2 and not self.multi_crop:
            raise ValueError(
                f"{self.name} takes exactly two augmented views, got {len(views)}: it has no multi-crop form "
                "(augment.num_local_crops must be 0)"
            )
        return views[0], views[1], list(views[2:])

    def encode(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The backbone and projector on the two global views.

        Args:
            views: as for :meth:`split_views`.

        Returns:
            The backbone features of view 1 (N, F) and the online projections of both global views (N, D) each.
        """
        x1, x2, _ = self.split_views(views)
        f1 = self.backbone(x1)
        return f1, self.projector(f1), self.projector(self.backbone(x2))

    def encode_locals(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The online projections of the local views, one backbone pass each.

        One pass each, as solo-learn: one pass over all of them would mix their batch-norm statistics.

        Args:
            views: as for :meth:`split_views`.

        Returns:
            One projection (N, D) per local view; empty for two-view training.
        """
        return [self.projector(self.backbone(x)) for x in self.split_views(views)[2]]

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        """The method's step on two global views (N, C, H, W), then any local ones; ends with ``self.combine(...)``.

        Args:
            views: the augmented batches of the same N images.

        Returns:
            The step's losses and tensors.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward(views)")

    def combine(
        self,
        loss_ssl: torch.Tensor,
        z1: torch.Tensor,
        z2: torch.Tensor,
        features: torch.Tensor,
        local_z: Sequence[torch.Tensor] = (),
    ) -> MethodOutput:
        """The output of ``forward``: ``loss = (1 - λ) · loss_ssl + λ · DimCL(z1, z2)``.

        With λ = 0 the loss *is* ``loss_ssl`` and DimCL is not computed.

        Args:
            loss_ssl: the method's own objective, a scalar.
            z1: the online projector outputs of global view 1 (N, D) that DimCL regularises.
            z2: the same of global view 2 (N, D).
            features: the backbone's features of view 1 (N, F).
            local_z: the local views' projections (multi-crop): with ``dimcl.local_pairs`` DimCL is the mean
                over the global pair and every (global, local) pair, else they do not enter DimCL.

        Returns:
            ``loss``, ``loss_ssl``, ``loss_dimcl`` (when λ > 0), ``features``, ``z1`` and ``z2``.
        """
        if self.dimcl_loss is None:
            return MethodOutput(loss_ssl=loss_ssl, z1=z1, z2=z2, loss=loss_ssl, features=features)
        loss_dimcl = self.dimcl_loss(z1, z2)
        if local_z and self.dimcl.local_pairs:
            pairs = [self.dimcl_loss(g, z) for z in local_z for g in (z1, z2)]
            loss_dimcl = (loss_dimcl + torch.stack(pairs).sum()) / (1 + len(pairs))
        weight = self.dimcl.weight
        loss = (1 - weight) * loss_ssl + weight * loss_dimcl
        return MethodOutput(loss_ssl=loss_ssl, z1=z1, z2=z2, loss_dimcl=loss_dimcl, loss=loss, features=features)

    def begin_epoch(self, epoch: int) -> None:
        """The steps that follow belong to ``epoch`` (0-based); the loop calls it before each epoch.

        Args:
            epoch: the coming epoch, 0-based.
        """
        self.epoch = epoch

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters that this epoch's optimizer steps leave untouched (their gradients are dropped).

        Returns:
            The frozen parameters; empty by default.
        """
        return []

    def check_global_batch(self, global_batch: int) -> None:
        """Refuse, before anything is written, a global batch the method cannot take.

        Args:
            global_batch: the images of one step over every rank.

        Raises:
            ConfigError: the method cannot train on ``global_batch`` images a step (never, by default).
        """

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The (online, momentum twin) module pairs that ``momentum_update`` moves.

        Returns:
            The pairs; empty unless the method has a momentum twin (one that overrides this sets
            ``base_momentum``).
        """
        return []

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """Exponential moving average of the parameters: ``target ← τ · target + (1 - τ) · online``.

        BatchNorm statistics of the momentum twin are its own (it runs in train mode on its inputs).
        All tensors move in one multi-tensor ``lerp`` (a few kernel launches on a GPU instead of one per
        tensor; on the CPU it is the same per-tensor ``lerp_``, bit for bit).

        Args:
            tau: τ, the momentum of this step (``cosine_momentum`` of the step).
        """
        targets, onlines = [], []
        for online, target in self.momentum_pairs():
            for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
                targets.append(p_target)
                onlines.append(p_online.detach())
        if targets:
            torch._foreach_lerp_(targets, onlines, 1.0 - tau)


@torch.no_grad()
def enqueue(queue: torch.Tensor, pointer: torch.Tensor, rows: torch.Tensor) -> None:
    """Write ``rows`` (..., n, d) into the ring buffer ``queue`` (..., Q, d) from ``pointer`` on, wrapping
    around, and move ``pointer`` past them; of more than Q rows the newest Q are kept (MoCo's and NNCLR's queues)."""
    size = queue.shape[-2]
    rows = rows[..., -size:, :]
    index = (pointer + torch.arange(rows.shape[-2], device=rows.device)) % size
    queue.index_copy_(queue.dim() - 2, index, rows.to(queue.dtype))
    pointer.copy_((pointer + rows.shape[-2]) % size)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to serve as its momentum (EMA) twin."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
