import pytest
import torch
from torch import nn

from dimcl.models import mlp


def _kinds(head: nn.Sequential) -> list[type]:
    return [type(layer) for layer in head]


def test_single_layer_is_one_linear_with_bias():
    head = mlp(8, 999, 4, num_layers=1)
    assert _kinds(head) == [nn.Linear]
    assert head[0].in_features == 8 and head[0].out_features == 4
    assert head[0].bias is not None


def test_two_layers():
    head = mlp(8, 16, 4, 2)
    assert _kinds(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None  # followed by BN, so a bias would be wasted
    assert (head[0].in_features, head[0].out_features) == (8, 16)
    assert head[1].num_features == 16
    assert (head[3].in_features, head[3].out_features) == (16, 4)
    assert head[3].bias is not None


def test_three_layers():
    head = mlp(8, 16, 4, 3)
    assert _kinds(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert (head[3].in_features, head[3].out_features) == (16, 16)
    assert all(layer.bias is None for layer in (head[0], head[3]))
    assert head[-1].bias is not None


@pytest.mark.parametrize("affine", [True, False])
def test_last_norm(affine):
    head = mlp(8, 16, 4, 3, last_norm=True, last_norm_affine=affine)
    assert _kinds(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert head[-2].bias is None
    assert head[-1].num_features == 4
    assert head[-1].affine is affine
    assert head[1].affine  # hidden BNs keep their affine parameters either way


def test_single_layer_with_last_norm():
    head = mlp(8, 16, 4, 1, last_norm=True, last_norm_affine=False)
    assert _kinds(head) == [nn.Linear, nn.BatchNorm1d]
    assert head[0].bias is None and not head[1].affine


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_output_shape_and_backward(num_layers):
    head = mlp(12, 32, 5, num_layers)
    x = torch.randn(6, 12, requires_grad=True)
    out = head(x)
    assert out.shape == (6, 5)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_last_norm_without_affine_standardizes_output():
    head = mlp(12, 32, 5, 2, last_norm=True, last_norm_affine=False).train()
    out = head(torch.randn(64, 12))
    # Mean: two 64-term float32 sums (BatchNorm's and the test's), <= 2 * 63 * 6e-8 * mean|x| / sigma ~ 1.5e-5.
    # Variance: BatchNorm divides by sqrt(var + 1e-5), so it is var / (var + 1e-5) = 1 - 1e-5 / var (docs/testing.md).
    torch.testing.assert_close(out.mean(0), torch.zeros(5), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "args, bad",
    [
        ((0, 16, 4, 2), "in_dim"),
        ((8, -1, 4, 2), "hidden_dim"),
        ((8, 16, 0, 2), "out_dim"),
        ((8, 16, 4, 0), "num_layers"),
        ((8, 16, 4, 2.0), "num_layers"),
    ],
)
def test_bad_arguments(args, bad):
    with pytest.raises(ValueError, match=bad):
        mlp(*args)
