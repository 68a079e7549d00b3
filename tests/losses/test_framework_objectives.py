"""The objectives of DINO, SwAV, MoCo v3, NNCLR and W-MSE against plainly written references (float64):
values, gradients (autograd against finite differences), where gradients must not flow, invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from dimcl.losses import (
    dino_loss,
    mocov3_loss,
    nnclr_loss,
    sinkhorn,
    swav_loss,
    updated_center,
    whiten,
    whitened_mse_loss,
    wmse_loss,
)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _log_softmax(row):
    top = max(row)
    log_total = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_total for v in row]


def _cos(a, b):
    a, b = a.detach(), b.detach()
    return float((a * b).sum() / math.sqrt(float((a * a).sum()) * float((b * b).sum())))


# ----------------------------------------------------------------------------------------------------- DINO


def _dino_reference(student, teacher, center, ts, tt):
    """DINO's loss written out: every (teacher global view a, student view b != a) pair, per image."""
    n = teacher.shape[0] // 2
    views = student.shape[0] // n
    total, pairs = 0.0, 0
    for a in range(2):
        for b in range(views):
            if a == b:
                continue
            pair = 0.0
            for i in range(n):
                t = [math.exp(v) for v in ((teacher[a * n + i] - center[0]) / tt).tolist()]
                t = [v / sum(t) for v in t]
                s = _log_softmax((student[b * n + i] / ts).tolist())
                pair += -sum(p * q for p, q in zip(t, s, strict=True))
            total += pair / n
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("views", [2, 4])
def test_dino_loss_matches_reference(views):
    n, p = 5, 7
    student, teacher, center = _randn(views * n, p, seed=1), _randn(2 * n, p, seed=2), _randn(1, p, seed=3)
    got = dino_loss(student, teacher, center, 0.1, 0.05).item()
    assert math.isclose(got, _dino_reference(student, teacher, center, 0.1, 0.05), rel_tol=1e-10)


def test_dino_gradients_reach_the_student_only():
    student = _randn(12, 6, seed=4).requires_grad_()
    teacher = _randn(6, 6, seed=5).requires_grad_()
    center = _randn(1, 6, seed=6).requires_grad_()
    torch.autograd.gradcheck(lambda s: dino_loss(s, teacher, center, 0.1, 0.07), (student,))
    dino_loss(student, teacher, center).backward()
    assert student.grad is not None and teacher.grad is None and center.grad is None


def test_dino_loss_is_unchanged_when_the_centre_absorbs_a_shift():
    student, teacher, center = _randn(8, 5, seed=7), _randn(8, 5, seed=8), _randn(1, 5, seed=9)
    shift = _randn(1, 5, seed=10)
    base = dino_loss(student, teacher, center)
    torch.testing.assert_close(dino_loss(student, teacher + shift, center + shift), base, rtol=1e-12, atol=1e-12)
    # a constant added to every logit of a row changes no softmax, the student's included
    torch.testing.assert_close(dino_loss(student + 3.0, teacher - 2.0, center), base, rtol=1e-12, atol=1e-12)
    assert not torch.isclose(dino_loss(student, teacher + shift, center), base)


def test_dino_centre_is_an_ema_of_the_mean_teacher_logit():
    center, teacher = _randn(1, 4, seed=11), _randn(6, 4, seed=12)
    means = [sum(teacher[i, k].item() for i in range(6)) / 6 for k in range(4)]
    expected = [0.9 * c + 0.1 * m for c, m in zip(center[0].tolist(), means, strict=True)]
    torch.testing.assert_close(updated_center(center, teacher, 0.9)[0], torch.tensor(expected, dtype=torch.float64))


def test_dino_refuses_shapes_that_are_not_view_major():
    with pytest.raises(ValueError, match="two global views"):
        dino_loss(_randn(7, 3), _randn(4, 3), _randn(1, 3))


# ----------------------------------------------------------------------------------------------------- SwAV


def _sinkhorn_reference(scores, epsilon, iterations):
    """Sinkhorn-Knopp as SwAV's paper states it, on Python lists: a (K x B) matrix of exp(score / ε),
    alternately rescaled to rows of mass 1/K and columns of mass 1/B, returned as B rows of mass 1."""
    b, k = scores.shape
    q = [[math.exp(scores[i, j].item() / epsilon) for i in range(b)] for j in range(k)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / (k * sum(row)) for v in row] for row in q]
        columns = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / (b * columns[i]) for i in range(b)] for j in range(k)]
    return torch.tensor([[b * q[j][i] for j in range(k)] for i in range(b)], dtype=torch.float64)


