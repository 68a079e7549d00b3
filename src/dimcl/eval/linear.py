"""Linear evaluation of a frozen backbone: a linear classifier on top of its features.

Two protocols:

- ``fast`` (the default): features of the un-augmented images are extracted once and cached on disk
  (:mod:`dimcl.eval.features`, shared with kNN). They are standardised with the training set's mean and
  std, and a zero-initialised ``Linear(F, C)`` is trained on them with cross-entropy, SGD (momentum
  0.9) and a per-step cosine learning rate from ``lr`` to 0, in shuffled mini-batches. The problem is
  convex, so it depends little on the optimizer; standardising makes one learning rate fit every
  backbone. Seconds for CIFAR-sized feature sets, even on a CPU.
- ``augmented`` (:func:`augmented_linear_eval`): the usual 100-epoch protocol of the SSL literature
  (e.g. solo-learn's linear evaluation): every epoch sees new random-resized crops and flips of the
  training images, pushed through the frozen backbone in eval mode; a ``BatchNorm1d(affine=False)``
  (as in MAE's linear probe, He et al. 2022) followed by ``Linear(F, C)`` is trained with SGD, momentum
  0.9 and a cosine schedule. It runs the backbone every step, so it is meant for GPUs.

Both report top-1 and top-5 accuracy (percent) on the un-augmented evaluation split.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from dimcl.config import Config, ConfigError
from dimcl.data import RunSplits, build_view_transform, run_splits
from dimcl.data.label_budget import LABELS_SEED, budget_record, few_label_indices, parse_label_budget
from dimcl.data.view_config import crop_and_flip_view
from dimcl.eval.evaluate import evaluate
from dimcl.eval.features import cached_eval_features
from dimcl.eval.knn import extract_features
from dimcl.eval.registry import Column, Evaluation, RunToEvaluate, labels_variant, register
from dimcl.schedules import cosine
from dimcl.trained import load_trained_backbone

__all__ = [
    "augmented_linear_eval",
    "linear_of_run",
    "train_linear_probe",
]

#: settings of the two protocols (besides epochs and seed), the defaults of their functions
FAST = {"lr": 0.1, "weight_decay": 1e-4, "batch_size": 256}
AUGMENTED = {"lr": 0.1, "weight_decay": 0.0, "batch_size": 256}


# ------------------------------------------------------------------------------------------- features


# --------------------------------------------------------------------------------------- fast protocol


@torch.no_grad()
def accuracy(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """Top-1 and top-min(5, C) accuracy in percent; ``logits (N, C)``, ``labels (N,)``."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, k)
    hits = top == labels[:, None]
    n = labels.shape[0]
    return 100.0 * int(hits[:, 0].sum()) / n, 100.0 * int(hits.any(dim=1).sum()) / n


def _labelled(features: Tensor, labels: Tensor, num_classes: int, split: str) -> tuple[Tensor, Tensor]:
    """Drop unlabelled samples (label -1); refuse labels outside ``[0, num_classes)``."""
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"train_linear_probe(): {split} features must be (N, F) with one label each, got features "
            f"{tuple(features.shape)} and labels {tuple(labels.shape)}"
        )
    keep = labels >= 0
    features, labels = features[keep], labels[keep].long()
    if features.shape[0] == 0:
        raise ValueError(f"train_linear_probe(): the {split} set has no labelled sample")
    if int(labels.max()) >= num_classes:
        raise ValueError(
            f"train_linear_probe(): {split} labels must lie in [0, {num_classes}), got up to {int(labels.max())}"
        )
    return features, labels


