"""Projector and predictor MLPs, and the prototype layer of the clustering / distillation methods.

Every method builds its heads with :func:`mlp`; the papers' recipes differ only in the
arguments (widths are the recipes' business), e.g.

- SimCLR, MoCo v2+, BYOL projector: 2 layers, ``mlp(F, 2048, 256, 2)``
- BYOL predictor: ``mlp(256, 4096, 256, 2)``
- SimSiam projector: ``mlp(F, 2048, 2048, 3, last_norm=True, last_norm_affine=False)``
- Barlow Twins, VICReg projector: 3 layers, ``mlp(F, 2048, 2048, 3)``
- MoCo v3 projector (ResNet): ``mlp(F, 4096, 256, 2, last_norm=True, last_norm_affine=False)``,
  predictor ``mlp(256, 4096, 256, 2, last_bias=False)``
- DINO head up to its bottleneck: ``mlp(F, 2048, 256, 3, hidden_norm=False, activation="gelu")``

DINO's last layer is :class:`WeightNormalizedLinear` (prototypes of unit norm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WeightNormalizedLinear", "mlp"]

_ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    *,
    last_norm: bool = False,
    last_norm_affine: bool = True,
    last_bias: bool = True,
    hidden_norm: bool = True,
    activation: str = "relu",
) -> nn.Sequential:
    """An MLP head mapping ``(N, in_dim)`` to ``(N, out_dim)``.

    Hidden layers are ``Linear(bias=False) -> BatchNorm1d -> ReLU`` (the bias would be cancelled
    by the batch norm's mean subtraction); with ``hidden_norm=False`` they are ``Linear(bias=True) ->
    activation``. ``activation`` is "relu" or "gelu". The last layer is ``Linear(bias=last_bias)``, or,
    with ``last_norm``, ``Linear(bias=False) -> BatchNorm1d(out_dim, affine=last_norm_affine)``.
    ``num_layers=1`` is a single linear layer and ignores ``hidden_dim``.

    Args:
        in_dim: the input's width.
        hidden_dim: the hidden layers' width.
        out_dim: the output's width.
        num_layers: the number of linear layers, >= 1.
        last_norm: end with a batch norm after a bias-free linear layer.
        last_norm_affine: that batch norm's affine parameters.
        last_bias: the last linear layer's bias (without ``last_norm``).
        hidden_norm: batch norm in the hidden layers.
        activation: ``"relu"`` or ``"gelu"``.

    Returns:
        The head, an ``nn.Sequential``.

    Raises:
        ValueError: a width or ``num_layers`` that is not a positive integer, or an unknown activation.
    """
    for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"mlp(): {name} must be a positive integer, got {value!r}; pass the number of features, e.g. 2048."
            )
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(
            f"mlp(): num_layers must be a positive integer, got {num_layers!r}; "
            "use 1 for a single Linear layer, 2 or 3 for the usual projectors and predictors."
        )

    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp(): activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")

    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        if hidden_norm:
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim)]
        else:
            layers.append(nn.Linear(dim, hidden_dim, bias=True))
        layers.append(_ACTIVATIONS[activation]())
        dim = hidden_dim
    if last_norm:
        layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=last_norm_affine)]
    else:
        layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    return nn.Sequential(*layers)


class WeightNormalizedLinear(nn.Module):
    """``(N, in_dim) -> (N, out_dim)``: ``x · (g_k · v_k / ‖v_k‖)ᵀ`` for every output row ``k``, no bias.

    Weight normalisation (Salimans & Kingma 2016) per output unit, as DINO's last layer (its P
    prototypes). ``fixed_norm`` (DINO's ``norm_last_layer``): ``g`` stays 1, so every prototype has
    unit norm and the layer computes cosine similarities of normalised inputs; else ``g`` is learnt.
    ``v`` starts as a default ``nn.Linear`` weight, ``g`` at 1 (``torch.nn.utils.weight_norm``'s
    layout, without its deprecated hook).
    """

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim), requires_grad=not fixed_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g[:, None] * F.normalize(self.weight_v, dim=1))
