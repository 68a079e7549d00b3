"""From a validated :class:`~dimcl.config.Config` to the model of a run: backbone, method, the metadata
exported with the weights.

A run's images are built in :mod:`dimcl.data.splits` (``run_splits(cfg)``); the few split functions
below are that call under the names older tests import.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from dimcl.config import Config
from dimcl.data import dataset_info, run_splits
from dimcl.data.device_views import BatchMultiView
from dimcl.data.splits import validation_split
from dimcl.data.view_config import view_configs
from dimcl.methods import SSLMethod, build_method
from dimcl.models import build_backbone, stem_of
from dimcl.version import __version__

__all__ = [
    "backbone_metadata", "build_backbone_from_config", "build_device_views", "build_eval_datasets",
    "build_method_from_config", "build_pretrain_dataset", "crop_size", "describe_backbone", "validation_split",
    "view_configs",
]  # fmt: skip


def crop_size(cfg: Config) -> int:
    return run_splits(cfg).crop_size


# --------------------------------------------------------------------------------------------------
# A run's splits, as run_splits(cfg) builds them (kept for the tests that import these names)


def build_pretrain_dataset(cfg: Config) -> Dataset:
    return run_splits(cfg).pretrain()


def build_device_views(cfg: Config) -> BatchMultiView | None:
    return run_splits(cfg).device_views()


def build_eval_datasets(cfg: Config) -> tuple[Dataset, Dataset]:
    return run_splits(cfg).labelled()


# --------------------------------------------------------------------------------------------------
# The model


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
