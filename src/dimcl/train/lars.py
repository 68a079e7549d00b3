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
    """``foreach=True`` updates all of a group's tensors with PyTorch's multi-tensor ops: the same
    arithmetic in a handful of kernel launches instead of ~10 per parameter tensor, which pays on GPUs.
    ``None`` (the default) takes it for parameters off the CPU, where the per-tensor loop measured
    faster (benchmarks/speed/README.md)."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
        eps: float = 1e-8,
        foreach: bool | None = None,
    ):
        if lr <= 0:
            raise ValueError(f"LARS learning rate must be > 0, got {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                foreach = self.foreach if self.foreach is not None else params[0].device.type != "cpu"
                (self._group_step_foreach if foreach else self._group_step_loop)(group, params)
        return loss

    def _group_step_loop(self, group: dict, params: list[torch.Tensor]) -> None:
        wd, eta, eps, momentum = group["weight_decay"], group["eta"], group["eps"], group["momentum"]
        for p in params:
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

    def _group_step_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        wd, eta, eps, momentum = group["weight_decay"], group["eta"], group["eps"], group["momentum"]
        grads = [p.grad for p in params]
        updates = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else [g.clone() for g in grads]
        if not group["lars_exclude"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            trust = eta * w_norm / (g_norm + wd * w_norm + eps)
            ratio = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
            torch._foreach_mul_(updates, list(ratio.unbind()))
        if momentum != 0:
            states = [self.state[p] for p in params]
            if all("momentum_buffer" in state for state in states):
                buffers = [state["momentum_buffer"] for state in states]
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, updates)
            else:  # the first step (or parameters that join later): the buffer starts as the update
                buffers = []
                for state, update in zip(states, updates, strict=True):
                    if "momentum_buffer" in state:
                        state["momentum_buffer"].mul_(momentum).add_(update)
                    else:
                        state["momentum_buffer"] = update.clone()
                    buffers.append(state["momentum_buffer"])
            updates = buffers
        torch._foreach_add_(params, updates, alpha=-group["lr"])
