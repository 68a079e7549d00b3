"""The cosine schedule, the one formula behind every schedule in dimcl (learning rates, EMA momentum).

Per-step schedules are precomputed once (as DINO does), so that resuming at step k is just indexing.
This module imports nothing of dimcl: the training loop, the methods and the evaluations all read it.
"""

from __future__ import annotations

import math


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """``end + (start - end) · (1 + cos(π k / K)) / 2``: ``start`` at k = 0, ``end`` at k = K.

    ``k`` is clamped to ``[0, K]``; ``K <= 0`` gives ``end``. Used for the learning rate's decay (after
    its warm-up), the linear probe's learning rate (``end = 0``) and BYOL's / MoCo's EMA momentum
    (``start = base``, ``end = 1``).
    """
    if total_steps <= 0:
        return end
    step = min(max(step, 0), total_steps)
    return end + (start - end) * (1 + math.cos(math.pi * step / total_steps)) / 2


def warmup_cosine(
    base: float, total_steps: int, warmup_steps: int, start: float = 0.0, final: float = 0.0
) -> list[float]:
    """Linear warm-up from ``start`` to ``base`` over ``warmup_steps``, then :func:`cosine` from ``base`` to
    ``final`` over the remaining steps; one value per step."""
    warmup_steps = min(warmup_steps, total_steps)
    values = [start + (base - start) * k / warmup_steps for k in range(warmup_steps)]
    decay = total_steps - warmup_steps
    values += [cosine(k, decay, base, final) for k in range(decay)]
    return values
