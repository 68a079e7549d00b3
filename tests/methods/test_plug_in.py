"""A method is a plug-in: one defined here, registered for the duration of each test, passes the shared method
tests, the very test functions of tests/methods/test_methods.py, tests/test_multicrop.py and
tests/train/test_loop.py (imported, not copied) that every registered method runs; what it needs beyond its
class and its registry entry is one row in tests/methods/cases.py. A registered method without a row fails
one test that names it, and a wrong reference loss fails the tests that compare with it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from methods.cases import CASES, MethodCase, momentum_projections
from torch import nn

from dimcl.losses import nt_xent_loss
from dimcl.methods import METHODS, DimCLConfig, MethodOutput, SSLMethod
from dimcl.methods.base import momentum_copy


class Plugged(SSLMethod):
    """NT-Xent between the online projections of one view and the momentum twin's of the other (the positive
    and the in-batch negatives among them), both ways; the local views' projections meet those of both
    global views too (the mean over all pairs)."""

    name = "plugged"

    def __init__(
        self,
        backbone: nn.Module,
        dimcl: DimCLConfig | None = None,
        *,
        proj_output_dim: int = 64,
        base_momentum: float = 0.99,
        gather_distributed: bool = True,
    ):
        super().__init__(backbone, dimcl, gather_distributed)
        self.projector = nn.Linear(backbone.num_features, proj_output_dim)
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.base_momentum = base_momentum

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def forward(self, views: Sequence[torch.Tensor]) -> MethodOutput:
        f1, z1, z2 = self.encode(views)
        x1, x2, _ = self.split_views(views)
        local_z = self.encode_locals(views)
        with torch.no_grad():
            t1 = self.momentum_projector(self.momentum_backbone(x1))
            t2 = self.momentum_projector(self.momentum_backbone(x2))
        loss = (nt_xent_loss(z1, t2, 0.2) + nt_xent_loss(z2, t1, 0.2)) / 2
        if local_z:
            pairs = [nt_xent_loss(z, t, 0.2) for z in local_z for t in (t1, t2)]
            loss = (loss * 2 + torch.stack(pairs).sum()) / (2 + len(pairs))
        return self.combine(loss, z1, z2, f1, local_z)


class PluggedTwoView(Plugged):
    """The same on the two global views only (a method without a multi-crop form)."""

    name = "plugged_two_view"
    multi_crop = False


def _plugged_reference(method, views, z1, z2):
    t1, t2 = momentum_projections(method, views)
    return (nt_xent_loss(z1, t2, 0.2) + nt_xent_loss(z2, t1, 0.2)) / 2


#: the one row the plugged methods add (tests/methods/cases.py)
ROW = MethodCase(dict(proj_output_dim=16), _plugged_reference, lr=0.01)

#: tests/conftest.py runs this module's shared tests on these methods instead of dimcl.methods.METHODS
METHODS_UNDER_TEST = {cls.name: cls for cls in (Plugged, PluggedTwoView)}


@pytest.fixture(autouse=True)
def plugged_in(monkeypatch):
    """The plugged methods in the registry and their row in the table for one test, removed after it."""
    for name, cls in METHODS_UNDER_TEST.items():
        monkeypatch.setitem(METHODS, name, cls)
        monkeypatch.setitem(CASES, name, ROW)


# ----------------------------------------------------------------------------------- the shared tests, here

TESTS = Path(__file__).resolve().parents[1]
SHARED_MODULES = ("methods/test_methods.py", "test_multicrop.py", "train/test_loop.py")
METHOD_ARGUMENTS = {"method_name", "multi_crop_method", "two_view_method"}


def _test_module(relative: str):
    """The test module as pytest imports it (prepend mode: its folder on sys.path, its file's stem the
    module's name), so the functions below are the ones pytest runs there, not copies."""
    path = TESTS / relative
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    return importlib.import_module(path.stem)


#: every test of those modules that runs per method, by name: collected here too, on METHODS_UNDER_TEST
SHARED_TESTS = {
    test_name: test
    for module in map(_test_module, SHARED_MODULES)
    for test_name, test in vars(module).items()
    if test_name.startswith("test_") and METHOD_ARGUMENTS & set(inspect.signature(test).parameters)
}
assert not SHARED_TESTS.keys() & globals().keys(), "a shared test's name clashes with this module's"
globals().update(SHARED_TESTS)


def test_the_shared_tests_run_here():
    assert {test.__module__ for test in SHARED_TESTS.values()} == {"test_methods", "test_multicrop", "test_loop"}
    assert len(SHARED_TESTS) >= 14 and {
        "test_every_method_trains_through_the_command",
        "test_loss_is_the_weighted_sum_of_the_method_objective_and_dimcl",
        "test_two_views_compute_exactly_what_they_did_before_multi_crop",
    } <= SHARED_TESTS.keys()


# -------------------------------------------------------------------------- what fails, and how it says so


def test_a_registered_method_without_a_row_fails_one_test_that_names_it(monkeypatch):
    class Rowless(Plugged):
        name = "rowless"

    monkeypatch.setitem(METHODS, "rowless", Rowless)
    with pytest.raises(AssertionError, match=r"method 'rowless' is registered .* no row in CASES in tests/methods"):
        SHARED_TESTS["test_every_registered_method_has_a_row"]("rowless")
    # every other shared test skips it with a pointer to that one, rather than failing somewhere inside
    with pytest.raises(pytest.skip.Exception, match=r"'rowless'.*test_every_registered_method_has_a_row fails"):
        SHARED_TESTS["test_step_returns_named_losses_and_gradients"]("rowless", 0.1)


def test_a_wrong_reference_loss_fails_the_tests_that_compare_with_it(monkeypatch):
    def another_temperature(method, views, z1, z2):
        t1, t2 = momentum_projections(method, views)
        return (nt_xent_loss(z1, t2, 0.5) + nt_xent_loss(z2, t1, 0.5)) / 2

    monkeypatch.setitem(CASES, "plugged", MethodCase(ROW.options, another_temperature))
    with pytest.raises(AssertionError):
        SHARED_TESTS["test_loss_is_the_weighted_sum_of_the_method_objective_and_dimcl"]("plugged")
    with pytest.raises(AssertionError):
        SHARED_TESTS["test_two_views_compute_exactly_what_they_did_before_multi_crop"]("plugged", False)
