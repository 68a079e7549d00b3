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

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from dimcl.build import build_backbone_from_config
from dimcl.config import Config
from dimcl.data import ViewConfig, build_view_transform, labels_of, run_splits
from dimcl.data.view_config import crop_and_flip_view
from dimcl.eval.classifier import fit_classifier, labelled_only

#: the supervised recipe (see the module docstring)
SUPERVISED = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1.0}


def supervised_view(cfg: Config) -> ViewConfig:
    """Random-resized crop at the recipe's scale and a horizontal flip; every colour operation off."""
    splits = run_splits(cfg)
    return crop_and_flip_view(splits.crop_size, splits.views[0].crop_scale)


def train_supervised(
    cfg: Config, device: str | torch.device = "cpu", log: Callable[[str], None] | None = print
) -> tuple[nn.Module, nn.Linear, dict[str, Any]]:
    """Train ``(backbone, head)`` as the module docstring says; returns them (in eval mode) and a record
    ``{"epochs", "steps", "train_images", "train_top1" (last epoch, augmented), "train_time_s", **SUPERVISED}``."""
    splits = run_splits(cfg)
    dataset = labelled_only(splits.pretrain(build_view_transform(supervised_view(cfg), splits.info)))
    num_classes = splits.info.num_classes or int(labels_of(dataset).max()) + 1
    return fit_supervised(cfg, dataset, num_classes, epochs=cfg.trainer.max_epochs,
                          batch_size=cfg.data.batch_size, device=device, log=log)


def fit_supervised(
    cfg: Config,
    dataset: Dataset,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
    name: str = "supervised",
) -> tuple[nn.Module, nn.Linear, dict[str, Any]]:
    """The config's backbone from random weights (seeded by ``cfg.seed``) and a linear head to
    ``num_classes``, trained on the labelled images of ``dataset`` (already augmented) by the
    supervised recipe of the module docstring, the learning rate scaled to ``batch_size``; returns
    them (in eval mode) and the record of :func:`train_supervised`."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone_from_config(cfg).to(device)
    head = nn.Linear(backbone.num_features, num_classes).to(device)
    lr = SUPERVISED["lr"] * batch_size / 256
    record = fit_classifier(
        backbone, head, dataset, lrs=(lr, lr), epochs=epochs, batch_size=batch_size,
        seed=cfg.seed, momentum=SUPERVISED["momentum"], weight_decay=SUPERVISED["weight_decay"],
        # one warm-up epoch, at most a tenth of the run
        warmup_steps=lambda per_epoch, total: round(min(SUPERVISED["warmup_epochs"] * per_epoch, total / 10)),
        num_workers=cfg.data.num_workers, device=device, log=log, name=name,
    )
    return backbone, head, {**record, **SUPERVISED, "batch_size": batch_size}
