"""Subsets of datasets, and what can be read through ``Subset`` / ``ConcatDataset`` without decoding an
image: every item's label, and how many unreadable images were skipped."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset

from dimcl.data.formats.imagefolder import ImageFolderDataset


def seeded_subset(dataset: Dataset, size: int, seed: int) -> Subset:
    """A fixed random subset of ``size`` items, the same for a given ``seed`` in every process."""
    generator = torch.Generator().manual_seed(seed)
    # Sorted so that reading stays in file order (matters for image folders on spinning disks).
    indices = torch.randperm(len(dataset), generator=generator)[:size].sort().values
    return Subset(dataset, indices.tolist())


def labels_of(dataset: Dataset) -> Tensor | None:
    """Integer labels of every item (int64, -1 where unlabelled) without decoding any image.

    Understands this package's datasets, ``Subset`` and ``ConcatDataset`` of them, and any dataset with
    a ``labels`` or ``targets`` attribute (torchvision's). None when the dataset has no labels at all.
    """
    if isinstance(dataset, Subset):
        base = labels_of(dataset.dataset)
        return None if base is None else base[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, ConcatDataset):
        parts = [labels_of(part) for part in dataset.datasets]
        if all(part is None for part in parts):
            return None
        return torch.cat(
            [
                torch.full((len(d),), -1, dtype=torch.long) if p is None else p
                for d, p in zip(dataset.datasets, parts, strict=True)
            ]
        )
    for attribute in ("labels", "targets"):
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            # clone: callers may edit the result; it must not alias the dataset's own labels.
            return torch.as_tensor(np.asarray(labels), dtype=torch.long).clone()
    return None


def bad_image_count(dataset: Dataset) -> int:
    """Unreadable images skipped so far by the image folders inside ``dataset`` (0 for other datasets)."""
    if isinstance(dataset, Subset):
        return bad_image_count(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return sum(bad_image_count(d) for d in dataset.datasets)
    return dataset.bad_images if isinstance(dataset, ImageFolderDataset) else 0
