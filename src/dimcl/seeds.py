"""How a run's seed becomes the seed of each epoch on each rank: shared by pretraining's sampling and
every training with labels (fine-tuning, the supervised reference)."""

from __future__ import annotations

#: the rank's share of an epoch's seed, 0 on rank 0. PyTorch's CPU generator (mt19937) keeps only the low
#: 32 bits of a seed, so the term must change those: rank · 0x9E3779B9 (2³² / golden ratio, odd) spreads the
#: ranks over the 32-bit seed space instead of a shift such as 2⁴⁰, which the generator would drop.
RANK_SEED_STRIDE = 0x9E3779B9


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: ``seed · 100003 + epoch + rank · 0x9E3779B9``.

    Rank 0's term is 0, so a single-process run draws exactly what it always drew.
    """
    return seed * 100_003 + epoch + rank * RANK_SEED_STRIDE
