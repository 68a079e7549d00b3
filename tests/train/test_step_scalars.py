"""The steps' scalars kept on the device between reads (train/step_scalars.py)."""

from __future__ import annotations

import pytest
import torch

from dimcl.train.step_scalars import StepScalars, StepWhere


def test_read_returns_every_pending_step_in_order_then_nothing():
    scalars = StepScalars()
    assert scalars.read() == []
    steps = [{"loss": torch.tensor(0.1 * s), "loss_ssl": torch.tensor(0.2 * s), "probe_count": torch.tensor(16),
              "other": torch.ones(3)} for s in range(3)]
    for s, out in enumerate(steps):
        scalars.append(out, StepWhere(epoch=1, batch=s, step=10 + s))
    assert len(scalars) == 3
    read = scalars.read()
    assert [w for w, _ in read] == [StepWhere(1, s, 10 + s) for s in range(3)]
    for (_, values), out in zip(read, steps, strict=True):
        assert list(values) == ["loss", "loss_ssl", "probe_count"]  # the output's order, scalars only
        # float32 -> Python float is exact, and so are integer counts
        assert values["loss"] == out["loss"].item() and values["loss_ssl"] == out["loss_ssl"].item()
        assert values["probe_count"] == 16.0
    assert len(scalars) == 0 and scalars.read() == []


def test_a_step_with_other_terms_before_a_read_is_refused():
    scalars = StepScalars()
    scalars.append({"loss": torch.tensor(1.0)}, StepWhere(0, 0, 0))
    with pytest.raises(ValueError, match="changed"):
        scalars.append({"loss": torch.tensor(1.0), "loss_dimcl": torch.tensor(2.0)}, StepWhere(0, 1, 1))
    scalars.read()
    scalars.append({"loss": torch.tensor(1.0), "loss_dimcl": torch.tensor(2.0)}, StepWhere(0, 1, 1))  # after a read
