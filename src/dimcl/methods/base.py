"""What every SSL method shares: a backbone, the DimCL switch, and the loss combination.

A method is an ``nn.Module`` whose ``forward(views)`` takes a list of two augmented batches
(N, C, H, W) and returns a dict of named values:

- ``loss``        the total to minimise, ``(1 - λ) · loss_ssl + λ · loss_dimcl``
- ``loss_ssl``    the method's own objective
- ``loss_dimcl``  the DimCL term (only present when λ > 0; with λ = 0 it is never computed)
- ``features``    backbone features of the first view (N, F), for online probes and diagnostics
- ``z1``, ``z2``  the online projector outputs DimCL is applied to (N, D)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dimcl.losses.dimcl import DimCLLoss, check_implementation


@dataclass
class DimCLConfig:
    """The DimCL switch of a method: λ (``weight``), τ (``temperature``) and the InfoNCE/uniform form."""

    weight: float = 0.0
    temperature: float = 0.1
    hardness_aware: bool = True
    #: "auto" | "plain" | "blockwise" (memory-lean for wide projectors), see dimcl.losses.dimcl_loss
    implementation: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(
                f"dimcl.weight (λ) must lie in [0, 1], got {self.weight}; 0 is the plain method, 0.1 the paper's"
            )
        if not self.temperature > 0:
            raise ValueError(f"dimcl.temperature (τ) must be > 0, got {self.temperature}; the paper uses 0.1")
        check_implementation(self.implementation)

    @property
    def enabled(self) -> bool:
        return self.weight > 0


class SSLMethod(nn.Module):
    """Base of the six methods. Subclasses build their heads and implement ``forward``."""

    name: str = ""

    def __init__(self, backbone: nn.Module, dimcl: DimCLConfig | None = None, gather_distributed: bool = True):
        super().__init__()
        if not hasattr(backbone, "num_features"):
            raise ValueError("the backbone must expose its output width as an int attribute `num_features`")
        self.backbone = backbone
        self.dimcl = dimcl if dimcl is not None else DimCLConfig()
        self.gather_distributed = gather_distributed
        self.dimcl_loss = (
            DimCLLoss(
                self.dimcl.temperature, self.dimcl.hardness_aware, gather_distributed, self.dimcl.implementation
            )
            if self.dimcl.enabled
            else None
        )

    @staticmethod
    def _two_views(views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"the methods take exactly two augmented views, got {len(views)}")
        return views[0], views[1]

    def encode(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone features of view 1 (N, F) and the online projections of both views (N, D) each."""
        x1, x2 = self._two_views(views)
        f1 = self.backbone(x1)
        return f1, self.projector(f1), self.projector(self.backbone(x2))

    def combine(self, loss_ssl: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(1 - λ) · loss_ssl + λ · DimCL(z1, z2)``; with λ = 0 the loss *is* ``loss_ssl``."""
        out = {"loss_ssl": loss_ssl, "z1": z1, "z2": z2}
        if self.dimcl_loss is None:
            out["loss"] = loss_ssl
            return out
        loss_dimcl = self.dimcl_loss(z1, z2)
        weight = self.dimcl.weight
        out["loss_dimcl"] = loss_dimcl
        out["loss"] = (1 - weight) * loss_ssl + weight * loss_dimcl
        return out

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs that ``momentum_update`` moves; none for most methods."""
        return []

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """Exponential moving average of the parameters: ``target ← τ · target + (1 - τ) · online``.

        BatchNorm statistics of the momentum twin are its own (it runs in train mode on its inputs).
        """
        for online, target in self.momentum_pairs():
            for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
                p_target.lerp_(p_online.detach(), 1.0 - tau)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to serve as its momentum (EMA) twin."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
