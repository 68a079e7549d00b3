"""kNN evaluation with a run's settings: of features, of a backbone on the run's splits, of a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from dimcl.config import Config
from dimcl.data import run_splits
from dimcl.distributed import is_distributed, rank, world_size
from dimcl.eval.evaluate import evaluate
from dimcl.eval.features import cached_eval_features
from dimcl.eval.knn import extract_features, weighted_knn, weighted_knn_across_ranks
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
    return _knn_result(result, cfg, len(train_labels), len(test_labels))


def _knn_result(result: dict[str, float], cfg: Config, bank_size: int, eval_size: int) -> dict[str, Any]:
    return {
        "knn_top1": result["top1"], "knn_top5": result["top5"], "k": cfg.eval.knn_k,
        "temperature": cfg.eval.knn_temperature, "bank_size": bank_size, "eval_size": eval_size,
    }


def knn_of_backbone(
    backbone: nn.Module,
    cfg: Config,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    datasets: tuple[Dataset, Dataset] | None = None,
    num_classes: int | None = None,
    *,
    across_ranks: bool = False,
) -> dict[str, Any]:
    """Weighted kNN of ``backbone`` (already on ``device``) on the run's evaluation splits.

    ``datasets`` (bank, evaluation) default to ``run_splits(cfg).labelled()``.
    ``across_ranks``: in a process group of several ranks, every rank calls this with the same backbone
    (buffers included) and datasets; each extracts the features of its own contiguous shard of both sets
    and takes part in :func:`~dimcl.eval.knn.weighted_knn_across_ranks`, and every rank returns the
    figure one process would. Otherwise, and always in a single process, this process extracts everything.
    """
    splits = run_splits(cfg)
    bank_set, test_set = datasets if datasets is not None else splits.labelled()
    num_classes = num_classes or splits.class_count(bank_set, "kNN")
    loader_args = dict(batch_size=batch_size, num_workers=cfg.data.num_workers)
    # A set with fewer images than ranks (a test's, say) is not worth sharding: every rank takes all of it.
    if across_ranks and is_distributed() and min(len(bank_set), len(test_set)) >= world_size():
        bank = extract_features(backbone, DataLoader(_own_shard(bank_set), **loader_args), device)
        tested = extract_features(backbone, DataLoader(_own_shard(test_set), **loader_args), device)
        result = weighted_knn_across_ranks(*bank, *tested, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature,
                                           num_classes=num_classes, device=device)
        return _knn_result(result, cfg, len(bank_set), len(test_set))
    train_features, train_labels = extract_features(backbone, DataLoader(bank_set, **loader_args), device)
    test_features, test_labels = extract_features(backbone, DataLoader(test_set, **loader_args), device)
    return knn_of_features(train_features, train_labels, test_features, test_labels, cfg, num_classes, device)


def _own_shard(dataset: Dataset) -> Subset:
    """This rank's contiguous share of ``dataset``: rank r of W takes ``[r * n // W, (r + 1) * n // W)``,
    so every image is on exactly one rank (no padding, no repeats)."""
    n, r, w = len(dataset), rank(), world_size()
    return Subset(dataset, range(r * n // w, (r + 1) * n // w))


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
