"""The report's t quantiles against an independent computation (mpmath, which torch's sympy brings)."""

from __future__ import annotations

import pytest

from dimcl.report.stats import _T_975, t_quantile_975

mpmath = pytest.importorskip("mpmath")  # a dependency of sympy, which torch requires


def _t_975(dof: int) -> float:
    """The 0.975 quantile of Student's t, from its CDF: 1 - I_{dof/(dof+t²)}(dof/2, 1/2) / 2 = 0.975."""
    mpmath.mp.dps = 30

    def upper_tail(t):
        return mpmath.betainc(dof / 2, mpmath.mpf(1) / 2, 0, dof / (dof + t * t), regularized=True) / 2 - 0.025

    return float(mpmath.findroot(upper_tail, 2.0 if dof > 2 else 5.0))


def test_every_tabulated_quantile_is_exact_to_its_nine_decimals():
    assert len(_T_975) == 30
    for dof in range(1, 31):
        assert abs(t_quantile_975(dof) - _t_975(dof)) < 6e-10, dof  # half a unit of the 9th decimal


def test_the_expansion_beyond_the_table_is_within_1e_7():
    for dof in (31, 35, 50, 100, 1000):
        assert abs(t_quantile_975(dof) - _t_975(dof)) < 1e-7, dof
