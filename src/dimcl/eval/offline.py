"""Evaluation of a finished (or interrupted) run directory: its backbone, rebuilt from what it saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dimcl.config import Config, ConfigError
from dimcl.eval.knn import extract_features, weighted_knn
from dimcl.run_dir import BACKBONE, CHECKPOINT, load_run_config
from dimcl.train.checkpoint import CheckpointError, load_backbone_weights, load_checkpoint
from dimcl.train.setup import build_backbone_from_config, build_eval_datasets, num_classes_of


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory, a checkpoint file, or a backbone file inside one."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    raise ConfigError(f"--ckpt '{path}' does not exist; give a run directory or a checkpoint file inside one")


def load_trained_backbone(path: str | Path) -> tuple[nn.Module, Config]:
    """The backbone of a run: from ``backbone.safetensors`` when exported, else from the last checkpoint."""
    run = run_dir_of(path)
    cfg = load_run_config(run)
    backbone = build_backbone_from_config(cfg)
    given = Path(path)
    weights_file = given if given.is_file() and given.suffix == ".safetensors" else run / BACKBONE
    if weights_file.is_file() and not (given.is_file() and given.suffix == ".ckpt"):
        tensors, _ = load_backbone_weights(weights_file)
    else:
        ckpt = given if given.is_file() and given.suffix == ".ckpt" else run / CHECKPOINT
        state = load_checkpoint(ckpt)
        prefix = "method.backbone."
        tensors = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        if not tensors:
            raise CheckpointError(f"'{ckpt}' holds no backbone weights (no keys under '{prefix}')")
    backbone.load_state_dict(tensors)
    return backbone, cfg


def knn_of_features(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    cfg: Config,
    num_classes: int,
) -> dict[str, Any]:
    """Weighted kNN with the run's settings (cfg.eval.knn_k, cfg.eval.knn_temperature)."""
    result = weighted_knn(
        train_features, train_labels, test_features, test_labels,
        k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature, num_classes=num_classes,
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

    ``datasets`` (bank, evaluation) default to :func:`build_eval_datasets` of ``cfg``.
    """
    bank_set, test_set = datasets if datasets is not None else build_eval_datasets(cfg)
    num_classes = num_classes or num_classes_of(cfg, bank_set)
    if not num_classes:
        raise ConfigError(f"kNN needs class labels, and the '{cfg.data.name}' training split has none")
    loader_args = dict(batch_size=batch_size, num_workers=cfg.data.num_workers)
    train_features, train_labels = extract_features(backbone, DataLoader(bank_set, **loader_args), device)
    test_features, test_labels = extract_features(backbone, DataLoader(test_set, **loader_args), device)
    return knn_of_features(train_features, train_labels, test_features, test_labels, cfg, num_classes)


def knn_of_run(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """kNN of a run's backbone, on features cached in ``<run>/features`` (shared with ``dimcl linear``).

    The result is written to ``knn.json`` in the run directory too.
    """
    from dimcl.eval.linear import cached_eval_features  # linear builds on this module

    backbone, cfg = load_trained_backbone(path)
    backbone.to(device)
    run = run_dir_of(path)
    datasets = build_eval_datasets(cfg)
    num_classes = num_classes_of(cfg, datasets[0])
    if not num_classes:
        raise ConfigError(f"kNN needs class labels, and the '{cfg.data.name}' training split has none")
    features = cached_eval_features(backbone, cfg, run / "features", device, datasets=datasets)
    result = knn_of_features(*features, cfg, num_classes)
    (run / "knn.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
