"""kNN evaluation with a run's settings: of features, of a backbone on the run's splits, of a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dimcl.config import Config, ConfigError
from dimcl.data import run_splits
from dimcl.eval.features import cached_eval_features
from dimcl.eval.knn import extract_features, weighted_knn
from dimcl.run_dir import FEATURE_CACHE, KNN, write_result
from dimcl.trained import load_trained_backbone, run_dir_of


def knn_of_features(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    cfg: Config,
    num_classes: int,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Weighted kNN with the run's settings (cfg.eval.knn_k, cfg.eval.knn_temperature), on ``device``
    (default: where the features are)."""
    result = weighted_knn(
        train_features, train_labels, test_features, test_labels,
        k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature, num_classes=num_classes, device=device,
    )
    return {
        "knn_top1": result["top1"], "knn_top5": result["top5"], "k": cfg.eval.knn_k,
        "temperature": cfg.eval.knn_temperature, "bank_size": len(train_labels), "eval_size": len(test_labels),
    }


def knn_of_backbone(
    backbone: nn.Module,
    cfg: Config,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    datasets: tuple[Dataset, Dataset] | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Weighted kNN of ``backbone`` (already on ``device``) on the run's evaluation splits.

    ``datasets`` (bank, evaluation) default to ``run_splits(cfg).labelled()``.
    """
    splits = run_splits(cfg)
    bank_set, test_set = datasets if datasets is not None else splits.labelled()
    num_classes = num_classes or splits.num_classes(bank_set)
    if not num_classes:
        raise ConfigError(f"kNN needs class labels, and the '{cfg.data.name}' training split has none")
    loader_args = dict(batch_size=batch_size, num_workers=cfg.data.num_workers)
    train_features, train_labels = extract_features(backbone, DataLoader(bank_set, **loader_args), device)
    test_features, test_labels = extract_features(backbone, DataLoader(test_set, **loader_args), device)
    return knn_of_features(train_features, train_labels, test_features, test_labels, cfg, num_classes, device)


def knn_of_run(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """kNN of a run's backbone, on features cached in ``<run>/features`` (shared with ``dimcl linear``).

    The result is written to ``knn.json`` in the run directory too.
    """
    backbone, cfg = load_trained_backbone(path)
    backbone.to(device)
    run = run_dir_of(path)
    splits = run_splits(cfg)
    datasets = splits.labelled()
    num_classes = splits.num_classes(datasets[0])
    if not num_classes:
        raise ConfigError(f"kNN needs class labels, and the '{cfg.data.name}' training split has none")
    features = cached_eval_features(backbone, cfg, run / FEATURE_CACHE, device, datasets=datasets)
    result = knn_of_features(*features, cfg, num_classes, device)
    write_result(run, KNN, result)
    return result
