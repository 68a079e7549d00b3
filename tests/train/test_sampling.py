"""Per-epoch, per-rank seeding and sharding of the pretraining data, and loader workers under signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import TINY_RUN, write_fashion_mnist
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import TensorDataset

from dimcl.data import dataset_info
from dimcl.data.in_memory import TensorImageDataset
from dimcl.data.view_config import byol_view_configs
from dimcl.data.views import MultiViewTransform, ViewTransform
from dimcl.run_dir import read_metrics
from dimcl.train.sampling import EpochFeed, PerImageSeeds, ShardedEpochSampler, epoch_seed, image_seed

DIMCL = str(Path(sys.executable).with_name("dimcl"))


def _draws(feed: EpochFeed, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the epoch's augmentations would draw: the global RNG (main-process / device views) and the
    loader's generator (the seeds of its worker processes)."""
    feed.begin_epoch(epoch)
    return torch.rand(4), torch.rand(4, generator=feed.generator)


def test_rank_zero_keeps_the_single_process_seeds_and_other_ranks_draw_differently():
    data = TensorDataset(torch.arange(64))
    one = EpochFeed(data, 8, 0, seed=3)
    # The seeds every single-process run so far has used: seed * 100003 + epoch.
    assert epoch_seed(3, 5) == epoch_seed(3, 5, rank=0) == 3 * 100_003 + 5
    torch.manual_seed(3 * 100_003 + 5)
    expected = torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(3 * 100_003 + 5))
    got = _draws(one, 5)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    rank0, rank1 = (EpochFeed(data, 8, 0, seed=3, world_size=2, rank=r) for r in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(_draws(rank0, 5), expected, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(_draws(rank1, 5), expected, strict=True))
    # ... and every rank replays its own draws when the epoch is begun again (a resume).
    assert all(torch.equal(a, b) for a, b in zip(_draws(rank1, 5), _draws(rank1, 5), strict=True))


def test_ranks_share_one_permutation_per_epoch_that_fabric_cannot_reset():
    data = TensorDataset(torch.arange(21))
    feeds = [EpochFeed(data, 2, 0, seed=1, world_size=2, rank=r) for r in (0, 1)]
    shares = []
    for feed in feeds:
        feed.begin_epoch(4)
        # What Lightning Fabric's loader wrapper does on every iter(): set_epoch(its own count).
        _set_sampler_epoch(feed.loader, 0)
        shares.append(list(feed.sampler))
    assert len(shares[0]) == len(shares[1]) == 10
    assert not set(shares[0]) & set(shares[1])  # disjoint, the odd image left out
    sampler = ShardedEpochSampler(data, 2, 0, seed=1)
    sampler.epoch = 4
    assert list(sampler) == shares[0]  # the epoch's order, whatever Fabric counted
    sampler.epoch = 5
    assert list(sampler) != shares[0]


def test_sigterm_to_the_process_group_spares_the_loader_workers(tmp_path):
    # 640 images, 40 steps per epoch: the signal lands mid-epoch with 2 workers loading.
    root = write_fashion_mnist(tmp_path / "data", n_train=640, n_test=32)
    run = tmp_path / "run"
    args = [DIMCL, "pretrain", "-c", "fashion_mnist/byol", "-o", str(run), f"data.root={root}", *TINY_RUN,
            "data.num_workers=2", "trainer.max_epochs=2", "eval.every=0", "eval.diagnose=false"]
    # A session of its own: the signal goes to the whole process group, as SLURM and `timeout` send it.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 1200
    while not read_metrics(run) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch, whose workers are loading
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err, err[-3000:]
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_the_rank_term_reaches_the_32_bits_the_cpu_generator_keeps():
    # torch.manual_seed(s) and manual_seed(s + 2**32) give the same stream: only the low 32 bits count.
    for rank in range(1, 64):
        assert (epoch_seed(0, 0, rank) - epoch_seed(0, 0)) % 2**32 != 0


def test_each_image_draws_its_views_from_its_own_seed():
    info = dataset_info("fashion_mnist")
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    views = MultiViewTransform([ViewTransform(v, info) for v in byol_view_configs(info)])
    seeded = PerImageSeeds(TensorImageDataset(images, None, views), seed=4)
    seeded.epoch = 2
    forward = [seeded[i][0] for i in range(6)]
    torch.manual_seed(123)  # the global generator plays no part
    backward = [seeded[i][0] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for f, g in zip(forward, backward, strict=True) for a, b in zip(f, g, strict=True))
    assert not torch.equal(forward[0][0], forward[0][1])  # the two views of an image differ
    seeded.epoch = 3
    assert not torch.equal(seeded[0][0][0], forward[0][0])  # and every epoch draws anew
    # the seeds of a run's (epoch, image) pairs are distinct in their 32 bits, those of other seeds too
    seeds = {image_seed(s, e, i) for s in (0, 1) for e in range(10) for i in range(1000)}
    assert len(seeds) > 19_990 and max(seeds) < 2**32


def test_results_do_not_depend_on_the_number_of_loader_workers(tiny_fashion_mnist, tmp_path):
    """0, 1 and 2 workers: the same losses and weights, to the bit (data.num_workers is a run-only key)."""
    from dimcl.recipes import load_config, resolve_recipe
    from dimcl.train.loop import pretrain

    results = []
    for workers in (0, 1, 2):
        cfg = load_config(resolve_recipe("fashion_mnist/byol"), [
            *TINY_RUN, f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1", "eval.every=0",
            f"data.num_workers={workers}",
        ])
        results.append(pretrain(cfg, tmp_path / f"w{workers}"))
    for other in results[1:]:
        assert other.records[0]["loss"] == results[0].records[0]["loss"]
        assert all(torch.equal(p, q) for p, q in zip(other.model.parameters(), results[0].model.parameters(),
                                                      strict=True))


def test_per_image_seeds_reach_spawned_workers():
    """A torch.Generator pickled into a spawned worker kills it (its state travels as a shared-memory tensor);
    `dimcl demo` runs its arms in spawned processes, whose loader workers are spawned too."""
    from torch.utils.data import DataLoader

    seeded = PerImageSeeds(TensorDataset(torch.arange(4)), seed=0)
    seeded[0]  # the generator exists in this process now
    batches = list(DataLoader(seeded, batch_size=2, num_workers=1, multiprocessing_context="spawn"))
    assert [b[0].tolist() for b in batches] == [[0, 1], [2, 3]]
