"""From a validated :class:`~dimcl.config.Config` to the objects of a run: views, datasets, model.

Shared by pretraining, offline evaluation and the demo, so that every path builds them the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from dimcl.config import AugmentConfig, Config, ConfigError
from dimcl.data import (
    DatasetInfo,
    MultiViewTransform,
    build_dataset,
    build_view_transform,
    byol_view_configs,
    dataset_info,
    eval_transform,
    labels_of,
)
from dimcl.data.datasets import seeded_subset
from dimcl.data.device_views import BatchMultiView, build_batch_views, raw_image_transform
from dimcl.data.view_config import with_local_views
from dimcl.data.views import ViewConfig
from dimcl.methods import SSLMethod, build_method
from dimcl.models import build_backbone, stem_of
from dimcl.version import __version__


def view_configs(augment: AugmentConfig, info: DatasetInfo) -> list[ViewConfig]:
    """The dataset's two BYOL views with the recipe's ``augment.*`` values laid over them, then
    ``augment.num_local_crops`` multi-crop local views (none by default)."""
    views = byol_view_configs(info, augment.crop_size)
    for f in dataclasses.fields(augment):
        value = getattr(augment, f.name)
        if value is None or f.name in ("crop_size", "num_local_crops", "local_crop_size", "local_crop_scale"):
            continue
        if f.name == "crop_scale":
            views = [dataclasses.replace(v, crop_scale=tuple(value)) for v in views]
            continue
        per_view = value if isinstance(value, list) else [value] * len(views)
        if len(per_view) == 1:
            per_view = per_view * len(views)
        views = [dataclasses.replace(v, **{f.name: x}) for v, x in zip(views, per_view, strict=True)]
    return with_local_views(views, augment.num_local_crops, augment.local_crop_size, tuple(augment.local_crop_scale))


def crop_size(cfg: Config) -> int:
    return cfg.augment.crop_size or dataset_info(cfg.data.name).image_size


#: data.val_size draws its held-out images with this seed, whatever the run's seed: runs of every seed
#: are tuned and compared on the same validation images
VALIDATION_SEED = 2023


def validation_split(num_train: int, val_size: int) -> tuple[list[int], list[int]]:
    """``(kept, held_out)`` indices of a labelled training split of ``num_train`` images (each sorted)."""
    if val_size >= num_train:
        raise ConfigError(
            f"data.val_size={val_size} holds out the whole training split ({num_train} images); keep it below "
            f"{num_train}, or 0 to evaluate on the test split"
        )
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return order[val_size:].sort().values.tolist(), order[:val_size].sort().values.tolist()


def _seeded_subset_of(dataset: Dataset, size: int | None, seed: int, key: str) -> Dataset:
    if size is None:
        return dataset
    if size > len(dataset):
        raise ConfigError(
            f"{key}={size} is larger than the {len(dataset)} images it is drawn from; lower it or set it to null"
        )
    return seeded_subset(dataset, size, seed)


def _labelled_prefix(pretrain_split: Dataset) -> int:
    """How many images the labelled training split has: the labelled images that open the pretraining split
    (read from the labels, without decoding or opening the training split a second time)."""
    labels = labels_of(pretrain_split)
    count = 0 if labels is None else int((labels >= 0).sum())
    if labels is not None and not bool((labels[:count] >= 0).all()):
        raise ConfigError(
            "data.val_size needs a pretraining split that starts with the labelled training images; this "
            "dataset's labelled images are not all at its start. Set data.val_size=0."
        )
    return count


def pretrain_images(cfg: Config, transform: Any) -> Dataset:
    """The images pretraining sees (``data.subset``, minus the ``data.val_size`` hold-out), with ``transform``.

    The pretraining split starts with the labelled training split in every dataset (STL-10's unlabelled
    images follow it), so the held-out validation indices apply to it unchanged.
    """
    common = dict(download=cfg.data.download, on_bad_image=cfg.data.on_bad_image)
    if not cfg.data.val_size:
        return build_dataset(cfg.data.name, cfg.data.root, "pretrain", transform, subset=cfg.data.subset,
                             seed=cfg.seed, **common)
    full = build_dataset(cfg.data.name, cfg.data.root, "pretrain", transform, **common)
    kept, _ = validation_split(_labelled_prefix(full), cfg.data.val_size)
    num_train = len(kept) + cfg.data.val_size
    remaining = Subset(full, kept + list(range(num_train, len(full))))
    return _seeded_subset_of(remaining, cfg.data.subset, cfg.seed, "data.subset")


def build_pretrain_dataset(cfg: Config) -> Dataset:
    """The pretraining split; items are (list of views, label), or (uint8 image, label) with augment_on=device."""
    info = dataset_info(cfg.data.name)
    if cfg.data.augment_on == "device":
        transform = raw_image_transform(info, crop_size(cfg))  # views are made by build_device_views
    else:
        transform = MultiViewTransform([build_view_transform(v, info) for v in view_configs(cfg.augment, info)])
    return pretrain_images(cfg, transform)


def build_device_views(cfg: Config) -> BatchMultiView | None:
    """With ``data.augment_on=device``, the batched transform: uint8 batch -> list of views; else None."""
    if cfg.data.augment_on != "device":
        return None
    info = dataset_info(cfg.data.name)
    return build_batch_views(view_configs(cfg.augment, info), info)


def labelled_splits(cfg: Config, transform: Any) -> tuple[Dataset, Dataset]:
    """(labelled training images, evaluation images), both with ``transform``.

    The evaluation images are the test split, or with ``data.val_size`` the images held out from the
    training split (which the first then lacks). ``data.eval_subset`` takes a seeded subset of each; one
    larger than a split means the whole split.
    """
    common = dict(download=cfg.data.download, on_bad_image=cfg.data.on_bad_image)
    train = build_dataset(cfg.data.name, cfg.data.root, "train", transform, **common)
    if cfg.data.val_size:
        kept, held_out = validation_split(len(train), cfg.data.val_size)
        train, evaluation = Subset(train, kept), Subset(train, held_out)
    else:
        evaluation = build_dataset(cfg.data.name, cfg.data.root, "eval", transform, **common)
    n = cfg.data.eval_subset
    # Subsets are drawn from the opened splits: opening them a second time would read the files again.
    return tuple(d if n is None or n >= len(d) else seeded_subset(d, n, cfg.seed) for d in (train, evaluation))


def build_eval_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    """(kNN bank / probe training set, evaluation set) with the deterministic evaluation transform."""
    return labelled_splits(cfg, eval_transform(dataset_info(cfg.data.name), crop_size(cfg)))


def num_classes_of(cfg: Config, dataset: Dataset) -> int | None:
    """The dataset's class count: registered, or read from the labels (image folders); None if unlabelled."""
    known = dataset_info(cfg.data.name).num_classes
    if known:
        return known
    labels = labels_of(dataset)
    if labels is None or not (labels >= 0).any():
        return None
    return int(labels.max()) + 1


