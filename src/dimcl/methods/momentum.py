"""The momentum schedule of BYOL and MoCo v2+: cosine from ``base`` (0.99) to ``final`` (1.0)."""

from __future__ import annotations

from dimcl.schedules import cosine


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """τ_k = final - (final - base) · (cos(π k / K) + 1) / 2, as in BYOL; ``base`` at k = 0, ``final`` at k = K."""
    return cosine(step, total_steps, base, final)