def test_sinkhorn_matches_reference_and_its_margins():
    scores = F.normalize(_randn(9, 4, seed=13), dim=1) @ F.normalize(_randn(5, 4, seed=14), dim=1).T
    q = sinkhorn(scores, 0.05, 3)
    torch.testing.assert_close(q, _sinkhorn_reference(scores, 0.05, 3), rtol=1e-10, atol=1e-12)
    # every sample's assignment sums to 1 (the last step normalises the columns exactly) ...
    torch.testing.assert_close(q.sum(1), torch.ones(9, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # ... and, after enough iterations, every prototype receives B / K of the mass
    balanced = sinkhorn(scores, 0.05, 200)
    torch.testing.assert_close(balanced.sum(0), torch.full((5,), 9 / 5, dtype=torch.float64), rtol=1e-6, atol=1e-8)
    assert not q.requires_grad


def test_swav_loss_matches_reference_and_assignments_carry_no_gradient():
    preds = [_randn(4, 3, seed=s).requires_grad_() for s in (15, 16, 17)]  # two global views and a local one
    assignments = [F.softmax(_randn(4, 3, seed=s), dim=1).requires_grad_() for s in (18, 19)]
    expected, pairs = 0.0, 0
    for a, q in enumerate(assignments):
        for v, p in enumerate(preds):
            if v != a:
                expected += sum(
                    -sum(x * y for x, y in zip(q[i].tolist(), _log_softmax((p[i] / 0.1).tolist()), strict=True))
                    for i in range(4)
                ) / 4
                pairs += 1
    loss = swav_loss(preds, assignments, 0.1)
    assert math.isclose(loss.item(), expected / pairs, rel_tol=1e-10)
    torch.autograd.gradcheck(lambda *p: swav_loss(list(p), [q.detach() for q in assignments], 0.1), tuple(preds))
    loss.backward()
    assert all(p.grad is not None for p in preds) and all(q.grad is None for q in assignments)


# -------------------------------------------------------------------------------------------- MoCo v3, NNCLR


def _info_nce_reference(anchors, candidates, temperature):
    """-1/N Σ_i log softmax_m(cos(anchor_i, candidate_m) / τ)[i], written out."""
    n = anchors.shape[0]
    total = 0.0
    for i in range(n):
        logits = [_cos(anchors[i], c) / temperature for c in candidates]
        total += -_log_softmax(logits)[i]
    return total / n


def test_mocov3_loss_is_two_tau_times_infonce_over_the_keys():
    q, k = _randn(6, 4, seed=20).requires_grad_(), _randn(6, 4, seed=21).requires_grad_()
    loss = mocov3_loss(q, k, 0.2)
    assert math.isclose(loss.item(), 2 * 0.2 * _info_nce_reference(q, k, 0.2), rel_tol=1e-10)
    torch.autograd.gradcheck(lambda x: mocov3_loss(x, k, 0.2), (q,))
    loss.backward()
    assert q.grad is not None and k.grad is None


def test_nnclr_loss_matches_reference_and_neighbours_carry_no_gradient():
    nn, p = _randn(6, 4, seed=22).requires_grad_(), _randn(6, 4, seed=23).requires_grad_()
    loss = nnclr_loss(nn, p, 0.1)
    assert math.isclose(loss.item(), _info_nce_reference(nn, p, 0.1), rel_tol=1e-10)
    torch.autograd.gradcheck(lambda x: nnclr_loss(nn, x, 0.1), (p,))
    loss.backward()
    assert p.grad is not None and nn.grad is None


@pytest.mark.parametrize("loss", [mocov3_loss, nnclr_loss])
def test_temperature_must_be_positive(loss):
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        loss(_randn(3, 2), _randn(3, 2), 0)


# ----------------------------------------------------------------------------------------------------- W-MSE


def test_whiten_is_the_inverse_cholesky_factor_applied_to_the_centred_batch():
    z = _randn(12, 4, seed=24) @ _randn(4, 4, seed=25)  # correlated dimensions
    w = whiten(z)
    centred = z - z.mean(0)
    lower = torch.linalg.cholesky(centred.T @ centred / 11)
    torch.testing.assert_close(w, centred @ torch.linalg.inv(lower).T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.T @ w / 11, torch.eye(4, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w.mean(0), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)
    # shrinkage: eps mixes the identity into the covariance, and allows fewer samples than dimensions
    shrunk = whiten(z[:3], eps=0.5)
    c3 = z[:3] - z[:3].mean(0)
    expected = c3 @ torch.linalg.inv(torch.linalg.cholesky(0.5 * c3.T @ c3 / 2 + 0.5 * torch.eye(4))).T
    torch.testing.assert_close(shrunk, expected.double(), rtol=1e-10, atol=1e-12)
    torch.autograd.gradcheck(whiten, (z.clone().requires_grad_(),))


def test_wmse_loss_is_the_normalised_mse_with_gradients_through_both_views():
    a, b = _randn(5, 3, seed=26).requires_grad_(), _randn(5, 3, seed=27).requires_grad_()
    expected = 2 - 2 * sum(_cos(a[i], b[i]) for i in range(5)) / 5
    loss = wmse_loss(a, b)
    assert math.isclose(loss.item(), expected, rel_tol=1e-10)
    torch.autograd.gradcheck(wmse_loss, (a, b))
    loss.backward()
    assert a.grad is not None and b.grad is not None


def test_whitened_mse_whitens_each_sub_batch_of_each_view_on_its_own():
    z1, z2 = _randn(12, 3, seed=28).requires_grad_(), _randn(12, 3, seed=29).requires_grad_()
    perms = [torch.randperm(12, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    expected = []
    for perm in perms:
        w1, w2 = torch.zeros(12, 3, dtype=torch.float64), torch.zeros(12, 3, dtype=torch.float64)
        for chunk in perm.view(-1, 6):
            w1[chunk], w2[chunk] = whiten(z1[chunk]), whiten(z2[chunk])
        expected.append(2 - 2 * sum(_cos(w1[i], w2[i]) for i in range(12)) / 12)
    loss = whitened_mse_loss(z1, z2, perms, 6)
    assert math.isclose(loss.item(), sum(expected) / 2, rel_tol=1e-10)
    torch.autograd.gradcheck(lambda a, b: whitened_mse_loss(a, b, perms, 6), (z1, z2))
    with pytest.raises(ValueError, match="whitening_size=5 must be >= 2 and divide the batch of 12"):
        whitened_mse_loss(z1, z2, perms, 5)


# ------------------------------------------------------------------------------------------- mixed precision


def _two_tensor_objectives():
    center = torch.randn(1, 16, generator=torch.Generator().manual_seed(30))
    return [("dino", dino_loss, (center,)), ("mocov3", mocov3_loss, ()), ("nnclr", nnclr_loss, ()),
            ("wmse", wmse_loss, ()), ("whitened_mse", whitened_mse_loss, ([torch.arange(24)], 24))]


@pytest.mark.parametrize("name,loss_fn,extra", _two_tensor_objectives(), ids=[o[0] for o in _two_tensor_objectives()])
def test_the_objectives_compute_in_float32_under_autocast(name, loss_fn, extra):
    g = torch.Generator().manual_seed(31)
    a, b = torch.randn(2, 24, 16, generator=g)
    a16, b16 = a.bfloat16().requires_grad_(), b.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_fn(a16, b16, *extra)
    mixed.backward()
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, loss_fn(a16.detach().float(), b16.detach().float(), *extra))
    grad = b16.grad if name == "nnclr" else a16.grad  # NNCLR's first argument, the neighbours, takes none
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()
    assert torch.equal(loss_fn(a, b, *extra), loss_fn.__wrapped__(a, b, *extra))  # float32 passes untouched


def test_swav_and_sinkhorn_compute_in_float32_under_autocast():
    g = torch.Generator().manual_seed(32)
    scores = [F.normalize(torch.randn(8, 6, generator=g), dim=1).bfloat16() for _ in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = [sinkhorn(s) for s in scores[:2]]
        loss = swav_loss(scores, q)
    assert q[0].dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.equal(q[0], sinkhorn(scores[0].float()))
    assert torch.equal(loss, swav_loss([s.float() for s in scores], q))
