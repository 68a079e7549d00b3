"""STL-10: torchvision's on-disk format, ``stl10_binary/{train,test,unlabeled}_X.bin`` (uint8 images stored
column-major, i.e. as (N, 3, W, H)) and ``{train,test}_y.bin`` (uint8 labels 1..10).

Parts: ``train`` (5,000 labelled images), ``unlabeled`` (100,000, label -1) and ``test`` (8,000).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dimcl.data.errors import DatasetError
from dimcl.data.formats.download import require_files
from dimcl.data.in_memory import TensorImageDataset
from dimcl.data.info import DatasetInfo

_STL_IMAGE_BYTES = 3 * 96 * 96
_STL_CHUNK = 2048  # images transposed per step while loading: bounds the temporary memory


def _read_stl_images(paths: Sequence[Path]) -> Tensor:
    """All images of the given .bin files in one contiguous uint8 tensor (N, 3, 96, 96)."""
    counts = []
    for path in paths:
        size = path.stat().st_size
        if size % _STL_IMAGE_BYTES:
            raise DatasetError(
                f"'{path}' is truncated or corrupt: {size} bytes is not a whole number of 96x96 RGB images "
                f"({_STL_IMAGE_BYTES} bytes each); delete it and get it again."
            )
        counts.append(size // _STL_IMAGE_BYTES)
    # Filled chunk by chunk so that the 100k unlabelled images (2.8 GB) never exist twice in memory.
    images = np.empty((sum(counts), 3, 96, 96), dtype=np.uint8)
    start = 0
    for path, count in zip(paths, counts, strict=True):
        with open(path, "rb") as f:
            for offset in range(0, count, _STL_CHUNK):
                n = min(_STL_CHUNK, count - offset)
                chunk = np.fromfile(f, dtype=np.uint8, count=n * _STL_IMAGE_BYTES).reshape(n, 3, 96, 96)
                images[start : start + n] = chunk.transpose(0, 1, 3, 2)
                start += n
    return torch.from_numpy(images)


def _read_stl_labels(path: Path, count: int) -> Tensor:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
    if labels.shape[0] != count or (count and not 0 <= labels.min() <= labels.max() <= 9):
        raise DatasetError(
            f"'{path}' is truncated or corrupt: expected {count} labels in 1..10 (one byte per image of the "
            f"matching _X.bin file), found {labels.shape[0]} bytes; delete it and get it again."
        )
    return torch.from_numpy(labels)


def read_stl10(
    info: DatasetInfo, root: Path, parts: tuple[str, ...], transform: Callable[[Any], Any] | None, download: bool
) -> Dataset:
    """The :data:`~dimcl.data.info.Reader` of STL-10 (parts ``train``, ``unlabeled``, ``test``)."""
    folder = root / "stl10_binary"
    needed = [folder / f"{p}_X.bin" for p in parts] + [folder / f"{p}_y.bin" for p in parts if p != "unlabeled"]
    def fetch(into: str) -> None:
        from torchvision.datasets import STL10

        STL10(into, split="train+unlabeled", download=True)

    require_files(info, root, needed, "stl10_binary", fetch, download, " (2.6 GB)")
    image_files = [folder / f"{p}_X.bin" for p in parts]
    images = _read_stl_images(image_files)
    labels = []
    for part, path in zip(parts, image_files, strict=True):
        count = path.stat().st_size // _STL_IMAGE_BYTES
        if part == "unlabeled":
            labels.append(torch.full((count,), -1, dtype=torch.long))
        else:
            labels.append(_read_stl_labels(folder / f"{part}_y.bin", count))
    classes = None
    if (folder / "class_names.txt").is_file():
        classes = (folder / "class_names.txt").read_text().split()
    return TensorImageDataset(images, torch.cat(labels), transform, classes)
