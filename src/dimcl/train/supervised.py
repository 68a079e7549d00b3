"""The supervised ceiling: the same backbone trained with labels and cross-entropy, same data and epochs.

What a self-supervised backbone is measured against from above. The backbone of the config
(``backbone.*``), a linear head, the images pretraining sees (``data.subset``, minus the
``data.val_size`` hold-out; unlabelled images left out), ``trainer.max_epochs`` epochs of
``data.batch_size``. Augmentation: the recipe's random-resized crop (its crop scale) and a horizontal
flip, no colour operations. Optimizer: the usual supervised recipe for ResNets on small images, not
tuned per dataset: SGD, momentum 0.9, weight decay 5e-4, learning rate 0.1 for a batch of 256 (scaled
linearly), one warm-up epoch (at most a tenth of the run), then cosine to 0, per step. Every epoch
reseeds from ``(seed, epoch)``, as pretraining does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from dimcl.build import build_backbone_from_config
from dimcl.config import Config, ConfigError
from dimcl.data import ViewConfig, build_view_transform, labels_of, run_splits
from dimcl.schedules import warmup_cosine
from dimcl.train.sampling import epoch_seed

#: the supervised recipe (see the module docstring)
SUPERVISED = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1.0}


def supervised_view(cfg: Config) -> ViewConfig:
    """Random-resized crop at the recipe's scale and a horizontal flip; every colour operation off."""
    splits = run_splits(cfg)
    return ViewConfig(
        splits.crop_size, splits.views[0].crop_scale, horizontal_flip=0.5, brightness=0.0, contrast=0.0, saturation=0.0,
        hue=0.0, color_jitter_prob=0.0, grayscale_prob=0.0, gaussian_blur_prob=0.0, solarization_prob=0.0,
    )


def train_supervised(
    cfg: Config, device: str | torch.device = "cpu", log: Callable[[str], None] | None = print
) -> tuple[nn.Module, nn.Linear, dict[str, Any]]:
    """Train ``(backbone, head)`` as the module docstring says; returns them (in eval mode) and a record
    ``{"epochs", "steps", "train_images", "train_top1" (last epoch, augmented), "train_time_s", **SUPERVISED}``."""
    splits = run_splits(cfg)
    info = splits.info
    dataset = splits.pretrain(build_view_transform(supervised_view(cfg), info))
    labels = labels_of(dataset)
    if labels is None or not (labels >= 0).any():
        raise ConfigError(f"the supervised ceiling needs class labels, and '{cfg.data.name}' has none here")
    if not (labels >= 0).all():  # STL-10's unlabelled images: not for a supervised run
        dataset = Subset(dataset, torch.nonzero(labels >= 0).flatten().tolist())
    num_classes = info.num_classes or int(labels.max()) + 1
    if len(dataset) < cfg.data.batch_size:
        raise ConfigError(
            f"the supervised ceiling needs at least data.batch_size={cfg.data.batch_size} labelled images, "
            f"and has {len(dataset)}"
        )
    torch.manual_seed(cfg.seed)
    backbone = build_backbone_from_config(cfg).to(device)
    head = nn.Linear(backbone.num_features, num_classes).to(device)
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.data.num_workers, generator=generator)
    params = [*backbone.parameters(), *head.parameters()]
    lr = SUPERVISED["lr"] * cfg.data.batch_size / 256
    optimizer = torch.optim.SGD(params, lr=lr, momentum=SUPERVISED["momentum"],
                                weight_decay=SUPERVISED["weight_decay"])
    epochs = cfg.trainer.max_epochs
    total = len(loader) * epochs
    warmup = round(min(SUPERVISED["warmup_epochs"] * len(loader), total / 10))
    schedule = warmup_cosine(lr, total, warmup)
    started, step = time.perf_counter(), 0
    backbone.train()
    head.train()
    for epoch in range(epochs):
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        generator.manual_seed(epoch_seed(cfg.seed, epoch))
        correct = seen = 0
        for images, targets in loader:
            for group in optimizer.param_groups:
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
            log(f"supervised epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, train top-1 {top1:.2f}%")
    backbone.eval()
    head.eval()
    record = {
        "epochs": epochs, "steps": step, "train_images": len(dataset), "train_top1": 100 * correct / seen,
        "train_time_s": time.perf_counter() - started, **SUPERVISED, "batch_size": cfg.data.batch_size,
    }
    return backbone, head, record
