"""The optimizer of a pretraining run: parameter groups, LARS / SGD / AdamW, learning-rate scaling."""

from __future__ import annotations

import torch
from torch import nn

from dimcl.config import OptimConfig
from dimcl.train.lars import LARS


def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """``optim.lr`` is for a global batch of 256 and scales linearly (Goyal et al.)."""
    return optim.lr * global_batch / 256


def build_optimizer(
    method: nn.Module, probe: nn.Module | None, optim: OptimConfig, global_batch: int, device_type: str = "cpu"
) -> torch.optim.Optimizer:
    """Groups: weights; biases and norms (no decay, no LARS adaptation); the probe (its own lr, no decay).

    Every group keeps its peak learning rate in ``base_lr``; the loop multiplies the schedule in.
    SGD and AdamW use PyTorch's fused kernels when ``optim.fused`` is true, or when it is unset and the
    run is on ``device_type`` "cuda"; LARS takes its multi-tensor path off the CPU.
    """
    lr = scaled_lr(optim, global_batch)
    decay, no_decay = [], []
    for param in method.parameters():
        if not param.requires_grad:
            continue
        (no_decay if optim.exclude_bias_and_norm and param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay, "lars_exclude": False, "base_lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True, "base_lr": lr},
    ]
    if probe is not None:
        groups.append(
            {"params": list(probe.parameters()), "weight_decay": 0.0, "lars_exclude": True,
             "base_lr": optim.classifier_lr, "fixed_lr": True}
        )
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = g["base_lr"]
    if optim.name == "lars":
        return LARS(groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay, eta=optim.eta)
    for g in groups:
        g.pop("lars_exclude")
    fused = optim.fused if optim.fused is not None else device_type == "cuda"
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay, fused=fused)


def set_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Scale every scheduled group's peak learning rate by ``factor`` (the schedule's value / peak)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] if group.get("fixed_lr") else group["base_lr"] * factor
