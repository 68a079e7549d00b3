"""kNN evaluation with a run's settings: of features, of a backbone on the run's splits, of a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dimcl.config import Config
from dimcl.data import run_splits
from dimcl.eval.evaluate import evaluate
from dimcl.eval.features import cached_eval_features
from dimcl.eval.knn import extract_features, weighted_knn
from dimcl.eval.registry import Column, Evaluation, RunToEvaluate, register
from dimcl.trained import load_trained_backbone


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
    num_classes = num_classes or splits.class_count(bank_set, "kNN")
    loader_args = dict(batch_size=batch_size, num_workers=cfg.data.num_workers)
    train_features, train_labels = extract_features(backbone, DataLoader(bank_set, **loader_args), device)
    test_features, test_labels = extract_features(backbone, DataLoader(test_set, **loader_args), device)
    return knn_of_features(train_features, train_labels, test_features, test_labels, cfg, num_classes, device)


def _knn_of_run(run: RunToEvaluate, device: str | torch.device = "cpu") -> dict[str, Any]:
    """kNN of a run's backbone, on features cached in ``<run>/features`` (shared with ``dimcl linear``)."""
    backbone, _ = load_trained_backbone(run.path)
    backbone.to(device)
    features = cached_eval_features(backbone, run.cfg, run.cache_dir, device, datasets=run.labelled)
    return knn_of_features(*features, run.cfg, run.num_classes, device)


KNN = register(Evaluation(
    name="knn",
    file="knn.json",
    order=10,
    help="weighted kNN top-1/top-5 of a run's backbone",
    description="Weighted kNN (k=eval.knn_k, T=eval.knn_temperature, cosine) of a trained backbone; prints JSON "
    "and writes knn.json into the run directory (or --out).",
    run=_knn_of_run,
    columns=(Column("knn_top1", "kNN top-1 (%)", 2, compared=True, per_epoch=True),),
    uses_run_dir=True,
))


def knn_of_run(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """kNN of a run's backbone (``path``: a run directory or a file inside one), also written to its
    ``knn.json``; :func:`dimcl.eval.evaluate.evaluate` with ``"knn"``."""
    return evaluate(KNN.name, path, device=device)
