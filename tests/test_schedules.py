"""The one cosine schedule and the schedules built on it (learning rate, EMA momentum, linear probe)."""

from __future__ import annotations

import math

import torch

from dimcl.methods import cosine_momentum
from dimcl.schedules import cosine, warmup_cosine


def test_cosine_runs_from_start_to_end_and_clamps():
    assert cosine(0, 10, 2.0, 0.5) == 2.0 and cosine(10, 10, 2.0, 0.5) == 0.5
    assert math.isclose(cosine(5, 10, 2.0, 0.5), 1.25, rel_tol=0, abs_tol=1e-15)  # the midpoint, cos = 0
    assert cosine(-3, 10, 2.0, 0.5) == 2.0 and cosine(13, 10, 2.0, 0.5) == 0.5
    assert cosine(0, 0, 2.0, 0.5) == 0.5  # no steps: already at the end


def test_the_learning_rate_is_a_warm_up_then_the_cosine():
    values = warmup_cosine(1.0, 10, 3, start=0.1, final=0.01)
    assert len(values) == 10 and values[0] == 0.1 and values[3] == 1.0
    assert values[4:] == [cosine(k, 7, 1.0, 0.01) for k in range(1, 7)]


def test_the_momentum_is_byols_formula_as_the_float32_weights_see_it():
    # BYOL: τ_k = 1 - (1 - τ_base)(cos(πk/K) + 1)/2. The EMA's lerp takes 1 - τ as a float32 scalar; the
    # written-out formula and the shared cosine may differ in a double's last bit (π·(k/K) against πk/K),
    # never after that rounding (checked for every step of 1..400-step runs and three bases).
    for base in (0.9, 0.99, 0.996):
        for total in range(1, 401):
            ours = torch.tensor([1.0 - cosine_momentum(k, total, base) for k in range(total + 1)])
            byol = torch.tensor([1.0 - (1 - (1 - base) * (math.cos(math.pi * (k / total)) + 1) / 2)
                                 for k in range(total + 1)])
            assert torch.equal(ours.float(), byol.float()), (base, total)


def test_the_linear_probe_rate_is_exactly_the_half_cosine():
    for total in (1, 7, 390):
        for step in range(total):
            assert cosine(step, total, 0.1, 0.0) == 0.5 * 0.1 * (1 + math.cos(math.pi * step / total))
