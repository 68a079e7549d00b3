"""A real 2-process gloo run of the sharded kNN: each rank holds a shard of the bank and of the test set,
and every rank's figure equals single-process ``weighted_knn`` on the whole of both."""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dimcl.distributed import gather_unequal
from dimcl.eval.knn import weighted_knn, weighted_knn_across_ranks

WORLD = 2
BANK, TEST, DIM, CLASSES = 301, 97, 16, 10  # neither size divides by 2


def _problem():
    """Noisy float32 clusters (accuracy strictly between chance and 100, so a wrong vote shows), with seed 5:
    its near-ties are far from what float32 could reorder (see test_the_features_have_no_near_ties)."""
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(CLASSES, DIM, generator=g)
    bank_y, test_y = torch.randint(CLASSES, (BANK,), generator=g), torch.randint(CLASSES, (TEST,), generator=g)
    bank_x = centres[bank_y] + 1.5 * torch.randn(BANK, DIM, generator=g)
    test_x = centres[test_y] + 1.5 * torch.randn(TEST, DIM, generator=g)
    return bank_x, bank_y, test_x, test_y


def _contiguous(n: int, first: int) -> list[torch.Tensor]:
    return [torch.arange(first), torch.arange(first, n)]


#: name -> (k, temperature, chunk_size, the bank's shards, the test set's shards): index tensors per rank
CASES = {
    # k above both shards (150 and 151 images): every query's neighbours come from both ranks
    "contiguous, k above a shard": (200, 0.07, 1024, _contiguous(BANK, 150), _contiguous(TEST, 48)),
    "strided, k=5, chunks of 16": (5, 0.07, 16, [torch.arange(r, BANK, 2) for r in range(2)],
                                   [torch.arange(r, TEST, 2) for r in range(2)]),
    "strided, k=1, T=0.5": (1, 0.5, 1024, [torch.arange(r, BANK, 2) for r in range(2)],
                            [torch.arange(r, TEST, 2) for r in range(2)]),
    # rank 0: 100 bank images (under k) and no test image at all
    "lopsided, an empty test shard": (120, 0.07, 32, _contiguous(BANK, 100), _contiguous(TEST, 0)),
    # k above the whole bank: clipped to it, as in one process
    "k above the bank": (400, 0.1, 1024, _contiguous(BANK, 150), _contiguous(TEST, 48)),
}


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    bank_x, bank_y, test_x, test_y = _problem()
    results = {}
    for name, (k, temperature, chunk_size, bank_shards, test_shards) in CASES.items():
        mine, tested = bank_shards[rank], test_shards[rank]
        results[name] = weighted_knn_across_ranks(
            bank_x[mine], bank_y[mine], test_x[tested], test_y[tested],
            k=k, temperature=temperature, num_classes=CLASSES, chunk_size=chunk_size,
        )
    # unequal lengths (3 rows and 2), in rank order, no padding rows left
    results["gathered"] = gather_unequal(torch.arange(6.0).view(3, 2)[rank:] + 10 * rank)
    try:  # a bad label on rank 1 only: both ranks refuse (rank 0 names rank 1), neither hangs
        weighted_knn_across_ranks(bank_x[:5], bank_y[:5] + 10 * rank, test_x[:5], test_y[:5], num_classes=CLASSES)
    except ValueError as err:
        results["refused"] = str(err)
    try:  # a label short on rank 1: rank 1 names its shapes, rank 0 names rank 1
        weighted_knn_across_ranks(bank_x[:5], bank_y[: 5 - rank], test_x[:5], test_y[:5], num_classes=CLASSES)
    except ValueError as err:
        results["malformed"] = str(err)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # see tests/test_distributed.py: gloo's threads can abort an interpreter's shutdown


@pytest.fixture(scope="module")
def ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_knn_equals_one_process_on_the_whole_sets(ranks, name):
    """Equal, not close: hits are integer counts, and both paths vote with the same function on the same
    neighbours' float32 similarities. Why float32 cannot move a count here: see the next test."""
    k, temperature, chunk_size, _, _ = CASES[name]
    bank_x, bank_y, test_x, test_y = _problem()
    want = weighted_knn(bank_x, bank_y, test_x, test_y, k=k, temperature=temperature, num_classes=CLASSES,
                        chunk_size=chunk_size)
    assert 10.0 < want["top1"] < 100.0 and want["top1"] <= want["top5"]
    for result in ranks:
        assert result[name] == want  # top-1 and top-5, on every rank


