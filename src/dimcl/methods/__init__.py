"""The SSL methods, each with a DimCL switch, and the registry that builds one by name (one entry per method)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from dimcl.methods.barlow_twins import BarlowTwins
from dimcl.methods.base import DimCLConfig, MethodOutput, SSLMethod
from dimcl.methods.byol import BYOL
from dimcl.methods.dino import DINO
from dimcl.methods.mocov2plus import MoCoV2Plus
from dimcl.methods.mocov3 import MoCoV3
from dimcl.methods.momentum import cosine_momentum
from dimcl.methods.nnclr import NNCLR
from dimcl.methods.simclr import SimCLR
from dimcl.methods.simsiam import SimSiam
from dimcl.methods.swav import SwAV
from dimcl.methods.vicreg import VICReg
from dimcl.methods.wmse import WMSE
from dimcl.names import did_you_mean

METHODS: dict[str, type[SSLMethod]] = {
    cls.name: cls
    for cls in (SimCLR, MoCoV2Plus, BYOL, SimSiam, BarlowTwins, VICReg, DINO, SwAV, MoCoV3, NNCLR, WMSE)
}
"""The registry: ``method.name`` -> the method's class, the paper's six first."""


def method_options(name: str) -> dict[str, Any]:
    """The method's own keyword options and their defaults (projector widths, temperatures, ...).

    Args:
        name: a registry name, ``method.name``.

    Returns:
        ``{option: default}``, the config keys ``method.<option>`` of that method.

    Raises:
        ValueError: no method has that name (the message names those that do).
    """
    cls = _method_class(name)
    params = inspect.signature(cls.__init__).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "gather_distributed"
    }


def _method_class(name: str) -> type[SSLMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}.{did_you_mean(name, METHODS)}")
    return METHODS[name]


def build_method(
    name: str,
    backbone: nn.Module,
    dimcl: DimCLConfig | None = None,
    *,
    gather_distributed: bool = True,
    **options: Any,
) -> SSLMethod:
    """Build method ``name`` around ``backbone``.

    An option the method does not take is an error, never silently ignored.

    Args:
        name: a registry name, ``method.name`` (a key of ``METHODS``).
        backbone: the network to train, with an int attribute ``num_features``.
        dimcl: the DimCL settings; None trains the plain method.
        gather_distributed: compute the losses over the global batch under data parallelism.
        **options: the method's own settings (:func:`method_options`).

    Returns:
        The method, an ``nn.Module``.

    Raises:
        ValueError: an unknown method or an option the method does not take.

    Example:
        ```python
        from dimcl.config import DimCLConfig
        from dimcl.methods import build_method
        from dimcl.models import build_backbone

        method = build_method("byol", build_backbone("resnet18"), DimCLConfig(weight=0.1), proj_output_dim=256)
        losses = method([view1, view2])  # losses["loss"].backward()
        ```
    """
    cls = _method_class(name)
    accepted = method_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"method '{name}' has no option {', '.join(repr(u) for u in unknown)}; "
            f"its options are: {', '.join(accepted)}"
        )
    return cls(backbone, dimcl, gather_distributed=gather_distributed, **options)


__all__ = [
    "BYOL",
    "DINO",
    "METHODS",
    "NNCLR",
    "WMSE",
    "BarlowTwins",
    "DimCLConfig",
    "MethodOutput",
    "MoCoV2Plus",
    "MoCoV3",
    "SSLMethod",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "VICReg",
    "build_method",
    "cosine_momentum",
    "method_options",
]
