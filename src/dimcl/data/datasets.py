"""The dataset registry: each dataset is one :class:`~dimcl.data.info.DatasetInfo` entry in :data:`DATASETS`.

An entry carries everything the rest of the library needs: the images' size and channels, the class
count, the normalisation constants, the default location, whether image sizes vary, its reader (one per
on-disk format, in :mod:`dimcl.data.formats`) and its split order.

Every dataset serves three splits: ``"pretrain"`` is what self-supervised training sees, ``"train"`` the
labelled training split (kNN bank, linear probe) and ``"eval"`` the test / validation split. Every item
is ``(transform(image), label)`` with label -1 where the image has none. The entry names the reader's
parts each split concatenates, in order.

**The pretraining split starts with the labelled training images**, in the same order as the ``"train"``
split; unlabelled extras (STL-10's 100,000 images) follow them. ``data.val_size`` relies on it: the
validation images are held out by their index in the training split, and the same indices are removed
from the pretraining split (see :mod:`dimcl.data.splits`). :class:`~dimcl.data.info.DatasetInfo` refuses
an entry whose ``pretrain_parts`` do not start with its ``train_parts``; a reader must keep each part's
images in the same order every time it is opened.

A new dataset is a reader (``read(info, root, parts, transform, download) -> Dataset``, see
:data:`~dimcl.data.info.Reader`) and one entry below.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from dimcl.data.errors import DatasetError, DatasetNotFoundError
from dimcl.data.formats.cifar import CIFAR10, CIFAR100, cifar_reader
from dimcl.data.formats.idx import read_fashion_mnist
from dimcl.data.formats.imagefolder import ImageFolderDataset, check_on_bad_image, read_image_folder
from dimcl.data.formats.stl10 import read_stl10
from dimcl.data.info import SPLITS, DatasetInfo
from dimcl.data.subsets import seeded_subset
from dimcl.names import did_you_mean

__all__ = ["DATASETS", "build_dataset", "dataset_info"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("fashion_mnist", 28, 1, 10, (0.2860,), (0.3530,), "/usr/share/datasets/fashion-mnist",
                    reader=read_fashion_mnist),
        DatasetInfo("cifar10", 32, 3, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), None,
                    reader=cifar_reader(CIFAR10)),
        DatasetInfo("cifar100", 32, 3, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), None,
                    reader=cifar_reader(CIFAR100)),
        DatasetInfo("stl10", 96, 3, 10, _IMAGENET_MEAN, _IMAGENET_STD, None,
                    reader=read_stl10, pretrain_parts=("train", "unlabeled")),
        DatasetInfo("imagefolder", 224, 3, None, _IMAGENET_MEAN, _IMAGENET_STD, None,
                    reader=read_image_folder, variable_size=True, eval_parts=("val",)),
    )
}  # fmt: skip


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` registered under ``name``; a one-paragraph error for an unknown name."""
    if name in DATASETS:
        return DATASETS[name]
    raise DatasetError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}.{did_you_mean(name, DATASETS)}")


def build_dataset(
    name: str,
    root: str | os.PathLike[str] | None,
    split: str,
    transform: Callable[[Any], Any] | None = None,
    *,
    subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    on_bad_image: str = "fail",
) -> Dataset:
    """Open one split of a dataset; items are ``(transform(image), label)``, label -1 when unlabelled.

    ``root=None`` uses the dataset's ``default_root``. ``subset=N`` keeps a fixed random subset of N
    items, drawn with a ``torch.Generator`` seeded with ``seed`` (the same for every process).
    ``download=True`` fetches missing files with torchvision's downloaders. ``on_bad_image`` (fail | skip)
    says what image folders do with a file that cannot be decoded (see :class:`ImageFolderDataset`).
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise DatasetError(
            f"unknown split '{split}' for dataset '{name}'; choose one of: {', '.join(SPLITS)} "
            f"(pretrain: what self-supervised training sees, train: the labelled training split, "
            f"eval: the test/validation split).{did_you_mean(split, SPLITS)}"
        )
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise DatasetError(f"data subset must be a positive number of images or none, got {subset!r}.")
    dataset = info.reader(info, _resolve_root(info, root), info.parts_of(split), transform, download)
    if isinstance(dataset, ImageFolderDataset):
        dataset.on_bad_image = check_on_bad_image(on_bad_image)
    if subset is None:
        return dataset
    if subset > len(dataset):
        raise DatasetError(
            f"data subset {subset} is larger than the {name} '{split}' split, which has {len(dataset)} "
            f"images; use a subset of at most {len(dataset)} or none."
        )
    return seeded_subset(dataset, subset, seed)


def _resolve_root(info: DatasetInfo, root: str | os.PathLike[str] | None) -> Path:
    if root is None or str(root) == "":
        if info.default_root is None:
            raise DatasetNotFoundError(
                f"dataset '{info.name}' has no default location; set data.root to the folder that holds "
                f"its files (or pass root= to build_dataset)."
            )
        root = info.default_root
    return Path(root).expanduser()
