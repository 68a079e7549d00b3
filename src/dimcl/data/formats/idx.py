"""Fashion-MNIST: IDX files (gzipped or not), flat under root or in torchvision's ``FashionMNIST/raw/``.

Parts: ``train`` (60,000 images) and ``test`` (10,000), read into one uint8 tensor (N, 1, 28, 28).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dimcl.data.errors import DatasetError, DatasetNotFoundError
from dimcl.data.formats.download import download_with_torchvision
from dimcl.data.in_memory import TensorImageDataset
from dimcl.data.info import DatasetInfo

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
_FASHION_MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes, checking its magic number and length."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetError(
            f"could not read '{path}': it is truncated or corrupt ({type(err).__name__}: {err}); delete it "
            f"and get it again."
        ) from err
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        shown = "none (file shorter than 4 bytes)" if found is None else f"{found:#010x}"
        raise DatasetError(
            f"'{path}' is not the IDX file expected: magic number {shown}, expected {magic:#010x}; the file "
            f"is corrupt or not an {'image' if magic == IDX_IMAGES_MAGIC else 'label'} file."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"'{path}' is truncated: it ends inside its {header}-byte IDX header.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)  # Python ints: a hostile header cannot wrap the product around
    if len(data) - header != expected:
        raise DatasetError(
            f"'{path}' is truncated or corrupt: its header announces {shape} = {expected} bytes of data but "
            f"{len(data) - header} follow; delete it and get it again."
        )
    # copy(): frombuffer gives a read-only view of the bytes, which torch would warn about.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find_fashion_mnist(root: Path, stems: Sequence[str]) -> list[Path] | None:
    for folder in (root, root / "FashionMNIST" / "raw"):
        found = []
        for stem in stems:
            candidates = [folder / f"{stem}.gz", folder / stem]
            found.append(next((c for c in candidates if c.is_file()), None))
        if all(found):
            return found
    return None


def _read_part(info: DatasetInfo, root: Path, part: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28), labels (N,)) of one part, both uint8."""
    stems = _FASHION_MNIST_STEMS[part]
    paths = _find_fashion_mnist(root, stems)
    if paths is None and download:
        from torchvision.datasets import FashionMNIST

        download_with_torchvision(info, root, lambda r: FashionMNIST(r, train=part == "train", download=True))
        paths = _find_fashion_mnist(root, stems)
    if paths is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST files not found under '{root}' (looked for {stems[0]}[.gz] and {stems[1]}[.gz] "
            f"in '{root}' and in '{root / 'FashionMNIST' / 'raw'}'). Install them with "
            f"`apt-get install dataset-fashion-mnist` (they land in {info.default_root}, the default "
            f"data.root), or set data.download=true to fetch them with torchvision into data.root."
        )
    images = read_idx(paths[0], IDX_IMAGES_MAGIC)
    labels = read_idx(paths[1], IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"'{paths[0]}' holds {images.shape[0]} images but '{paths[1]}' holds {labels.shape[0]} labels; "
            f"one of the two files is from another release or corrupt."
        )
    if labels.size and labels.max() >= info.num_classes:
        raise DatasetError(
            f"'{paths[1]}' is corrupt: it holds label {int(labels.max())}, but Fashion-MNIST labels are 0..9."
        )
    return images, labels


def read_fashion_mnist(
    info: DatasetInfo, root: Path, parts: tuple[str, ...], transform: Callable[[Any], Any] | None, download: bool
) -> Dataset:
    """The :data:`~dimcl.data.info.Reader` of Fashion-MNIST (parts ``train``, ``test``)."""
    read = [_read_part(info, root, part, download) for part in parts]
    images = read[0][0] if len(read) == 1 else np.concatenate([r[0] for r in read])
    labels = read[0][1] if len(read) == 1 else np.concatenate([r[1] for r in read])
    return TensorImageDataset(
        torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28)
        torch.from_numpy(labels).long(),
        transform,
        FASHION_MNIST_CLASSES,
    )
