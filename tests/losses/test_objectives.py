"""The base objectives against plainly written references."""

import math

import pytest
import torch

from dimcl.losses import barlow_twins_loss, byol_loss, moco_loss, nt_xent_loss, simsiam_loss, vicreg_loss
from dimcl.losses.info_nce import two_view_info_nce


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


def test_two_view_info_nce_is_nt_xent_of_the_unit_vectors_and_leaves_its_argument_alone():
    z1, z2 = _pair(seed=5)
    u = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    similarity = u @ u.T
    before = similarity.clone()
    assert torch.equal(two_view_info_nce(similarity, 0.2), nt_xent_loss(z1, z2, 0.2))
    assert torch.equal(similarity, before)  # the self-similarities are masked in a copy


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



def _objectives():
    """(name, objective, extra arguments after the two (N, 16) inputs) for every objective, DimCL included."""
    from dimcl.losses import dimcl_loss

    queue = torch.nn.functional.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(9)), dim=1)
    return [
        ("barlow_twins", barlow_twins_loss, ()),
        ("vicreg", vicreg_loss, ()),
        ("nt_xent", nt_xent_loss, ()),
        ("moco", moco_loss, (queue,)),
        ("byol", byol_loss, ()),
        ("simsiam", simsiam_loss, ()),
        ("dimcl", dimcl_loss, ()),
    ]


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
AUTOCASTS = [("cpu", torch.bfloat16), pytest.param("cuda", torch.bfloat16, marks=_CUDA),
             pytest.param("cuda", torch.float16, marks=_CUDA)]


@pytest.mark.parametrize("device,half", AUTOCASTS, ids=["cpu-bf16", "cuda-bf16", "cuda-fp16"])
@pytest.mark.parametrize("name,loss_fn,extra", _objectives(), ids=[o[0] for o in _objectives()])
def test_every_objective_computes_in_float32_under_autocast(name, loss_fn, extra, device, half):
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(2, 24, 16, generator=g).to(device)
    extra = tuple(e.to(device) for e in extra)
    # The projector outputs of a bf16-mixed (16-mixed) run: half tensors, inside autocast.
    a16, b16 = a.to(half).requires_grad_(), b.to(half).requires_grad_()
    with torch.autocast(device, dtype=half):
        mixed = loss_fn(a16, b16, *extra)
        from_float32 = loss_fn(a, b, *extra)  # float32 inputs inside autocast (e.g. a float32 head)
    mixed.backward()
    # The same half values computed in float32 without autocast: equal to the bit (the same kernels).
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, loss_fn(a16.detach().float(), b16.detach().float(), *extra))
    assert a16.grad.dtype == half and torch.isfinite(a16.grad).all()
    assert torch.equal(from_float32, loss_fn(a, b, *extra))


@pytest.mark.parametrize("name,loss_fn,extra", _objectives(), ids=[o[0] for o in _objectives()])
def test_float32_and_float64_inputs_outside_autocast_are_untouched(name, loss_fn, extra):
    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(2, 24, 16, generator=g)
    assert torch.equal(loss_fn(a, b, *extra), loss_fn.__wrapped__(a, b, *extra))  # the undecorated function
    assert loss_fn(a.double(), b.double(), *(e.double() for e in extra)).dtype == torch.float64
