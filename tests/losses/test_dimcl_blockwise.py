"""The memory-lean blockwise DimCL equals the plain form, in value and gradients."""

import pytest
import torch

import dimcl.losses.dimcl as dimcl_module
import dimcl.losses.dimcl_blockwise as blockwise_module
from dimcl.losses import DimCLLoss, dimcl_loss
from dimcl.losses.dimcl import dimension_vectors
from dimcl.losses.dimcl_blockwise import blockwise_contrast
from dimcl.methods import DimCLConfig


def _pair(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=dtype)
    return z1.requires_grad_(), (z1.detach() + 0.5 * torch.randn(n, d, generator=g, dtype=dtype)).requires_grad_()


def _value_and_grads(z1, z2, **kwargs):
    loss = dimcl_loss(z1, z2, **kwargs)
    return (loss, *torch.autograd.grad(loss, (z1, z2)))


@pytest.mark.parametrize("n,d,tau", [(8, 5, 0.1), (32, 16, 0.2), (5, 40, 0.05)])
@pytest.mark.parametrize("hardness_aware", [True, False])
@pytest.mark.parametrize("block_size", [1, 3, 7, 1024])
def test_blockwise_equals_plain(n, d, tau, hardness_aware, block_size, monkeypatch):
    monkeypatch.setattr(blockwise_module.blockwise_contrast, "__defaults__", (block_size,))
    z1, z2 = _pair(n, d, seed=n + d)
    plain = _value_and_grads(z1, z2, temperature=tau, hardness_aware=hardness_aware, implementation="plain")
    blocks = _value_and_grads(z1, z2, temperature=tau, hardness_aware=hardness_aware, implementation="blockwise")
    for a, b in zip(plain, blocks, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_float32_wide_projector_within_1e5():
    z1, z2 = _pair(64, 1024, seed=3, dtype=torch.float32)
    plain = _value_and_grads(z1, z2, implementation="plain")
    blocks = _value_and_grads(z1, z2, implementation="blockwise")
    for a, b in zip(plain, blocks, strict=True):
        assert ((a - b).norm() / a.norm()).item() <= 1e-5


def test_gradcheck_of_the_blockwise_function():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    h = dimension_vectors(z1, z2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: blockwise_contrast(x, 0.2, 3), (h,))


def test_auto_switches_above_the_threshold(monkeypatch):
    calls = []
    original = blockwise_module.blockwise_contrast
    # dimcl_loss calls the name it imported into dimcl.losses.dimcl.
    monkeypatch.setattr(dimcl_module, "blockwise_contrast", lambda *a: calls.append(1) or original(*a))
    z1, z2 = _pair(8, 6, seed=5)
    dimcl_loss(z1, z2)  # 2D = 12 <= threshold: plain
    assert calls == []
    monkeypatch.setattr(dimcl_module, "BLOCKWISE_ABOVE", 10)
    dimcl_loss(z1, z2)
    assert calls == [1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_and_autocast(dtype):
    z1, z2 = (z.detach().to(dtype) for z in _pair(32, 24, seed=6, dtype=torch.float32))
    loss = dimcl_loss(z1, z2, implementation="blockwise")
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = dimcl_loss(z1.float(), z2.float(), implementation="blockwise")
    torch.testing.assert_close(inside, dimcl_loss(z1.float(), z2.float(), implementation="plain"))


def test_the_switch_reaches_module_and_methods_and_bad_values_are_errors():
    assert DimCLLoss(implementation="blockwise").implementation == "blockwise"
    with pytest.raises(ValueError, match="implementation must be one of auto, plain, blockwise, got 'fast'"):
        DimCLLoss(implementation="fast")
    with pytest.raises(ValueError, match="got 'fast'"):
        DimCLConfig(weight=0.1, implementation="fast")
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        blockwise_contrast(torch.eye(4), 0.1, 0)