def test_a_shard_alone_gives_another_figure():
    """The guard that the comparison means something: rank 0's bank shard alone (what a kNN without the
    merge would score) is off the whole bank's figure."""
    k, temperature, _, bank_shards, _ = CASES["contiguous, k above a shard"]
    bank_x, bank_y, test_x, test_y = _problem()
    whole = weighted_knn(bank_x, bank_y, test_x, test_y, k=k, temperature=temperature, num_classes=CLASSES)
    shard = bank_shards[0]
    assert weighted_knn(bank_x[shard], bank_y[shard], test_x, test_y, k=k, temperature=temperature,
                        num_classes=CLASSES) != whole


#: What float32 can change. A cosine similarity of two unit 16-vectors summed in another order (the ranks'
#: matrix products have other widths than one process's, so BLAS may block them otherwise) moves by at
#: most ~ DIM * 2**-24 ≈ 1e-6, plus a few ulps of the normalisation: ≤ 2e-6 each, so the two paths' values
#: of one similarity differ by ≤ 4e-6. That can swap the k-th and (k+1)-th neighbours only if their
#: similarities are closer than that, and it moves a weight exp(s / T) by ≤ 4e-6 / T relative (6e-5 at
#: T = 0.07) and a class score, a sum of ≤ k = 301 of them, by another ≤ 301 * 2**-24 ≈ 2e-5: a
#: prediction or top-5 rank can change only if two class scores are within ~1e-4 relative.
SIMILARITY_GAP, SCORE_GAP = 1e-5, 1e-4


def _margins(k: int, temperature: float) -> tuple[float, float]:
    """(the smallest gap between a test sample's k-th and (k+1)-th similarity, the smallest relative gap
    between two class scores that the vote compares), in float64."""
    bank_x, bank_y, test_x, test_y = _problem()
    similarity = F.normalize(test_x.double(), dim=1) @ F.normalize(bank_x.double(), dim=1).T
    ordered, index = similarity.sort(dim=1, descending=True)
    k = min(k, BANK)
    gap = (ordered[:, k - 1] - ordered[:, k]).min().item() if k < BANK else math.inf
    scores = torch.zeros(TEST, CLASSES, dtype=torch.float64)
    scores.scatter_add_(1, bank_y[index[:, :k]], (ordered[:, :k] / temperature).exp())
    relative = math.inf
    for row, label in zip(scores.tolist(), test_y.tolist(), strict=True):
        first, second = sorted(row, reverse=True)[:2]
        compared = [(first, second)] if second > 0 else []  # the argmax
        if row[label] > 0:  # the top-5 rank: the true class against every other class with a vote
            compared += [(score, row[label]) for c, score in enumerate(row) if c != label and score > 0]
        relative = min([relative, *(abs(a - b) / max(a, b) for a, b in compared)])
    return gap, relative


@pytest.mark.parametrize("name", list(CASES))
def test_the_features_have_no_near_ties(name):
    """Why the comparison above can ask for equality: these features' margins are well above what float32
    could reorder (SIMILARITY_GAP, SCORE_GAP). Zero scores (classes without a vote) are exact in any order."""
    k, temperature, *_ = CASES[name]
    gap, relative = _margins(k, temperature)
    assert gap > SIMILARITY_GAP and relative > SCORE_GAP


def test_gather_of_unequal_lengths_keeps_rank_order_and_drops_the_padding(ranks):
    want = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [12.0, 13.0], [14.0, 15.0]])
    for result in ranks:
        assert torch.equal(result["gathered"], want)


def test_bad_input_on_one_rank_is_refused_on_every_rank(ranks):
    assert "labels must lie in [0, num_classes) = [0, 10)" in ranks[0]["refused"]
    assert ranks[0]["refused"] == ranks[1]["refused"]
    assert "need one label per sample, got train_labels (4,) for 5 train features" in ranks[1]["malformed"]
    assert "the shards of rank(s) [1] are malformed" in ranks[0]["malformed"]


def test_without_a_process_group_it_is_weighted_knn():
    bank_x, bank_y, test_x, test_y = _problem()
    assert weighted_knn_across_ranks(bank_x, bank_y, test_x, test_y, k=20) == weighted_knn(
        bank_x, bank_y, test_x, test_y, k=20)
