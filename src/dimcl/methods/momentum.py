"""The momentum schedule of BYOL and MoCo v2+: cosine from ``base`` (0.99) to ``final`` (1.0)."""

from __future__ import annotations

from dimcl.schedules import cosine


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """BYOL's momentum schedule, ``τ_k = final - (final - base) · (cos(π k / K) + 1) / 2``.

    Args:
        step: k, the optimizer steps taken.
        total_steps: K, the steps of the whole run.
        base: τ at k = 0.
        final: τ at k = K.

    Returns:
        τ_k, the momentum of step k.
    """
    return cosine(step, total_steps, base, final)
