"""Every registered method, with and without DimCL: the method contract (name, output, momentum twin),
named losses, learning, λ = 0 equals the plain method, momentum updates, and the registry's errors.

The tests that take ``method_name`` run over ``METHODS`` (tests/conftest.py) with each method's row of
tests/methods/cases.py: a new method is covered once it is registered and has its row (a test says when one
is missing). tests/methods/test_plug_in.py runs them on a method it defines."""

import math

import pytest
import torch
from conftest import TinyBackbone
from methods.cases import CASES, case, missing_row_message, momentum_projections

from dimcl.losses import dimcl_loss, moco_loss
from dimcl.methods import METHODS, DimCLConfig, MethodOutput, SSLMethod, build_method, cosine_momentum, method_options


def make(name, weight=0.0, seed=0, **overrides):
    torch.manual_seed(seed)
    dimcl = DimCLConfig(weight=weight, temperature=0.1) if weight is not None else None
    return build_method(name, TinyBackbone(), dimcl, **{**case(name).options, **overrides})


def views(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    return [x + 0.1 * torch.randn(x.shape, generator=g), x + 0.1 * torch.randn(x.shape, generator=g)]


def test_registry_holds_the_six_methods_of_the_paper():
    assert {"simclr", "mocov2plus", "byol", "simsiam", "barlow_twins", "vicreg"} <= set(METHODS)
    assert all(cls.name == name and issubclass(cls, SSLMethod) for name, cls in METHODS.items())
    # dimcl's own: a method a test defines (test_plug_in.py) is registered during its tests only
    assert all(cls.__module__.startswith("dimcl.methods.") for cls in METHODS.values())


def test_every_registered_method_has_a_row(method_name):
    assert method_name in CASES, missing_row_message(method_name)


def test_a_method_class_must_declare_its_name():
    with pytest.raises(TypeError, match=r"Nameless must declare its registry name.*got None"):

        class Nameless(SSLMethod):
            pass

    with pytest.raises(TypeError, match=r"MyBYOL must declare its registry name.*got None"):

        class MyBYOL(METHODS["byol"]):  # inheriting "byol" would clash in the registry
            pass

    with pytest.raises(TypeError, match=r"got 'My Method'"):

        class Spaced(SSLMethod):
            name = "My Method"

    class Named(SSLMethod):
        name = "named"

    assert Named.name == "named" and Named.base_momentum is None


@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_step_returns_named_losses_and_gradients(method_name, weight):
    method = make(method_name, weight)
    out = method(views())
    # The keys MethodOutput declares: all the required ones, loss_dimcl exactly when λ > 0.
    assert set(out) == MethodOutput.__required_keys__ | ({"loss_dimcl"} if weight > 0 else set())
    assert MethodOutput.__optional_keys__ == {"loss_dimcl"}
    assert out["features"].shape == (16, TinyBackbone.num_features)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_a_few_steps_on_a_fixed_batch_lower_the_loss(method_name, weight):
    method, row = make(method_name, weight), case(method_name)
    batch = views(n=32)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=row.lr, momentum=0.9)
    # The row's fixed buffers (a queue) keep their initial value: on one fixed batch a queue soon holds keys
    # of the very same images as negatives, which raises the loss by design; this tests the optimisation alone.
    initial = {key: method.get_buffer(key).clone() for key in row.fixed_buffers}
    losses = []
    for step in range(15):
        out = method(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.momentum_update(cosine_momentum(step, 15))
        for key, value in initial.items():
            method.get_buffer(key).copy_(value)
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], losses


def test_weight_zero_is_bit_identical_to_the_plain_method(method_name):
    plain = make(method_name, weight=None)
    zero = make(method_name, weight=0.0)
    assert plain.dimcl_loss is None and zero.dimcl_loss is None  # the DimCL term is never built
    batch = views()
    out_plain, out_zero = plain(batch), zero(batch)
    assert "loss_dimcl" not in out_zero
    assert torch.equal(out_plain["loss"], out_zero["loss"])
    out_plain["loss"].backward()
    out_zero["loss"].backward()
    for a, b in zip(plain.parameters(), zero.parameters(), strict=True):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)


def test_loss_is_the_weighted_sum_of_the_method_objective_and_dimcl(method_name):
    method = make(method_name, weight=0.25).eval()  # eval: BN uses running stats, so recomputation matches
    batch = views()
    with torch.no_grad():
        out = method(batch)
        expected_ssl = case(method_name).reference(method, batch, out["z1"], out["z2"])
        expected_dimcl = dimcl_loss(out["z1"], out["z2"], 0.1)
    torch.testing.assert_close(out["loss_ssl"], expected_ssl)
    torch.testing.assert_close(out["loss_dimcl"], expected_dimcl)
    torch.testing.assert_close(out["loss"], 0.75 * expected_ssl + 0.25 * expected_dimcl)


