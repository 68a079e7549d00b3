"""A run's images: ``cfg.data`` (with the run's ``seed`` and ``augment`` section) in, its splits out.

:func:`run_splits` is the one call: the pretraining images with their training views, the labelled
training split (kNN bank, linear-probe training set) and the evaluation split (the test split, or with
``data.val_size`` images held out from the training split), each with its labels. A split is opened, and
so checked, only when asked for: an offline evaluation never reads the pretraining images.

Which images each split holds:

- ``data.val_size = V > 0`` holds out V images of the labelled training split, drawn with
  :data:`VALIDATION_SEED` whatever the run's seed. The training split and the pretraining split lose them
  (the pretraining split starts with the labelled training images, see :mod:`dimcl.data.datasets`), and
  the held-out images become the evaluation split.
- ``data.subset`` keeps a seeded subset (the run's seed) of the pretraining images that remain.
- ``data.eval_subset`` keeps a seeded subset of each of the labelled and the evaluation split; one
  larger than a split means the whole split.
- ``data.classes`` keeps the pretraining images of those classes (after the hold-out, before
  ``data.subset``); ``eval.classes`` (default: ``data.classes``) keeps the labelled and the evaluation
  images of its classes (before ``data.eval_subset``). Labels keep their values.

A backbone trained on one dataset can be scored on another (:func:`run_splits` with ``trained``): the images
are then fed as the backbone was trained, with its channel count (RGB made luma, grayscale repeated), its
input side and its normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from dimcl.config import AugmentConfig, Config, DataConfig
from dimcl.data.datasets import build_dataset, dataset_info
from dimcl.data.device_views import BatchMultiView, build_batch_views, raw_image_transform
from dimcl.data.info import DatasetInfo
from dimcl.data.subsets import labels_of, seeded_subset
from dimcl.data.view_config import ViewConfig, crop_size_of, view_configs
from dimcl.data.views import MultiViewTransform, build_view_transform, eval_transform
from dimcl.errors import ConfigError

Transform = Callable[[Any], Any]

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


def of_classes(dataset: Dataset, classes: list[int] | None, key: str) -> Dataset:
    """The items of ``dataset`` whose label is one of ``classes`` (None: ``dataset`` itself)."""
    if classes is None:
        return dataset
    labels = labels_of(dataset)
    if labels is None:
        raise ConfigError(f"{key}={classes} needs the images' labels, and this dataset has none that can be read")
    present = set(torch.unique(labels[labels >= 0]).tolist())
    missing = sorted(set(classes) - present)
    if missing:
        raise ConfigError(
            f"{key}={classes}: the split has no image of class {', '.join(map(str, missing))}; its classes are "
            f"{sorted(present)}"
        )
    keep = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    return Subset(dataset, torch.nonzero(keep).flatten().tolist())


@dataclass(frozen=True)
class BackboneInput:
    """What a trained backbone is fed: its channel count, normalisation and input side (a transfer
    evaluation feeds another dataset's images this way)."""

    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int


@dataclass(frozen=True)
class RunSplits:
    """The splits of one run, from its ``data`` and ``augment`` sections, its ``seed`` and ``eval.classes``
    (see the module docstring); build it with :func:`run_splits`."""

    data: DataConfig
    augment: AugmentConfig
    seed: int
    eval_classes: list[int] | None = None
    #: a backbone trained on another dataset: its images are fed as that backbone expects (None: this one's)
    fed_as: BackboneInput | None = None

    @property
    def info(self) -> DatasetInfo:
        return dataset_info(self.data.name)

    @property
    def transform_info(self) -> DatasetInfo:
        """The dataset's info with the channels and normalisation the images are fed with (its own unless
        ``fed_as``): what the transforms are built from."""
        if self.fed_as is None:
            return self.info
        return replace(self.info, in_channels=self.fed_as.in_channels, mean=self.fed_as.mean, std=self.fed_as.std)

    @property
    def crop_size(self) -> int:
        """The side of the global views and of the evaluation images."""
        return self.fed_as.image_size if self.fed_as is not None else crop_size_of(self.augment, self.info)

    @property
    def views(self) -> list[ViewConfig]:
        """The training views: the dataset's BYOL views with ``augment.*`` laid over them."""
        return view_configs(self.augment, self.info)

    def _open(self, split: str, transform: Transform | None, **subset: Any) -> Dataset:
        return build_dataset(self.data.name, self.data.root, split, transform, download=self.data.download,
                             on_bad_image=self.data.on_bad_image, **subset)

    def pretrain(self, transform: Transform | None = None) -> Dataset:
        """The images pretraining sees (``data.subset``, minus the ``data.val_size`` hold-out).

        Items are ``(list of views, label)`` with the training views, or ``(uint8 image, label)`` with
        ``data.augment_on=device`` (the views are then made by :meth:`device_views`); ``transform``
        replaces either.
        """
        if transform is None:
            transform = self._pretrain_transform()
        if not self.data.val_size and self.data.classes is None:
            return self._open("pretrain", transform, subset=self.data.subset, seed=self.seed)
        remaining = full = self._open("pretrain", transform)
        if self.data.val_size:
            kept, _ = validation_split(_labelled_prefix(full), self.data.val_size)
            num_train = len(kept) + self.data.val_size
            remaining = Subset(full, kept + list(range(num_train, len(full))))
        remaining = of_classes(remaining, self.data.classes, "data.classes")
        return _seeded_subset_of(remaining, self.data.subset, self.seed, "data.subset")

    def _pretrain_transform(self) -> Transform:
        if self.data.augment_on == "device":
            return raw_image_transform(self.info, self.crop_size)
        return MultiViewTransform([build_view_transform(v, self.info) for v in self.views])

    def device_views(self) -> BatchMultiView | None:
        """With ``data.augment_on=device``, the batched transform: uint8 batch -> list of views; else None."""
        if self.data.augment_on != "device":
            return None
        return build_batch_views(self.views, self.info)

    def labelled(self, transform: Transform | None = None) -> tuple[Dataset, Dataset]:
        """(labelled training images, evaluation images), with ``transform`` or the deterministic
        evaluation transform (see the module docstring for which images each holds)."""
        if transform is None:
            transform = eval_transform(self.transform_info, self.crop_size)
        train = self._open("train", transform)
        if self.data.val_size:
            kept, held_out = validation_split(len(train), self.data.val_size)
            train, evaluation = Subset(train, kept), Subset(train, held_out)
        else:
            evaluation = self._open("eval", transform)
        classes, key = (self.eval_classes, "eval.classes") if self.eval_classes is not None else (
            self.data.classes, "data.classes")
        train, evaluation = of_classes(train, classes, key), of_classes(evaluation, classes, key)
        n = self.data.eval_subset
        # Subsets are drawn from the opened splits: opening them a second time would read the files again.
        return tuple(d if n is None or n >= len(d) else seeded_subset(d, n, self.seed) for d in (train, evaluation))

    def num_classes(self, dataset: Dataset) -> int | None:
        """The class count: registered, or read from ``dataset``'s labels (image folders); None if unlabelled."""
        known = self.info.num_classes
        if known:
            return known
        labels = labels_of(dataset)
        if labels is None or not (labels >= 0).any():
            return None
        return int(labels.max()) + 1

    def class_count(self, dataset: Dataset, needed_by: str) -> int:
        """:meth:`num_classes`, for what cannot run without labels: an unlabelled ``dataset`` is bad input,
        refused with one message naming ``needed_by`` (the one check of it, for every evaluation)."""
        count = self.num_classes(dataset)
        if not count:
            raise ConfigError(f"{needed_by} needs class labels, and the '{self.data.name}' training split has none")
        return count


def run_splits(cfg: Config, trained: Config | None = None) -> RunSplits:
    """The splits of the run ``cfg`` describes (nothing is opened yet).

    ``trained``: the config of the run whose backbone is evaluated, when ``cfg`` names another dataset (a
    transfer evaluation): the images are fed with that backbone's channels, input side and normalisation.
    """
    fed_as = None
    if trained is not None and trained.data.name != cfg.data.name:
        own = run_splits(trained)
        for info in (own.info, dataset_info(cfg.data.name)):
            if info.in_channels not in (1, 3):
                raise ConfigError(
                    f"dataset '{info.name}' has {info.in_channels}-channel images; a transfer evaluation converts "
                    "between grayscale (1) and RGB (3) only"
                )
        fed_as = BackboneInput(own.info.in_channels, own.info.mean, own.info.std, own.crop_size)
    return RunSplits(cfg.data, cfg.augment, cfg.seed, cfg.eval.classes, fed_as)