def train_linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = FAST["lr"],
    weight_decay: float = FAST["weight_decay"],
    batch_size: int = FAST["batch_size"],
    seed: int = 0,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) of a linear classifier trained on frozen features.

    Shapes: ``train_feats (N, F)``, ``train_labels (N,)``, ``test_feats (M, F)``, ``test_labels (M,)``;
    unlabelled training samples (label -1) are left out. Every feature is standardised with the
    training set's statistics, ``x' = (x - mean_train) / std_train``; then ``W x' + b`` (zero-initialised)
    minimises cross-entropy + ``weight_decay/2 * |W|^2`` with SGD, momentum 0.9, batches of
    ``batch_size`` in an order drawn from ``seed``, and the rate ``lr * (1 + cos(pi t / T)) / 2`` at
    step ``t`` of ``T``. Runs on the device of ``train_feats``; the same seed gives the same result.
    Returns ``top1``, ``top5`` (test) and ``train_top1``.
    """
    if epochs < 1 or lr <= 0 or weight_decay < 0 or batch_size < 1 or num_classes < 2:
        raise ValueError(
            "train_linear_probe(): need epochs >= 1, lr > 0, weight_decay >= 0, batch_size >= 1 and "
            f"num_classes >= 2, got epochs={epochs}, lr={lr}, weight_decay={weight_decay}, "
            f"batch_size={batch_size}, num_classes={num_classes}"
        )
    device = train_feats.device
    train_feats, train_labels = _labelled(train_feats, train_labels.to(device), num_classes, "train")
    test_feats, test_labels = _labelled(test_feats.to(device), test_labels.to(device), num_classes, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"train_linear_probe(): train and test features differ in width: {train_feats.shape[1]} and "
            f"{test_feats.shape[1]}"
        )
    # Statistics in float64: large feature sets in float32 lose digits in the sums.
    mean = train_feats.double().mean(dim=0)
    std = train_feats.double().std(dim=0, unbiased=False).clamp_min(1e-6)  # constant dims stay 0
    train_x = ((train_feats.double() - mean) / std).float()
    test_x = ((test_feats.double() - mean) / std).float()

    classifier = nn.Linear(train_x.shape[1], num_classes).to(device)
    nn.init.zeros_(classifier.weight)  # convex problem: zeros is a fine, and seed-free, start
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            for group in optimizer.param_groups:
                group["lr"] = cosine(step, total, lr, 0.0)
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(train_x[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1

    with torch.no_grad():
        top1, top5 = accuracy(classifier(test_x), test_labels)
        train_top1, _ = accuracy(classifier(train_x), train_labels)
    return {"top1": top1, "top5": top5, "train_top1": train_top1}


# ---------------------------------------------------------------------------------- augmented protocol


def augmented_train_set(splits: RunSplits, indices: list[int] | None = None) -> Dataset:
    """The labelled training split (``data.eval_subset`` as in ``splits.labelled()``; only ``indices`` of it
    when given: a few-label subset) with a random-resized crop (scale 0.08-1) and a horizontal flip, the
    evaluation-time augmentations of the augmented linear probe and of fine-tuning."""
    view = crop_and_flip_view(splits.crop_size, (0.08, 1.0))
    # The same images (validation hold-out, seeded subset) as the evaluation splits, so both protocols agree.
    train = splits.labelled(build_view_transform(view, splits.transform_info))[0]
    return train if indices is None else Subset(train, indices)


def augmented_linear_eval(
    backbone: nn.Module,
    cfg: Config,
    device: str | torch.device = "cpu",
    *,
    epochs: int = 100,
    lr: float = AUGMENTED["lr"],
    weight_decay: float = AUGMENTED["weight_decay"],
    batch_size: int = AUGMENTED["batch_size"],
    seed: int = 0,
    splits: RunSplits | None = None,
    indices: list[int] | None = None,
) -> dict[str, float]:
    """The standard linear evaluation on augmented images (see the module docstring).

    The backbone stays frozen and in eval mode (its BatchNorm statistics are not updated); only
    ``BatchNorm1d(F, affine=False) -> Linear(F, C)`` is trained, with cross-entropy, SGD (momentum 0.9,
    ``weight_decay``) and the per-step cosine rate ``lr * (1 + cos(pi t / T)) / 2``. ``splits`` default to
    ``run_splits(cfg)``; ``indices`` keep only those images of the labelled training split (few labels).
    Returns ``top1``, ``top5`` on the evaluation split and ``train_top1`` (on the augmented batches, last
    epoch).
    """
    splits = splits if splits is not None else run_splits(cfg)
    train_set = augmented_train_set(splits, indices)
    eval_set = splits.labelled()[1]
    num_classes = splits.class_count(train_set, "linear evaluation")
    torch.manual_seed(seed)  # the crops are drawn from the global generator (the workers' from the loader's)
    loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=len(train_set) > batch_size,
        num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(seed),
    )
    was_training = backbone.training
    backbone.to(device).eval()
    width = backbone.num_features
    head = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, num_classes)).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    total, step = epochs * len(loader), 0
    correct = seen = 0
    try:
        for epoch in range(epochs):
            head.train()
            for images, labels in loader:
                labels = torch.as_tensor(labels).long().to(device)
                keep = labels >= 0
                if not keep.any():
                    continue
                with torch.no_grad():
                    features = backbone(images.to(device, non_blocking=True)).float()
                for group in optimizer.param_groups:
                    group["lr"] = cosine(step, total, lr, 0.0)
                logits = head(features[keep])
                loss = F.cross_entropy(logits, labels[keep])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if epoch == epochs - 1:
                    correct += int((logits.argmax(1) == labels[keep]).sum())
                    seen += int(keep.sum())
        test_features, test_labels = extract_features(
            backbone, DataLoader(eval_set, batch_size=batch_size, num_workers=cfg.data.num_workers), device
        )
    finally:
        backbone.train(was_training)
    head.eval()
    with torch.no_grad():
        top1, top5 = accuracy(head(test_features.to(device)), test_labels.to(device))
    return {"top1": top1, "top5": top5, "train_top1": 100.0 * correct / max(seen, 1)}


# ------------------------------------------------------------------------------------------ run dirs


def _linear_of_run(
    run: RunToEvaluate,
    device: str | torch.device = "cpu",
    protocol: Literal["fast", "augmented"] = "fast",
    epochs: int = 100,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    labels: str | None = None,
) -> dict[str, Any]:
    if protocol not in ("fast", "augmented"):
        raise ConfigError(f"linear protocol '{protocol}' is unknown; choose 'fast' (cached features) or 'augmented'")
    if epochs < 1:
        raise ConfigError(f"--epochs got {epochs}; the linear probe trains for at least 1 epoch")
    budget = parse_label_budget(labels) if labels is not None else None
    backbone, _ = load_trained_backbone(run.path)
    backbone.to(device)
    train_set, eval_set = run.labelled
    indices = few_label_indices(train_set, budget) if budget is not None else None
    if protocol == "fast":
        settings: dict[str, Any] = dict(epochs=epochs, seed=seed, **FAST)
        # The whole split's features (cached, shared with kNN and every label budget), then the subset's rows.
        features = cached_eval_features(backbone, run.cfg, cache_dir or run.cache_dir, device,
                                        datasets=run.labelled)
        if indices is not None:
            rows = torch.as_tensor(indices)
            features = (features[0][rows], features[1][rows], *features[2:])
        result = train_linear_probe(*features, run.num_classes, **settings)
    else:
        settings = dict(epochs=epochs, seed=seed, **AUGMENTED)
        result = augmented_linear_eval(backbone, run.cfg, device, splits=run.splits, indices=indices, **settings)
    used = len(train_set) if indices is None else len(indices)
    name = "linear" if budget is None else f"linear_{budget.tag}"
    return {
        f"{name}_top1": result["top1"], f"{name}_top5": result["top5"], f"{name}_train_top1": result["train_top1"],
        "protocol": protocol, **settings, "num_classes": run.num_classes,
        **budget_record(budget, used, len(train_set)), "train_size": used, "eval_size": len(eval_set),
    }


def labels_argument(parser: argparse.ArgumentParser) -> None:
    """``--labels``, shared by every evaluation that trains on labels."""
    parser.add_argument("--labels", metavar="P%|N",
                        help="train on a class-balanced subset of the labelled training split: a percentage "
                        f"(1%%, 10%%) or N images in all, the same images for every run (seed {LABELS_SEED}); "
                        "the result goes to <name>_<budget>.json (default: every label)")


def labels_file(name: str) -> Callable[[dict[str, Any]], str]:
    """The result file of an evaluation with ``--labels``: ``<name>.json``, or ``<name>_<budget tag>.json``."""
    def file_for(options: dict[str, Any]) -> str:
        labels = options.get("labels")
        return f"{name}.json" if labels is None else f"{name}_{parse_label_budget(labels).tag}.json"
    return file_for


def _linear_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=["fast", "augmented"], default="fast")
    parser.add_argument("--epochs", type=int, default=100)
    labels_argument(parser)


LINEAR = register(Evaluation(
    name="linear",
    file="linear.json",
    order=20,
    help="linear probe on a run's frozen backbone",
    description="Linear evaluation of a frozen backbone: 'fast' trains a linear layer on cached features (the CPU "
    "default); 'augmented' is the standard protocol on augmented images. Writes linear.json.",
    run=_linear_of_run,
    columns=(Column("linear_top1", "linear top-1 (%)", 2, compared=True),),
    uses_run_dir=True,
    add_arguments=_linear_arguments,
    grid_flag="linear",
    file_for=labels_file("linear"),
))
#: the few-label probes of SimCLR's and BYOL's tables, as sweep stages and report columns
LINEAR_1PCT = register(labels_variant(LINEAR, "1%", "1pct", order=21))
LINEAR_10PCT = register(labels_variant(LINEAR, "10%", "10pct", order=22))


def linear_of_run(
    run_path: str | Path,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    protocol: Literal["fast", "augmented"] = "fast",
    *,
    epochs: int = 100,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    labels: str | None = None,
) -> dict[str, Any]:
    """Linear evaluation of a run's backbone; the result is also written to ``out_dir/linear.json``
    (``linear_<budget>.json`` with ``labels``, e.g. ``"10%"``: a class-balanced subset of the training split).

    ``run_path`` is a run directory or a checkpoint / backbone file in one (as for ``dimcl knn``).
    ``out_dir`` defaults to the run directory, ``cache_dir`` (fast protocol's features) to
    ``<run>/features``. Keys: ``linear_top1``, ``linear_top5``, ``linear_train_top1`` and the settings.
    """
    return evaluate(LINEAR.name, run_path, device=device, out_dir=out_dir, protocol=protocol, epochs=epochs,
                    seed=seed, cache_dir=cache_dir, labels=labels)
