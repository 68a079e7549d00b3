"""The momentum schedule of BYOL and MoCo v2+: cosine from ``base`` (0.99) to ``final`` (1.0)."""

from __future__ import annotations

import math


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """τ_k = final - (final - base) · (cos(π k / K) + 1) / 2, as in BYOL; ``base`` at k = 0, ``final`` at k = K."""
    if total_steps <= 0:
        return final
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
