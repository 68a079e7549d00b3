"""Training a classifier end to end on labels: the one loop of fine-tuning (:mod:`dimcl.eval.finetune`) and
of the supervised reference (:mod:`dimcl.train.supervised`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from dimcl.data import labels_of
from dimcl.errors import ConfigError
from dimcl.schedules import warmup_cosine
from dimcl.seeds import epoch_seed


def fit_classifier(
    backbone: nn.Module,
    head: nn.Module,
    dataset: Dataset,
    *,
    lrs: tuple[float, float],
    epochs: int,
    batch_size: int,
    seed: int,
    momentum: float,
    weight_decay: float,
    warmup_steps: Callable[[int, int], int] = lambda steps_per_epoch, total: 0,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
    name: str = "supervised",
) -> dict[str, Any]:
    """Train ``head(backbone(x))`` on ``dataset`` (labelled items only) with cross-entropy: the one loop of
    the supervised reference and of fine-tuning.

    SGD with ``momentum`` and ``weight_decay``, the backbone at ``lrs[0]`` and the head at ``lrs[1]`` (equal
    values: one parameter group, as the supervised reference has always been trained), each with a linear
    warm-up over ``warmup_steps(steps per epoch, total steps)`` steps then a per-step cosine to 0; shuffled
    batches of ``batch_size``, the last incomplete one dropped; every epoch reseeded from ``(seed, epoch)``.
    Both modules end in eval mode. Returns ``{"epochs", "steps", "train_images", "train_top1"`` (last epoch,
    augmented) ``, "train_time_s"}``.
    """
    if len(dataset) < batch_size:
        raise ConfigError(f"{name} training needs at least one batch of {batch_size} labelled images, and has "
                          f"{len(dataset)}; "
                          "give it more labels or a smaller batch")
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                        generator=generator)
    if lrs[0] == lrs[1]:
        groups = [{"params": [*backbone.parameters(), *head.parameters()], "lr": lrs[0]}]
    else:
        groups = [{"params": list(backbone.parameters()), "lr": lrs[0]},
                  {"params": list(head.parameters()), "lr": lrs[1]}]
    optimizer = torch.optim.SGD(groups, lr=lrs[0], momentum=momentum, weight_decay=weight_decay)
    total = len(loader) * epochs
    warmup = warmup_steps(len(loader), total)
    schedules = [warmup_cosine(group["lr"], total, warmup) for group in groups]
    started, step = time.perf_counter(), 0
    backbone.train()
    head.train()
    for epoch in range(epochs):
        torch.manual_seed(epoch_seed(seed, epoch))
        generator.manual_seed(epoch_seed(seed, epoch))
        correct = seen = 0
        for images, targets in loader:
            for group, schedule in zip(optimizer.param_groups, schedules, strict=True):
                group["lr"] = schedule[step]
            images, targets = images.to(device), torch.as_tensor(targets).long().to(device)
            logits = head(backbone(images))
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            correct += int((logits.argmax(1) == targets).sum())
            seen += len(targets)
        if log is not None:
            top1 = 100 * correct / seen
            log(f"{name} epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, train top-1 {top1:.2f}%")
    backbone.eval()
    head.eval()
    return {"epochs": epochs, "steps": step, "train_images": len(dataset), "train_top1": 100 * correct / seen,
            "train_time_s": time.perf_counter() - started}


def labelled_only(dataset: Dataset) -> Dataset:
    """``dataset`` without its unlabelled items (label -1, STL-10's unlabelled images): not for training with
    labels. Bad input when nothing is labelled."""
    labels = labels_of(dataset)
    if labels is None or not (labels >= 0).any():
        raise ConfigError("training with labels needs class labels, and this dataset has none here")
    if (labels >= 0).all():
        return dataset
    return Subset(dataset, torch.nonzero(labels >= 0).flatten().tolist())