def test_moco_uses_the_queue_and_enqueues_keys():
    method = make("mocov2plus", weight=0.1, queue_size=40)
    batch = views()
    queue_before = method.queue.clone()
    out = method(batch)
    k1, k2 = momentum_projections(method, batch)
    with torch.no_grad():
        expected = (
            moco_loss(out["z1"], k2, queue_before[1], 0.2) + moco_loss(out["z2"], k1, queue_before[0], 0.2)
        ) / 2
    torch.testing.assert_close(out["loss_ssl"], expected)
    torch.testing.assert_close(method.queue[0, :16], torch.nn.functional.normalize(k1, dim=1))
    torch.testing.assert_close(method.queue[1, :16], torch.nn.functional.normalize(k2, dim=1))
    assert torch.equal(method.queue[:, 16:], queue_before[:, 16:])
    assert method.queue_ptr.item() == 16
    method(batch)
    method(batch)  # 48 keys into a queue of 40: wraps around
    assert method.queue_ptr.item() == 48 % 40


def test_the_momentum_methods_of_the_paper_have_a_twin():
    assert all(make(name).base_momentum is not None for name in ("byol", "mocov2plus"))


def test_base_momentum_and_momentum_pairs_go_together(method_name):
    name, method = method_name, make(method_name)
    pairs = method.momentum_pairs()
    if method.base_momentum is None:
        assert pairs == [], f"{name} has momentum pairs but no base_momentum: the training loop would never update them"
        return
    assert 0 < method.base_momentum <= 1
    assert pairs, f"{name} sets base_momentum but momentum_pairs() is empty"
    assert "base_momentum" in method_options(name)  # a config key, method.base_momentum
    for online, twin in pairs:
        assert all(not p.requires_grad for p in twin.parameters())
        assert [p.shape for p in online.parameters()] == [p.shape for p in twin.parameters()]


def test_momentum_update_moves_the_target_by_the_scheduled_amount(method_name):
    method = make(method_name, weight=0.1)
    with torch.no_grad():  # make online and target differ
        for p in method.backbone.parameters():
            p.add_(torch.randn_like(p))
    tau = cosine_momentum(30, 100)
    pairs = method.momentum_pairs()
    if method.base_momentum is None:  # no twin: the update touches nothing
        params = [p.clone() for p in method.parameters()]
        method.momentum_update(tau)
        assert all(torch.equal(a, b) for a, b in zip(params, method.parameters(), strict=True))
        return
    before = [[(p.clone(), q.clone()) for p, q in zip(o.parameters(), t.parameters(), strict=True)] for o, t in pairs]
    method.momentum_update(tau)
    for (_, target), olds in zip(pairs, before, strict=True):
        for q, (p_old, q_old) in zip(target.parameters(), olds, strict=True):
            torch.testing.assert_close(q, tau * q_old + (1 - tau) * p_old)
            # the multi-tensor update is, on the CPU, the per-tensor lerp_ bit for bit (runs stay reproducible)
            assert torch.equal(q, q_old.clone().lerp_(p_old, 1.0 - tau))
        assert all(not q.requires_grad for q in target.parameters())


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.99)
    assert cosine_momentum(50, 100) == pytest.approx(0.995)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(25, 100) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_unknown_method_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown method 'byl'.*simclr.*Did you mean 'byol'"):
        build_method("byl", TinyBackbone())


def test_an_option_the_method_does_not_take_is_an_error():
    with pytest.raises(ValueError, match=r"method 'byol' has no option 'temperature'.*proj_hidden_dim"):
        build_method("byol", TinyBackbone(), temperature=0.2)
    assert "queue_size" in method_options("mocov2plus")


@pytest.mark.parametrize(
    "weight,temperature,match", [(1.5, 0.1, "weight"), (-0.1, 0.1, "weight"), (0.1, 0, "temperature")]
)
def test_bad_dimcl_settings_are_clear_errors(weight, temperature, match):
    with pytest.raises(ValueError, match=match):
        DimCLConfig(weight=weight, temperature=temperature)


def test_methods_need_two_views_and_only_multi_crop_ones_take_more(method_name):
    method = make(method_name)
    with pytest.raises(ValueError, match="two global augmented views .*got 1"):
        method(views()[:1])
    if not method.multi_crop:
        with pytest.raises(ValueError, match="exactly two augmented views, got 3"):
            method(views() + views()[:1])
    else:
        assert "loss" in method(views() + views()[:1])  # a third (local) view is taken
