"""Datasets by name (the registry in :mod:`dimcl.data.datasets`, one reader per format in
:mod:`dimcl.data.formats`), a run's splits (:func:`run_splits`) and the augmented views self-supervised
methods train on."""

from dimcl.data.datasets import DATASETS, build_dataset, dataset_info
from dimcl.data.errors import BadImageError, DatasetError, DatasetNotFoundError
from dimcl.data.formats.imagefolder import ON_BAD_IMAGE, ImageFolderDataset
from dimcl.data.in_memory import TensorImageDataset
from dimcl.data.info import SPLITS, DatasetInfo
from dimcl.data.splits import RunSplits, run_splits
from dimcl.data.subsets import bad_image_count, labels_of
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
    "RunSplits",
    "TensorImageDataset",
    "ViewConfig",
    "ViewTransform",
    "build_dataset",
    "build_view_transform",
    "byol_view_configs",
    "dataset_info",
    "eval_transform",
    "labels_of",
    "run_splits",
]
