"""The one per-method table of the tests: a row per registered method, read by every shared method test.

The shared tests (tests/methods/test_methods.py, tests/test_multicrop.py, tests/train/test_loop.py) take a
``method_name`` argument, which tests/conftest.py parametrizes over ``dimcl.methods.METHODS``; they build the
method with its row's ``options`` and check its ``loss_ssl`` against its row's ``reference``. Whether a method
takes multi-crop local views is its class's ``multi_crop`` flag, not restated here. A registered method
without a row fails ``test_every_registered_method_has_a_row`` (which names it), and every other shared test
skips it with a pointer to that one.

A new method adds one row, :class:`MethodCase`:

- ``options``: its keyword options at widths that keep a CPU test fast (``method.<option>`` in a run);
- ``reference(method, views, z1, z2) -> loss_ssl``: the method's objective restated from its parts, where
  ``z1, z2`` are its online projections of the two global views (``method.projector(method.backbone(x))``,
  what DimCL is applied to) and ``views`` the batch. It calls the objectives of ``dimcl.losses`` (each tested
  against a restated formula in tests/losses) in the order the method does: it is compared with
  ``assert_close`` in eval mode and, for two-view training, with ``torch.equal`` in training mode (the
  losses and gradients of two-view training are exactly what they were before multi-crop existed);
- ``lr``: the SGD step with which a few steps on one fixed batch lower its loss;
- ``fixed_buffers``: buffers that step test holds at their initial value (a queue of past keys would
  otherwise fill with keys of the very same images, which raises a contrastive loss by design; DINO's
  centre would become that one batch's mean logit, which flattens the teacher's targets and so raises
  the cross-entropy by design).

Import this module as ``methods.cases`` (tests/ is on ``sys.path`` through conftest.py): under another name
it would be a second table, and a row added to one would be missing from the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from dimcl.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    moco_loss,
    mocov3_loss,
    nnclr_loss,
    nt_xent_loss,
    simsiam_loss,
    sinkhorn,
    swav_loss,
    vicreg_loss,
    whitened_mse_loss,
)
from dimcl.methods import METHODS, SSLMethod, method_options

if __name__ != "methods.cases":
    raise ImportError(f"import the per-method table as methods.cases, not as {__name__} (a second copy of it)")

Reference = Callable[[SSLMethod, Sequence[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MethodCase:
    """A method's row: see the module docstring."""

    options: dict[str, Any]
    reference: Reference
    lr: float = 0.05
    fixed_buffers: tuple[str, ...] = field(default=())


