"""The pretraining data loader: which images each rank sees, and the seeds of every epoch.

Everything random in an epoch follows from ``(seed, epoch, global rank)``, so a run resumed at an
epoch boundary, in a fresh process, replays that epoch exactly as the uninterrupted run did:

- the order of the images: one permutation per epoch drawn from ``epoch_seed(seed, epoch)`` (the same
  on every rank), which each rank then takes every ``world_size``-th image of;
- the augmentations made by the loader: each image's from a generator of its own, seeded from
  ``image_seed(seed, epoch, index)`` (:class:`PerImageSeeds`), so they do not depend on which worker
  makes them, how many workers there are, or which rank (``data.num_workers`` is a run-only key);
- the augmentations made on the device (``data.augment_on=device``), and anything else drawn from the
  global torch RNG: seeded from ``epoch_seed(seed, epoch, rank)``, as is the loader's generator (the
  seeds of its worker processes), so the ranks draw different numbers from one another.

Lightning Fabric's dataloader wrapper calls ``sampler.set_epoch(n)`` with its own count of
``iter()`` calls, which restarts at 0 in a resumed process; :class:`ShardedEpochSampler` therefore
has no ``set_epoch`` and takes its epoch from :meth:`EpochFeed.begin_epoch` only.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import signal
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dimcl.data.views import drawing_from
from dimcl.seeds import epoch_seed

__all__ = ["EpochFeed", "PerImageSeeds", "ShardedEpochSampler", "epoch_seed", "image_seed"]


def image_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s augmentations in ``epoch``: (seed, epoch, index) mixed into 32 bits.

    PyTorch's CPU generator keeps a seed's low 32 bits only, so the three are combined into 64 bits and
    folded by splitmix64's finaliser (every input bit reaches every output bit). Two (epoch, image) pairs of
    a run share a seed with probability 2⁻³² (about 40 pairs of 600 000 draws, a 10-epoch Fashion-MNIST
    run): they then get the same augmentation parameters, which no statistic of a run can tell.
    """
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 31)) & 0xFFFFFFFF


class PerImageSeeds(Dataset):
    """``dataset`` whose item ``index`` is made drawing from a generator seeded by ``image_seed(seed, epoch,
    index)``: the same views whichever worker (or the main process) makes them. Set ``epoch`` before
    iterating (the workers take a copy of this object when an epoch's iteration starts)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self._generator: torch.Generator | None = None  # made where the items are, never pickled to a worker

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        if self._generator is None:
            self._generator = torch.Generator()
        self._generator.manual_seed(image_seed(self.seed, self.epoch, index))
        with drawing_from(self._generator):
            return self.dataset[index]

    def __getstate__(self) -> dict[str, Any]:
        # A generator's state pickles as a tensor, which a spawned worker receives through shared memory:
        # that failed ("unable to resize file ... Invalid argument") under the demo's spawned processes.
        return {**self.__dict__, "_generator": None}


class ShardedEpochSampler(Sampler[int]):
    """Rank ``rank``'s share of one permutation per epoch: ``perm[rank::world_size]``, ``size // world_size`` long.

    The permutation is drawn from ``epoch_seed(seed, epoch)``, the same on every rank, so the ranks'
    shares are disjoint. Set ``epoch`` before iterating (deliberately not ``set_epoch``: see the
    module docstring).
    """

    def __init__(self, dataset: Sized, world_size: int, rank: int, seed: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.size = len(dataset)
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        # Drop the tail so every rank gets the same number of images (the gathers need equal batches).
        kept = order[: len(self) * self.world_size]
        return iter(kept[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.size // self.world_size


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: loader workers ignore SIGTERM / SIGINT.

    A signal to the whole process group (SLURM preemption, ``timeout``, Ctrl-C) reaches the workers
    too; were they to die, the main process's next batch would raise before the loop could save. The
    main process handles the signal and shuts its workers down itself.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def kill_leftover_workers() -> None:
    """At exit: kill the loader workers still alive, which :func:`ignore_stop_signals` made deaf to SIGTERM.

    A loader whose iterator is not shut down before the interpreter exits (an exception re-raised from a
    worker keeps it alive in a reference cycle) leaves its workers to ``multiprocessing``'s exit handler,
    which terminates daemonic children with SIGTERM and then joins them: with SIGTERM ignored, that join
    waited for good (an unreadable image in a worker hung the run). Killing them is what that handler
    means to do; the run's files are closed by then. Registered after ``multiprocessing``'s own handler,
    so it runs first (``atexit`` runs handlers last-in, first-out). PyTorch's SIGCHLD handler, which
    raises when a worker dies while the loader iterates, is put back to the default first: raised in
    here it would stop the kills after the first worker, and the join of the next would hang as before.
    """
    leftover = [child for child in multiprocessing.active_children() if child.daemon]
    if not leftover:
        return
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in leftover:
        child.kill()
    for child in leftover:
        child.join(timeout=10)


@functools.cache
def _register_kill_at_exit() -> None:
    atexit.register(kill_leftover_workers)  # once, by the first loader that starts workers


class EpochFeed:
    """The pretraining :class:`DataLoader` and the per-epoch seeding that makes it replayable.

    One process: a shuffling loader over the whole set whose generator is reseeded every epoch.
    Several: each rank iterates its :class:`ShardedEpochSampler` share. Batches are ``batch_size``
    images, the last partial one dropped.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, num_workers: int, seed: int, world_size: int = 1, rank: int = 0,
        pin_memory: bool = False,
    ):
        self.seed = seed
        self.rank = rank
        if num_workers > 0:
            _register_kill_at_exit()
        dataset = self.dataset = PerImageSeeds(dataset, seed)
        self.generator = torch.Generator()
        self.sampler = ShardedEpochSampler(dataset, world_size, rank, seed) if world_size > 1 else None
        # Workers are not persistent: they are started every epoch with seeds from that epoch's generator,
        # which is what lets a resumed run replay the epoch (persistent workers keep their first seeds).
        self.loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=self.sampler is None, sampler=self.sampler, drop_last=True,
            num_workers=num_workers, generator=self.generator, pin_memory=pin_memory, persistent_workers=False,
            worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        )

    def begin_epoch(self, epoch: int) -> None:
        """Seed everything random in ``epoch`` from ``(seed, epoch, rank)`` (call before iterating)."""
        torch.manual_seed(epoch_seed(self.seed, epoch, self.rank))
        self.generator.manual_seed(epoch_seed(self.seed, epoch, self.rank))
        self.dataset.epoch = epoch
        if self.sampler is not None:
            self.sampler.epoch = epoch
