"""Weighted k-nearest-neighbour evaluation of frozen features.

The protocol of Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR 2018), as solo-learn and lightly report it: with L2-normalised features,
each test sample's ``k`` most cosine-similar training samples vote for their labels with weight
``exp(sim / T)``, and the class with the largest summed weight is the prediction.

:func:`weighted_knn` runs in one process; :func:`weighted_knn_across_ranks` is the same figure when
every rank of a process group holds a shard of the bank and of the test set. Both find each test
sample's neighbours their own way and hand them to one vote, :func:`_count_hits`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimcl.distributed import gather_no_grad, gather_unequal, is_distributed

__all__ = ["extract_features", "weighted_knn", "weighted_knn_across_ranks"]


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader: Iterable, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Run ``backbone`` over ``loader`` (yielding ``(images, labels)``) in eval mode.

    Returns ``(features, labels)`` on the CPU: ``(N, F)`` float32 and ``(N,)`` int64. The backbone
    is put in eval mode (BatchNorm must use its running statistics, not the test batch's) and
    given back in the mode it came in.
    """
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for images, targets in loader:
            out = backbone(images.to(device, non_blocking=True))
            features.append(out.float().cpu())
            labels.append(torch.as_tensor(targets).long().cpu())
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("extract_features(): the loader yielded no batches; an evaluation set cannot be empty.")
    return torch.cat(features), torch.cat(labels)


def _shape_problem(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor
) -> str | None:
    """What is wrong with the shapes of a kNN's inputs, or None."""
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        return (
            "features must be (N, F) and (M, F) with the same F, got "
            f"train {tuple(train_features.shape)} and test {tuple(test_features.shape)}."
        )
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        return (
            "need one label per sample, got "
            f"train_labels {tuple(train_labels.shape)} for {train_features.shape[0]} train features and "
            f"test_labels {tuple(test_labels.shape)} for {test_features.shape[0]} test features."
        )
    return None


def _check_settings(name: str, k: int, temperature: float, chunk_size: int) -> None:
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"{name}(): need k >= 1, temperature > 0 and chunk_size >= 1, got k={k}, "
            f"temperature={temperature}, chunk_size={chunk_size}."
        )


def _check_labels(name: str, lowest: int, highest: int, num_classes: int) -> None:
    if lowest < 0 or highest >= num_classes:
        raise ValueError(
            f"{name}(): labels must lie in [0, num_classes) = [0, {num_classes}), "
            f"got labels from {lowest} to {highest}."
        )


def _count_hits(
    neighbour_sim: Tensor, neighbour_labels: Tensor, labels: Tensor, temperature: float, num_classes: int
) -> tuple[Tensor, Tensor]:
    """The vote: top-1 and top-5 hit counts (0-dim int64 tensors, left on the device) of ``m`` test samples.

    ``neighbour_sim (m, k)``: each sample's neighbours' cosine similarities, in descending order;
    ``neighbour_labels (m, k)``: their labels; ``labels (m,)``: the samples' own.
    """
    weights = (neighbour_sim / temperature).exp()
    scores = torch.zeros(neighbour_sim.shape[0], num_classes, device=neighbour_sim.device)
    scores.scatter_add_(1, neighbour_labels, weights)  # (m, C)
    correct1 = (scores.argmax(dim=1) == labels).sum()
    # Rank by counting strictly better classes rather than with topk: when fewer than five
    # classes got a vote, topk would fill the list with zero-score classes in arbitrary order.
    true_score = scores.gather(1, labels[:, None])  # (m, 1)
    rank = (scores > true_score).sum(dim=1)
    correct5 = ((rank < min(5, num_classes)) & (true_score[:, 0] > 0)).sum()
    return correct1, correct5


