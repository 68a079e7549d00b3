"""The statistics of a report: mean and sample std over seeds, and the paired 95% t interval.

The t quantiles are tabulated (dof 1..30, 9 decimals) and extended by the Cornish-Fisher expansion, so
the report needs no scipy; tests/report/test_stats.py checks every tabulated value against an
independent computation.
"""

from __future__ import annotations

import math

# t(0.975, dof) for dof = 1..30: two-sided 95% quantiles of Student's t distribution.
_T_975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
    2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
    2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
    2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)
_Z_975 = 1.959963984540054


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (the 95% two-sided multiplier).

    Tabulated for 1..30; above, the Cornish-Fisher expansion around the normal quantile ``z``
    (Abramowitz & Stegun 26.7.5), within 1e-7 of the exact value for dof > 30.
    """
    if dof < 1:
        raise ValueError(f"t_quantile_975(): need at least 1 degree of freedom, got {dof}")
    if dof <= len(_T_975):
        return _T_975[dof - 1]
    z, n = _Z_975, float(dof)
    return (
        z
        + (z**3 + z) / (4 * n)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * n**4)
    )


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (divisor n - 1) of ``values``; the std is None for one value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std(): no values")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def paired_interval(differences: list[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean of paired differences and its 95% t interval ``mean ± t(0.975, n-1) sd / sqrt(n)``; None if n = 1."""
    mean, sd = mean_std(differences)
    if sd is None:
        return mean, None
    half = t_quantile_975(len(differences) - 1) * sd / math.sqrt(len(differences))
    return mean, (mean - half, mean + half)
