"""Weighted k-nearest-neighbour evaluation of frozen features.

The protocol of Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR 2018), as solo-learn and lightly report it: with L2-normalised features,
each test sample's ``k`` most cosine-similar training samples vote for their labels with weight
``exp(sim / T)``, and the class with the largest summed weight is the prediction.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["extract_features", "weighted_knn"]


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
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "weighted_knn(): features must be (N, F) and (M, F) with the same F, got "
            f"train {tuple(train_features.shape)} and test {tuple(test_features.shape)}."
        )
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        raise ValueError(
            "weighted_knn(): need one label per sample, got "
            f"train_labels {tuple(train_labels.shape)} for {train_features.shape[0]} train features and "
            f"test_labels {tuple(test_labels.shape)} for {test_features.shape[0]} test features."
        )
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("weighted_knn(): the train and test sets must each hold at least one sample.")
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"weighted_knn(): need k >= 1, temperature > 0 and chunk_size >= 1, got k={k}, "
            f"temperature={temperature}, chunk_size={chunk_size}."
        )
    device = torch.device(device) if device is not None else train_features.device
    train_labels = train_labels.long().to(device)
    test_labels = test_labels.long().to(device)
    lowest = int(min(train_labels.min(), test_labels.min()))
    highest = int(max(train_labels.max(), test_labels.max()))
    if num_classes is None:
        num_classes = highest + 1
    if lowest < 0 or highest >= num_classes:
        raise ValueError(
            f"weighted_knn(): labels must lie in [0, num_classes) = [0, {num_classes}), "
            f"got labels from {lowest} to {highest}."
        )

    train_features = F.normalize(train_features.float().to(device), dim=1)
    test_features = F.normalize(test_features.float().to(device), dim=1)
    k = min(k, train_features.shape[0])
    top5 = min(5, num_classes)

    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, test_features.shape[0], chunk_size):
        similarity = test_features[start : start + chunk_size] @ train_features.T  # (m, N)
        neighbour_sim, neighbour_idx = similarity.topk(k, dim=1)  # (m, k)
        weights = (neighbour_sim / temperature).exp()
        scores = torch.zeros(similarity.shape[0], num_classes, device=similarity.device)
        scores.scatter_add_(1, train_labels[neighbour_idx], weights)  # (m, C)
        labels = test_labels[start : start + chunk_size]
        correct1 += (scores.argmax(dim=1) == labels).sum()
        # Rank by counting strictly better classes rather than with topk: when fewer than five
        # classes got a vote, topk would fill the list with zero-score classes in arbitrary order.
        true_score = scores.gather(1, labels[:, None])  # (m, 1)
        rank = (scores > true_score).sum(dim=1)
        correct5 += ((rank < top5) & (true_score[:, 0] > 0)).sum()
    total = test_features.shape[0]
    hits1, hits5 = torch.stack([correct1, correct5]).tolist()
    return {"top1": 100.0 * hits1 / total, "top5": 100.0 * hits5 / total}