@torch.no_grad()
def weighted_knn(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of the temperature-weighted kNN classifier.

    Shapes: ``train_features (N, F)``, ``train_labels (N,)``, ``test_features (M, F)``,
    ``test_labels (M,)``. For a test sample with neighbours ``j`` (its top-``min(k, N)`` by cosine
    similarity ``s_j``), the score of class ``c`` is ``sum_j exp(s_j / T) * [y_j = c]`` and the
    prediction is its argmax (the lowest class index on an exact tie). Top-5 counts a hit when the
    true class got at least one vote and fewer than ``min(5, num_classes)`` classes score higher,
    so classes without votes never fill the list. ``num_classes`` defaults to one more than the
    largest label seen.
    Test samples are processed ``chunk_size`` at a time, so memory stays at ``chunk_size x N``.
    Everything runs on ``device`` (default: where ``train_features`` are), the similarity's top-k
    included, and the hit counts stay there until the end: one device-to-host read per call.
    """
    problem = _shape_problem(train_features, train_labels, test_features, test_labels)
    if problem is not None:
        raise ValueError(f"weighted_knn(): {problem}")
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("weighted_knn(): the train and test sets must each hold at least one sample.")
    _check_settings("weighted_knn", k, temperature, chunk_size)
    device = torch.device(device) if device is not None else train_features.device
    train_labels = train_labels.long().to(device)
    test_labels = test_labels.long().to(device)
    lowest = int(min(train_labels.min(), test_labels.min()))
    highest = int(max(train_labels.max(), test_labels.max()))
    if num_classes is None:
        num_classes = highest + 1
    _check_labels("weighted_knn", lowest, highest, num_classes)

    train_features = F.normalize(train_features.float().to(device), dim=1)
    test_features = F.normalize(test_features.float().to(device), dim=1)
    k = min(k, train_features.shape[0])

    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, test_features.shape[0], chunk_size):
        similarity = test_features[start : start + chunk_size] @ train_features.T  # (m, N)
        neighbour_sim, neighbour_idx = similarity.topk(k, dim=1)  # (m, k)
        hits1, hits5 = _count_hits(neighbour_sim, train_labels[neighbour_idx], test_labels[start : start + chunk_size],
                                   temperature, num_classes)
        correct1 += hits1
        correct5 += hits5
    total = test_features.shape[0]
    hits1, hits5 = torch.stack([correct1, correct5]).tolist()
    return {"top1": 100.0 * hits1 / total, "top5": 100.0 * hits5 / total}


#: what each rank tells the others about its shards before the kNN, one int64 per entry
_SHARD_FACTS = ("bank_size", "test_size", "bank_dim", "test_dim", "lowest_label", "highest_label", "malformed")


def _shard_facts(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 problem: str | None, device: torch.device) -> list[dict[str, int]]:
    """Every rank's :data:`_SHARD_FACTS`, in rank order (one all-gather), so that every rank refuses
    the same bad input (a refusal on one rank alone would leave the others waiting in a collective)."""
    labels = torch.cat([train_labels.reshape(-1), test_labels.reshape(-1)]).long()
    mine = [
        len(train_features), len(test_features), train_features.shape[-1] if train_features.ndim else 0,
        test_features.shape[-1] if test_features.ndim else 0,
        int(labels.min()) if labels.numel() else 2**62, int(labels.max()) if labels.numel() else -1,
        problem is not None,
    ]
    everyone = gather_no_grad(torch.tensor([mine], dtype=torch.long, device=device)).tolist()
    return [dict(zip(_SHARD_FACTS, facts, strict=True)) for facts in everyone]


def _shard_candidates(queries: Tensor, bank: Tensor, bank_labels: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """This rank's neighbour candidates of ``queries (m, F)`` in its ``bank (n, F)``: the top-``min(width, n)``
    similarities and their labels, each ``(m, width)``, filled up with similarity -inf (never among the
    merged top-k: the ranks together offer at least k real candidates) when the shard is smaller."""
    similarity = queries @ bank.T  # (m, n)
    sim, idx = similarity.topk(min(width, bank.shape[0]), dim=1)
    labels = bank_labels[idx]
    missing = width - sim.shape[1]
    if missing:
        sim = torch.cat([sim, sim.new_full((sim.shape[0], missing), float("-inf"))], dim=1)
        labels = torch.cat([labels, labels.new_zeros((labels.shape[0], missing))], dim=1)
    return sim, labels


def _side_by_side(per_rank: Tensor, world: int) -> Tensor:
    """``(world * m, w)`` gathered rows of every rank -> ``(m, world * w)``: row ``i`` holds every rank's row ``i``."""
    rows = per_rank.shape[0] // world
    return per_rank.view(world, rows, -1).transpose(0, 1).reshape(rows, -1)


@torch.no_grad()
def weighted_knn_across_ranks(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """:func:`weighted_knn` of the shards of every rank of the process group, put together; called by
    every rank, each with its own shards (``train_features (N_r, F)``, ``test_features (M_r, F)``, any
    sizes, empty ones included, no sample on two ranks). Every rank returns the figure that
    :func:`weighted_knn` gives on the concatenated shards. Without a process group of several ranks it
    is :func:`weighted_knn`.

    How: the test features are all-gathered (``M x F``, the small side); for ``chunk_size`` of them at a
    time each rank finds their top-``min(k, N)`` neighbours in its bank shard (similarities and labels),
    those ``(m, k)`` candidates are all-gathered, and the top-``k`` of a sample's ``world x k``
    candidates are its global top-``k`` (each of those is in its own shard's top-``k``). They vote with
    :func:`_count_hits`, with the same similarities as in :func:`weighted_knn`, so the figure is the
    same. Memory per rank: ``chunk_size x N_r`` similarities and the ``M x F`` test features.
    """
    if not is_distributed():
        return weighted_knn(train_features, train_labels, test_features, test_labels, k=k, temperature=temperature,
                            num_classes=num_classes, chunk_size=chunk_size, device=device)
    name = "weighted_knn_across_ranks"
    _check_settings(name, k, temperature, chunk_size)
    device = torch.device(device) if device is not None else train_features.device
    problem = _shape_problem(train_features, train_labels, test_features, test_labels)
    ranks = _shard_facts(train_features, train_labels, test_features, test_labels, problem, device)
    if problem is not None:
        raise ValueError(f"{name}(): {problem}")
    malformed = [r for r, facts in enumerate(ranks) if facts["malformed"]]
    if malformed:
        raise ValueError(f"{name}(): the shards of rank(s) {malformed} are malformed (that rank names the problem).")
    dims = {facts[key] for facts in ranks for key in ("bank_dim", "test_dim")}
    if len(dims) > 1:
        raise ValueError(f"{name}(): every rank's features must have the same F, got {sorted(dims)} across ranks.")
    bank_sizes = [facts["bank_size"] for facts in ranks]
    total_bank, total_test = sum(bank_sizes), sum(facts["test_size"] for facts in ranks)
    if total_bank == 0 or total_test == 0:
        raise ValueError(f"{name}(): the train and test sets must each hold at least one sample (on all ranks).")
    lowest = min(facts["lowest_label"] for facts in ranks)
    highest = max(facts["highest_label"] for facts in ranks)
    if num_classes is None:
        num_classes = highest + 1
    _check_labels(name, lowest, highest, num_classes)

    bank = F.normalize(train_features.float().to(device), dim=1)
    bank_labels = train_labels.long().to(device)
    queries = F.normalize(gather_unequal(test_features.float().to(device)), dim=1)  # (M, F), every rank's
    query_labels = gather_unequal(test_labels.long().to(device))
    k = min(k, total_bank)
    width = min(k, max(bank_sizes))  # candidates per rank: no shard offers more than its size
    world = len(ranks)

    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, total_test, chunk_size):
        sim, labels = _shard_candidates(queries[start : start + chunk_size], bank, bank_labels, width)
        sim = _side_by_side(gather_no_grad(sim), world)  # (m, world * width)
        labels = _side_by_side(gather_no_grad(labels), world)
        neighbour_sim, pick = sim.topk(k, dim=1)  # (m, k), descending as in weighted_knn
        hits1, hits5 = _count_hits(neighbour_sim, labels.gather(1, pick), query_labels[start : start + chunk_size],
                                   temperature, num_classes)
        correct1 += hits1
        correct5 += hits5
    hits1, hits5 = torch.stack([correct1, correct5]).tolist()
    return {"top1": 100.0 * hits1 / total_test, "top5": 100.0 * hits5 / total_test}
