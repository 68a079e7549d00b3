"""Per-step schedules, precomputed once (as DINO does) so that resuming at step k is just indexing."""

from __future__ import annotations

import math


def warmup_cosine(
    base: float, total_steps: int, warmup_steps: int, start: float = 0.0, final: float = 0.0
) -> list[float]:
    """Linear warm-up from ``start`` to ``base`` over ``warmup_steps``, then cosine from ``base`` to ``final``."""
    warmup_steps = min(warmup_steps, total_steps)
    values = [start + (base - start) * k / warmup_steps for k in range(warmup_steps)]
    decay = total_steps - warmup_steps
    for k in range(decay):
        values.append(final + (base - final) * (1 + math.cos(math.pi * k / decay)) / 2)
    return values
