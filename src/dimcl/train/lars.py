"""LARS (You et al., 2017): SGD with momentum whose step is rescaled per layer by a trust ratio.

For a parameter ``w`` with gradient ``g`` and weight decay ``wd``:

    ratio = eta · ||w|| / (||g|| + wd · ||w||)      (1 when either norm is zero)
    update = ratio · (g + wd · w),  then momentum SGD with the group's learning rate.

Parameter groups with ``lars_exclude=True`` (biases and normalisation parameters, and the online
probe) skip the trust ratio, as in BYOL, Barlow Twins and solo-learn.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
        eps: float = 1e-8,
    ):
        if lr <= 0:
            raise ValueError(f"LARS learning rate must be > 0, got {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, eps, momentum = group["weight_decay"], group["eta"], group["eps"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if wd != 0:
                    update = update.add(p, alpha=wd)
                if not group["lars_exclude"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    trust = eta * w_norm / (g_norm + wd * w_norm + eps)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    update = update * ratio
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = update.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(update)
                    update = state["momentum_buffer"]
                p.add_(update, alpha=-group["lr"])
        return loss
