"""Datasets by name and the augmented views self-supervised methods train on."""

from dimcl.data.datasets import (
    DATASETS,
    ON_BAD_IMAGE,
    SPLITS,
    BadImageError,
    DatasetError,
    DatasetInfo,
    DatasetNotFoundError,
    ImageFolderDataset,
    TensorImageDataset,
    bad_image_count,
    build_dataset,
    dataset_info,
    labels_of,
)
from dimcl.data.view_config import ViewConfig, byol_view_configs
from dimcl.data.views import EvalTransform, MultiViewTransform, ViewTransform, build_view_transform, eval_transform

__all__ = [
    "DATASETS",
    "ON_BAD_IMAGE",
    "BadImageError",
    "bad_image_count",
    "SPLITS",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "EvalTransform",
    "ImageFolderDataset",
    "MultiViewTransform",
    "TensorImageDataset",
    "ViewConfig",
    "ViewTransform",
    "build_dataset",
    "build_view_transform",
    "byol_view_configs",
    "dataset_info",
    "eval_transform",
    "labels_of",
]
