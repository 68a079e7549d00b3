"""Fine-tuning: the pretrained backbone unfrozen under a linear head, trained with labels end to end.

The protocol (``dimcl finetune --ckpt RUN [--labels 10%]``): the run's backbone and a zero-initialised
``Linear(F, C)`` head; the labelled training split (or its class-balanced few-label subset, the same
images as ``dimcl linear --labels``) with the evaluation-time augmentations of the augmented linear probe
(random-resized crop of scale 0.08-1, horizontal flip); cross-entropy, SGD with momentum 0.9 and weight
decay 5e-4, the backbone at ``backbone_lr`` and the head at ``head_lr`` (the head starts from nothing and
learns faster), a per-step cosine schedule to 0 without warm-up, ``epochs`` epochs of ``batch_size``,
reseeded every epoch from ``(seed, epoch)``. BatchNorm layers train (their statistics follow the labelled
images). Scored by the head's top-1 / top-5 on the un-augmented evaluation split. The run's files are
never changed: the fine-tuned weights are not kept.

The defaults are sized for time on the small CPU backbone, not tuned: 10% of Fashion-MNIST (6 000 images,
230 steps) fine-tunes in 41 s on two cores, scoring included (docs/eval-labels.md has the figures).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from dimcl.data.label_budget import budget_record, few_label_indices, parse_label_budget
from dimcl.errors import ConfigError
from dimcl.eval.classifier import fit_classifier, labelled_only
from dimcl.eval.knn import extract_features
from dimcl.eval.linear import accuracy, augmented_train_set, labels_argument, labels_file
from dimcl.eval.registry import Column, Evaluation, RunToEvaluate, labels_variant, register
from dimcl.trained import load_trained_backbone

#: the protocol's defaults (see the module docstring)
FINETUNE = {"epochs": 5, "batch_size": 128, "backbone_lr": 0.01, "head_lr": 0.1, "momentum": 0.9,
            "weight_decay": 5e-4, "seed": 0}


def finetune(
    backbone: nn.Module,
    run: RunToEvaluate,
    device: str | torch.device = "cpu",
    *,
    indices: list[int] | None = None,
    epochs: int = FINETUNE["epochs"],
    batch_size: int = FINETUNE["batch_size"],
    backbone_lr: float = FINETUNE["backbone_lr"],
    head_lr: float = FINETUNE["head_lr"],
    momentum: float = FINETUNE["momentum"],
    weight_decay: float = FINETUNE["weight_decay"],
    seed: int = FINETUNE["seed"],
    log: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune ``backbone`` (in place) with a new linear head on ``run``'s labelled training split (only its
    ``indices`` when given) as the module docstring says; returns the head and the record ``{"top1", "top5"``
    (evaluation split) ``, "train_top1", "epochs", "steps", "train_images", "train_time_s"}``."""
    if epochs < 1 or batch_size < 2 or backbone_lr < 0 or head_lr <= 0:
        raise ConfigError(
            f"fine-tuning needs epochs >= 1, batch_size >= 2, backbone_lr >= 0 and head_lr > 0, got epochs={epochs}, "
            f"batch_size={batch_size}, backbone_lr={backbone_lr}, head_lr={head_lr}"
        )
    train_set = labelled_only(augmented_train_set(run.splits, indices))
    torch.manual_seed(seed)
    head = nn.Linear(backbone.num_features, run.num_classes).to(device)
    nn.init.zeros_(head.weight)  # the backbone's features carry the signal; the head starts from no opinion
    nn.init.zeros_(head.bias)
    record = fit_classifier(
        backbone.to(device), head, train_set, lrs=(backbone_lr, head_lr), epochs=epochs, batch_size=batch_size,
        seed=seed, momentum=momentum, weight_decay=weight_decay, num_workers=run.cfg.data.num_workers,
        device=device, log=log, name="fine-tune",
    )
    eval_set = run.labelled[1]
    loader = DataLoader(eval_set, batch_size=512, num_workers=run.cfg.data.num_workers)
    features, labels = extract_features(backbone, loader, device)
    with torch.no_grad():
        top1, top5 = accuracy(head(features.to(device)), labels.to(device))
    return head, {"top1": top1, "top5": top5, **record}


def _finetune_of_run(
    run: RunToEvaluate,
    device: str | torch.device = "cpu",
    labels: str | None = None,
    epochs: int = FINETUNE["epochs"],
    batch_size: int = FINETUNE["batch_size"],
    backbone_lr: float = FINETUNE["backbone_lr"],
    head_lr: float = FINETUNE["head_lr"],
) -> dict[str, Any]:
    budget = parse_label_budget(labels) if labels is not None else None
    backbone, _ = load_trained_backbone(run.path)
    train_set = run.labelled[0]
    indices = few_label_indices(train_set, budget) if budget is not None else None
    settings = {**FINETUNE, "epochs": epochs, "batch_size": batch_size, "backbone_lr": backbone_lr, "head_lr": head_lr}
    _, result = finetune(backbone, run, device, indices=indices, **settings)
    used = result["train_images"]
    name = "finetune" if budget is None else f"finetune_{budget.tag}"
    return {
        f"{name}_top1": result["top1"], f"{name}_top5": result["top5"], f"{name}_train_top1": result["train_top1"],
        **settings, "steps": result["steps"], "train_time_s": result["train_time_s"], "num_classes": run.num_classes,
        **budget_record(budget, used, len(train_set)), "train_size": used, "eval_size": len(run.labelled[1]),
    }


def _finetune_arguments(parser: argparse.ArgumentParser) -> None:
    labels_argument(parser)
    parser.add_argument("--epochs", type=int, default=FINETUNE["epochs"])
    parser.add_argument("--batch-size", type=int, default=FINETUNE["batch_size"], dest="batch_size")
    parser.add_argument("--backbone-lr", type=float, default=FINETUNE["backbone_lr"], dest="backbone_lr",
                        help=f"the backbone's learning rate (default {FINETUNE['backbone_lr']})")
    parser.add_argument("--head-lr", type=float, default=FINETUNE["head_lr"], dest="head_lr",
                        help=f"the linear head's learning rate (default {FINETUNE['head_lr']})")


FINETUNE_EVALUATION = register(Evaluation(
    name="finetune",
    file="finetune.json",
    order=25,
    help="fine-tune a run's backbone with a linear head on labels",
    description="Fine-tuning: the backbone unfrozen under a linear head, trained with labels (all, or a "
    "class-balanced --labels subset) on crops and flips, the backbone and head at their own learning rates, a "
    "cosine schedule; scored on the evaluation split. Writes finetune.json (finetune_<budget>.json with --labels); "
    "the run's own files are not changed.",
    run=_finetune_of_run,
    columns=(Column("finetune_top1", "fine-tune top-1 (%)", 2, compared=True),),
    add_arguments=_finetune_arguments,
    grid_flag="finetune",
    file_for=labels_file("finetune"),
))
#: fine-tuning with 10% of the labels, as a sweep stage and report columns
FINETUNE_10PCT = register(labels_variant(FINETUNE_EVALUATION, "10%", "10pct", order=26))
