"""Projector and predictor MLPs.

Every method builds its heads with :func:`mlp`; the papers' recipes differ only in the
arguments (widths are the recipes' business), e.g.

- SimCLR, MoCo v2+, BYOL projector: 2 layers, ``mlp(F, 2048, 256, 2)``
- BYOL predictor: ``mlp(256, 4096, 256, 2)``
- SimSiam projector: ``mlp(F, 2048, 2048, 3, last_norm=True, last_norm_affine=False)``
- Barlow Twins, VICReg projector: 3 layers, ``mlp(F, 2048, 2048, 3)``
"""

from __future__ import annotations

from torch import nn

__all__ = ["mlp"]


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    *,
    last_norm: bool = False,
    last_norm_affine: bool = True,
) -> nn.Sequential:
    """An MLP head mapping ``(N, in_dim)`` to ``(N, out_dim)``.

    Hidden layers are ``Linear(bias=False) -> BatchNorm1d -> ReLU`` (the bias would be cancelled
    by the batch norm's mean subtraction). The last layer is ``Linear(bias=True)``, or, with
    ``last_norm``, ``Linear(bias=False) -> BatchNorm1d(out_dim, affine=last_norm_affine)``.
    ``num_layers=1`` is a single linear layer and ignores ``hidden_dim``.
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

    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    if last_norm:
        layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=last_norm_affine)]
    else:
        layers.append(nn.Linear(dim, out_dim, bias=True))
    return nn.Sequential(*layers)
