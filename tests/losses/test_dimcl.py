"""DimCL against a plainly written reference, plus gradients, invariances and precision."""

import math

import pytest
import torch

from dimcl.losses import DimCLLoss, dimcl_loss
from dimcl.losses.dimcl import contrast_similarities


def reference_dimcl(z1: torch.Tensor, z2: torch.Tensor, tau: float, hardness_aware: bool = True) -> torch.Tensor:
    """DESIGN.md §1 written out one dimension vector and one anchor at a time."""
    n, d = z1.shape

    def standardised_columns(z):
        cols = []
        for j in range(d):
            col = z[:, j]
            mean = col.sum() / n
            var = ((col - mean) ** 2).sum() / n
            cols.append((col - mean) / torch.sqrt(var + 1e-5))
        return cols

    vectors = standardised_columns(z1) + standardised_columns(z2)
    vectors = [v / torch.sqrt((v * v).sum()) for v in vectors]
    total = torch.zeros((), dtype=z1.dtype)
    for i in range(2 * d):
        positive = (i + d) % (2 * d)
        sims = [(vectors[i] * vectors[j]).sum() / tau for j in range(2 * d)]
        if hardness_aware:
            denominator = sum(torch.exp(sims[j]) for j in range(2 * d) if j != i)
            total = total - (sims[positive] - torch.log(denominator))
        else:
            negatives = [sims[j] for j in range(2 * d) if j not in (i, positive)]
            total = total + (-sims[positive] + sum(negatives) / len(negatives))
    return total / (2 * d)


@pytest.mark.parametrize("n,d,tau", [(4, 3, 0.1), (16, 8, 0.1), (9, 5, 0.5), (32, 4, 0.05)])
@pytest.mark.parametrize("hardness_aware", [True, False])
def test_matches_reference_value_and_gradient(n, d, tau, hardness_aware):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = (z1.detach() + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_()
    ours = dimcl_loss(z1, z2, tau, hardness_aware)
    grads = torch.autograd.grad(ours, (z1, z2))
    ref = reference_dimcl(z1, z2, tau, hardness_aware)
    ref_grads = torch.autograd.grad(ref, (z1, z2))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("hardness_aware", [True, False])
def test_gradcheck(hardness_aware):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: dimcl_loss(a, b, 0.2, hardness_aware), (z1, z2))


def test_identical_decorrelated_views_reach_the_minimum_region():
    # Views that agree perfectly give a lower loss than independent views.
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, 8, generator=g, dtype=torch.float64)
    assert dimcl_loss(z, z.clone()) < dimcl_loss(z, torch.randn(64, 8, generator=g, dtype=torch.float64))


def test_invariant_to_batch_permutation():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(2, 20, 6, generator=g, dtype=torch.float64)
    perm = torch.randperm(20, generator=g)
    for hardness_aware in (True, False):
        torch.testing.assert_close(
            dimcl_loss(z1, z2, hardness_aware=hardness_aware),
            dimcl_loss(z1[perm], z2[perm], hardness_aware=hardness_aware),
        )


def test_invariant_to_per_dimension_affine_rescaling():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(2, 32, 6, generator=g, dtype=torch.float64)
    scale1, scale2 = torch.rand(2, 6, generator=g, dtype=torch.float64) * 3 + 0.5
    shift1, shift2 = torch.randn(2, 6, generator=g, dtype=torch.float64) * 5
    base = dimcl_loss(z1, z2)
    moved = dimcl_loss(z1 * scale1 + shift1, z2 * scale2 + shift2)
    # Only eps = 1e-5 inside the square root breaks exact invariance.
    torch.testing.assert_close(base, moved, rtol=1e-4, atol=1e-5)


def test_hardness_aware_weights_harder_negatives_more():
    d = 4
    g = torch.Generator().manual_seed(4)
    sim = torch.rand(2 * d, 2 * d, generator=g, dtype=torch.float64) * 2 - 1
    sim = ((sim + sim.T) / 2).requires_grad_()
    tau = 0.1
    (grad_hard,) = torch.autograd.grad(contrast_similarities(sim, tau, True), sim)
    (grad_uniform,) = torch.autograd.grad(contrast_similarities(sim, tau, False), sim)
    for i in range(2 * d):
        negatives = [j for j in range(2 * d) if j not in (i, (i + d) % (2 * d))]
        s = sim.detach()[i, negatives]
        hard = grad_hard[i, negatives]
        uniform = grad_uniform[i, negatives]
        # The InfoNCE gradient on a negative is its softmax weight: increasing in its similarity,
        # in fact proportional to exp(s / tau).
        order = torch.argsort(s)
        assert torch.all(torch.diff(hard[order]) > 0)
        torch.testing.assert_close(hard / hard.sum(), torch.softmax(s / tau, 0), rtol=1e-9, atol=1e-12)
        # The uniform form: every negative gets the same weight, whatever its similarity.
        torch.testing.assert_close(uniform, torch.full_like(uniform, uniform[0].item()))
        assert uniform[0] > 0
        # Neither form touches the self-similarity.
        assert grad_hard[i, i] == 0 and grad_uniform[i, i] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_a_finite_loss_close_to_float64(dtype):
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(64, 32, generator=g).to(dtype)
    z2 = (z1.float() + 0.3 * torch.randn(64, 32, generator=g)).to(dtype)
    loss = dimcl_loss(z1, z2)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    exact = dimcl_loss(z1.double(), z2.double())
    assert abs(loss.item() - exact.item()) < 1e-4 * max(1.0, abs(exact.item()))


def test_autocast_does_not_lower_the_loss_precision():
    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(2, 64, 32, generator=g)
    exact = dimcl_loss(z1.double(), z2.double()).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dimcl_loss(z1, z2)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), exact, rel_tol=1e-5)


def test_module_matches_function():
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(2, 10, 5, generator=g)
    module = DimCLLoss(temperature=0.3, hardness_aware=False)
    assert torch.equal(module(z1, z2), dimcl_loss(z1, z2, 0.3, False))


@pytest.mark.parametrize(
    "shapes,tau,match",
    [
        (((4, 3), (4, 5)), 0.1, r"same shape.*\(4, 3\).*\(4, 5\)"),
        (((1, 3), (1, 3)), 0.1, "N=1"),
        (((4, 1), (4, 1)), 0.1, "D=1"),
        (((4, 3), (4, 3)), 0.0, "temperature must be > 0, got 0.0"),
        (((4, 3), (4, 3)), -1.0, "got -1.0"),
        (((4,), (4,)), 0.1, r"\(N, D\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(shapes, tau, match):
    a, b = torch.randn(*shapes[0]), torch.randn(*shapes[1])
    with pytest.raises(ValueError, match=match):
        dimcl_loss(a, b, tau)


def test_module_rejects_bad_temperature():
    with pytest.raises(ValueError, match="got 0"):
        DimCLLoss(temperature=0)