def momentum_projections(method: SSLMethod, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The momentum twin's projections of the two global views (no gradient)."""
    with torch.no_grad():
        return tuple(method.momentum_projector(method.momentum_backbone(x)) for x in views[:2])


# The references take the published defaults as numbers, not the method's attributes, so a default that
# drifts (SimCLR's τ, Barlow Twins' λ, VICReg's weights) fails here; the rows set none of these options.
def _simclr(method, views, z1, z2):
    return nt_xent_loss(z1, z2, 0.2)


def _mocov2plus(method, views, q1, q2):
    # each view's queries meet the other view's keys and that view's queue; the queue as before this step
    # (eval mode does not enqueue; in training mode the reference is a copy taken before the step)
    k1, k2 = momentum_projections(method, views)
    queue = method.queue.clone().detach()
    return (moco_loss(q1, k2, queue[1], 0.2) + moco_loss(q2, k1, queue[0], 0.2)) / 2


def _byol(method, views, z1, z2):
    t1, t2 = momentum_projections(method, views)
    p1, p2 = method.predictor(z1), method.predictor(z2)
    return byol_loss(p1, t2) + byol_loss(p2, t1)


def _simsiam(method, views, z1, z2):
    p1, p2 = method.predictor(z1), method.predictor(z2)
    return (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2


def _barlow_twins(method, views, z1, z2):
    return barlow_twins_loss(z1, z2, 0.0051, 0.1)


def _vicreg(method, views, z1, z2):
    return vicreg_loss(z1, z2, 25.0, 25.0, 1.0)


def _dino(method, views, z1, z2):
    # student: both global views' prototype logits; teacher: the momentum twin's, centred by the buffer as
    # before this step; solo-learn's temperatures (0.1, and 0.07 from the start: no warm-up by default)
    student = torch.cat([method.prototypes(F.normalize(z, dim=-1)) for z in (z1, z2)])
    with torch.no_grad():
        teacher = torch.cat([
            method.momentum_prototypes(F.normalize(method.momentum_projector(method.momentum_backbone(x)), dim=-1))
            for x in views[:2]
        ])
    return dino_loss(student, teacher, method.center.clone(), 0.1, 0.07)


def _swav(method, views, z1, z2):
    # the prototypes projected onto unit rows in place, outside autograd, as before SwAV's every step;
    # Sinkhorn with SwAV's ε = 0.05 and 3 iterations; τ = 0.1
    with torch.no_grad():
        method.prototypes.weight.copy_(F.normalize(method.prototypes.weight, dim=1))
    preds = [F.linear(F.normalize(z, dim=-1), method.prototypes.weight) for z in (z1, z2)]
    return swav_loss(preds, [sinkhorn(p, 0.05, 3) for p in preds], 0.1)


def _mocov3(method, views, z1, z2):
    k1, k2 = momentum_projections(method, views)
    return mocov3_loss(method.predictor(z1), k2, 0.2) + mocov3_loss(method.predictor(z2), k1, 0.2)


def _nnclr(method, views, z1, z2):
    queue = method.queue.clone()
    u1, u2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    nn1, nn2 = queue[(u1 @ queue.T).argmax(1)], queue[(u2 @ queue.T).argmax(1)]
    return (nnclr_loss(nn1, method.predictor(z2), 0.2) + nnclr_loss(nn2, method.predictor(z1), 0.2)) / 2


def _wmse(method, views, z1, z2):
    generator = torch.Generator().manual_seed(int(method.permutation_seed) + int(method.permutation_step))
    perm = torch.randperm(z1.shape[0], generator=generator)
    return whitened_mse_loss(z1, z2, [perm], method.whitening_size, 0.0)


#: the rows, by registry name
CASES: dict[str, MethodCase] = {
    "simclr": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=16), _simclr),
    "mocov2plus": MethodCase(
        dict(proj_hidden_dim=32, proj_output_dim=16, queue_size=256), _mocov2plus, fixed_buffers=("queue",)
    ),
    "byol": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32), _byol),
    "simsiam": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=8), _simsiam),
    "barlow_twins": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=16), _barlow_twins),
    # VICReg's loss is ~10x the others' (weights 25/25/1): a smaller step
    "vicreg": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=16), _vicreg, lr=0.005),
    "dino": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=16, num_prototypes=64), _dino,
                       fixed_buffers=("center",)),
    "swav": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=16, num_prototypes=24, queue_size=0), _swav),
    "mocov3": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32), _mocov3),
    "nnclr": MethodCase(
        dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32, queue_size=64), _nnclr,
        fixed_buffers=("queue",),
    ),
    # sub-batches of 8 whiten 4 dimensions (the tests' batches are 16 and 32 images, the loop's 16)
    "wmse": MethodCase(dict(proj_hidden_dim=32, proj_output_dim=4, whitening_size=8), _wmse),
}


def missing_row_message(name: str) -> str:
    options = ", ".join(method_options(name)) if name in METHODS else "?"
    return (
        f"method '{name}' is registered in dimcl.methods.METHODS but has no row in CASES in tests/methods/cases.py: "
        f"add MethodCase(options=<small widths among its options ({options})>, reference=<its objective "
        "restated from its parts>) (see that module's docstring)"
    )


def case(name: str) -> MethodCase:
    """The row of method ``name``; a method without one is skipped here (one test fails for it instead)."""
    if name not in CASES:
        pytest.skip(f"{missing_row_message(name)}; test_every_registered_method_has_a_row fails for it")
    return CASES[name]


def option_overrides(name: str) -> list[str]:
    """The row's options as config overrides, ``method.<option>=<value>``, for runs through the loop."""
    return [f"method.{key}={value}" for key, value in case(name).options.items()]
