"""The base objectives against plainly written references."""

import math

import pytest
import torch

from dimcl.losses import barlow_twins_loss, byol_loss, moco_loss, nt_xent_loss, simsiam_loss, vicreg_loss


def _pair(n=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


def _cos(a, b):
    return (a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum())


def test_nt_xent_matches_reference():
    z1, z2 = _pair()
    n, tau = z1.shape[0], 0.2
    u = list(z1) + list(z2)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denominator = sum(math.exp(_cos(u[i], u[j]) / tau) for j in range(2 * n) if j != i)
        total += -math.log(math.exp(_cos(u[i], u[pos]) / tau) / denominator)
    assert math.isclose(nt_xent_loss(z1, z2, tau).item(), total / (2 * n), rel_tol=1e-10)


def test_moco_matches_reference():
    q, k = _pair(seed=1)
    queue = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1)
    tau = 0.2
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(_cos(q[i], k[i]) / tau)
        neg = sum(math.exp(_cos(q[i], m) / tau) for m in queue)
        total += -math.log(pos / (pos + neg))
    assert math.isclose(moco_loss(q, k, queue, tau).item(), total / q.shape[0], rel_tol=1e-10)


def test_negative_cosine_losses_and_stop_gradient():
    p, z = _pair(seed=2)
    mean_cos = sum(_cos(p[i], z[i]) for i in range(p.shape[0])) / p.shape[0]
    assert math.isclose(byol_loss(p, z).item(), 2 - 2 * mean_cos, rel_tol=1e-10)
    assert math.isclose(simsiam_loss(p, z).item(), -mean_cos, rel_tol=1e-10)
    z.requires_grad_()
    byol_loss(p.requires_grad_(), z).backward()
    assert z.grad is None and p.grad is not None


def test_barlow_twins_matches_reference():
    z1, z2 = _pair(n=8, d=3, seed=3)
    n, d = z1.shape

    def bn(z):
        mean = z.mean(0)
        var = ((z - mean) ** 2).mean(0)
        return (z - mean) / torch.sqrt(var + 1e-5)

    a, b = bn(z1), bn(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else 0.0051 * c**2
    assert math.isclose(barlow_twins_loss(z1, z2).item(), 0.1 * float(total), rel_tol=1e-10)


def test_vicreg_matches_reference():
    z1, z2 = _pair(n=8, d=3, seed=4)
    n, d = z1.shape
    invariance = ((z1 - z2) ** 2).sum().item() / (n * d)

    def variance(z):
        return sum(max(0.0, 1 - math.sqrt(z[:, j].var().item() + 1e-4)) for j in range(d)) / d

    def covariance(z):
        c = torch.cov(z.T)
        return sum(c[i, j].item() ** 2 for i in range(d) for j in range(d) if i != j) / d

    expected = 25 * invariance + 25 * (variance(z1) + variance(z2)) + covariance(z1) + covariance(z2)
    assert math.isclose(vicreg_loss(z1, z2).item(), expected, rel_tol=1e-10)


@pytest.mark.parametrize("loss", [nt_xent_loss, moco_loss])
def test_temperature_must_be_positive(loss):
    z1, z2 = _pair()
    args = (z1, z2, z1) if loss is moco_loss else (z1, z2)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        loss(*args, temperature=0)