def build_backbone_from_config(cfg: Config) -> nn.Module:
    info = dataset_info(cfg.data.name)
    return build_backbone(
        cfg.backbone.name,
        in_channels=info.in_channels,
        image_size=crop_size(cfg),
        cifar_stem=cfg.backbone.cifar_stem,
        patch_size=cfg.backbone.patch_size,
    )


def build_method_from_config(cfg: Config, gather_distributed: bool = True) -> SSLMethod:
    dimcl = dataclasses.replace(cfg.dimcl)
    return build_method(
        cfg.method.name, build_backbone_from_config(cfg), dimcl, gather_distributed=gather_distributed,
        **cfg.method.options,
    )


def backbone_metadata(cfg: Config, backbone: nn.Module) -> dict[str, Any]:
    """How to rebuild the backbone and feed it: stored with the exported weights.

    ``backbone``, ``in_channels``, ``image_size``, ``cifar_stem``, ``patch_size`` are the arguments of
    :func:`~dimcl.models.build_backbone`; ``stem`` says which ResNet stem that gave; inputs are
    ``(B, in_channels, image_size, image_size)`` normalised per channel with ``mean`` / ``std``, outputs
    ``(B, num_features)``. timm backbones add ``timm_model`` and ``timm_kwargs`` (for ``timm.create_model``).
    """
    info = dataset_info(cfg.data.name)
    meta = {
        "backbone": cfg.backbone.name,
        "in_channels": info.in_channels,
        "image_size": crop_size(cfg),
        "cifar_stem": cfg.backbone.cifar_stem,
        "patch_size": cfg.backbone.patch_size,
        "num_features": int(backbone.num_features),
        "dataset": cfg.data.name,
        "method": cfg.method.name,
        "dimcl_weight": cfg.dimcl.weight,
    }
    return {**meta, **describe_backbone(backbone, cfg.data.name), "dimcl_version": __version__}


def describe_backbone(backbone: nn.Module, dataset: str) -> dict[str, Any]:
    """What a user of the backbone needs besides its weights: the stem, the input normalisation of
    ``dataset`` and, for timm models, how to create them (files exported before these keys existed get
    them from here when loaded)."""
    info = dataset_info(dataset)
    described: dict[str, Any] = {"stem": stem_of(backbone), "mean": list(info.mean), "std": list(info.std)}
    if hasattr(backbone, "timm_model"):
        described.update(timm_model=backbone.timm_model, timm_kwargs=dict(backbone.timm_kwargs))
    return described
