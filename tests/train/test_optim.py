"""LARS, parameter groups and the per-step learning-rate schedule."""

import copy
import math

import pytest
import torch
from torch import nn

from dimcl.config import OptimConfig
from dimcl.schedules import warmup_cosine
from dimcl.train.lars import LARS
from dimcl.train.optim import build_optimizer, scaled_lr, set_learning_rate


def test_lars_step_matches_the_formula():
    w = torch.tensor([3.0, 4.0], requires_grad=True)  # ||w|| = 5
    w.grad = torch.tensor([0.6, 0.8])  # ||g|| = 1
    lr, wd, eta = 0.5, 0.1, 0.02
    LARS([{"params": [w]}], lr=lr, momentum=0.9, weight_decay=wd, eta=eta).step()
    ratio = eta * 5 / (1 + wd * 5)
    update = ratio * (torch.tensor([0.6, 0.8]) + wd * torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - lr * update)


def test_lars_excluded_group_is_plain_momentum_sgd():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    w.grad = torch.tensor([0.6, 0.8])
    opt = LARS([{"params": [w], "lars_exclude": True, "weight_decay": 0.0}], lr=0.5, momentum=0.9, eta=0.02)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - 0.3, 4.0 - 0.4]))
    w.grad = torch.tensor([0.6, 0.8])
    opt.step()  # momentum buffer: 0.9 * g + g
    torch.testing.assert_close(w.detach(), torch.tensor([2.7 - 0.5 * 1.9 * 0.6, 3.6 - 0.5 * 1.9 * 0.8]))


def test_biases_and_norms_get_no_decay_and_no_adaptation_and_the_probe_its_own_lr():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    probe = nn.Linear(8, 3)
    opt = build_optimizer(model, probe, OptimConfig(name="lars", lr=0.4, weight_decay=1e-4, classifier_lr=0.1), 512)
    weights, no_decay, probe_group = opt.param_groups
    assert {p.ndim for p in weights["params"]} == {2} and weights["weight_decay"] == 1e-4
    assert {p.ndim for p in no_decay["params"]} == {1} and no_decay["weight_decay"] == 0 and no_decay["lars_exclude"]
    assert weights["lr"] == pytest.approx(0.8) == scaled_lr(OptimConfig(lr=0.4), 512)
    set_learning_rate(opt, 0.5)
    assert weights["lr"] == pytest.approx(0.4) and probe_group["lr"] == pytest.approx(0.1)
    for name in ("sgd", "adamw"):
        assert type(build_optimizer(model, probe, OptimConfig(name=name), 256)).__name__ in ("SGD", "AdamW")


def test_warmup_cosine():
    values = warmup_cosine(1.0, total_steps=10, warmup_steps=4, start=0.2, final=0.1)
    assert len(values) == 10
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    assert values[7] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 3 / 6)) / 2)
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lars_multi_tensor_step_equals_the_per_tensor_loop(momentum):
    torch.manual_seed(0)
    shapes = [(8, 4), (4,), (3, 3, 2), (5,)]
    start = [torch.randn(s) for s in shapes] + [torch.zeros(6, 2)]  # a zero weight: ratio 1
    runs = {}
    for foreach in (False, True):
        params = [nn.Parameter(t.clone()) for t in start]
        groups = [{"params": params[:3], "weight_decay": 1e-3},
                  {"params": params[3:], "weight_decay": 0.0, "lars_exclude": True}]
        opt = LARS(groups, lr=0.3, momentum=momentum, eta=0.02, foreach=foreach)
        g = torch.Generator().manual_seed(1)
        for step in range(4):
            for i, p in enumerate(params):
                # the last parameter gets no gradient on the first step and joins later
                p.grad = None if (i == 4 and step == 0) else torch.randn(p.shape, generator=g)
            opt.step()
        runs[foreach] = [p.detach() for p in params]
    # On the CPU PyTorch's multi-tensor ops fall back to the per-tensor ops (the same kernels, the same
    # order): the two paths are equal to the bit, on any CPU.
    for loop, multi in zip(runs[False], runs[True], strict=True):
        assert torch.equal(multi, loop)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_kernels_on_request_give_the_same_step(name):
    torch.manual_seed(0)
    start = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    results = {}
    for fused in (False, True):
        model = copy.deepcopy(start)
        opt = build_optimizer(model, None, OptimConfig(name=name, lr=0.1, weight_decay=1e-3, fused=fused), 256)
        assert all(g["fused"] is fused for g in opt.param_groups)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        results[fused] = [p.detach() for p in model.parameters()]
    # The fused kernel may order and contract (FMA) the update's arithmetic differently: each step's update
    # (<= lr = 0.1) within ~10 float32 roundings (6e-8 each) plus one rounding of the weight, so after 3
    # steps within 3 * (0.1 * 6e-7 + 6e-8 * |w|): inside atol 1e-6 + rtol 1e-5 * |w| (docs/testing.md).
    for plain, fused in zip(results[False], results[True], strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    # unset: fused only where the run is on CUDA
    model = nn.Linear(2, 2)
    assert build_optimizer(model, None, OptimConfig(name=name), 256, "cpu").param_groups[0]["fused"] is False
    assert build_optimizer(model, None, OptimConfig(name=name), 256, "cuda").param_groups[0]["fused"] is True
