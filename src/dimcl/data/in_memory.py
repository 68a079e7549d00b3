"""Images held in memory as one uint8 tensor: how the small distribution formats are served.

An item is a tensor index: no per-item file I/O and no PIL round trip before the augmentations (which
run on uint8 tensors, see :mod:`dimcl.data.views`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W); an item is ``(transform(images[i]), label)``.

    ``labels`` is an int64 tensor (N,) with -1 for unlabelled images, or None when none has a label.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        transform: Callable[[Any], Any] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.transform = transform
        self.classes = list(classes) if classes is not None else None
        # A Python list makes the per-item label lookup ~50 ns instead of a tensor index + item().
        self._label_list = labels.tolist() if labels is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        label = -1 if self._label_list is None else self._label_list[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, label
