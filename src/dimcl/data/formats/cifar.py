"""CIFAR-10 / CIFAR-100: torchvision's on-disk format, Python pickles of uint8 rows (N, 3072).

Read here rather than through ``torchvision.datasets.CIFAR10``, whose md5 check rejects every file but
the official ones; the pickles are opened with :func:`~dimcl.data.safe_pickle.load_safe_pickle`, which
refuses any that would call code. Parts: ``train`` and ``test``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dimcl.data.errors import DatasetError
from dimcl.data.formats.download import require_files
from dimcl.data.in_memory import TensorImageDataset
from dimcl.data.info import DatasetInfo, Reader
from dimcl.data.safe_pickle import load_safe_pickle


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR release keeps its batches and what it calls their entries."""

    folder: str
    files: dict[str, list[str]]  # part -> batch files
    label_key: str
    meta_file: str
    names_key: str  # the class names' entry in the meta file
    torchvision_class: str


CIFAR10 = CifarLayout(
    "cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "labels", "batches.meta", "label_names", "CIFAR10",
)  # fmt: skip
CIFAR100 = CifarLayout(
    "cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", "meta", "fine_label_names",
    "CIFAR100",
)  # fmt: skip


def _load_pickle(path: Path) -> dict[str, Any]:
    entry = load_safe_pickle(path)
    if not isinstance(entry, dict):
        raise DatasetError(f"'{path}' is not a CIFAR batch: it unpickles to {type(entry).__name__}, not a dict.")
    # Python 2 pickles read with latin1 have str keys; files written with bytes keys are accepted too.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_batch(info: DatasetInfo, layout: CifarLayout, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one batch file, checked."""
    entry = _load_pickle(path)
    if "data" not in entry or layout.label_key not in entry:
        raise DatasetError(f"'{path}' is not a {info.name} batch: it lacks the 'data' or '{layout.label_key}' entry.")
    data, labels = entry["data"], entry[layout.label_key]
    if not (isinstance(data, np.ndarray) and data.dtype.kind in "ui" and data.shape[1:] == (3 * 32 * 32,)
            and (data.size == 0 or 0 <= data.min() <= data.max() <= 255)):
        shown = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(
            f"'{path}' is corrupt: expected 'data' as an array of bytes of shape (N, 3072), got {shown}."
        )
    data = data.astype(np.uint8, copy=False)
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        labels = np.empty(0)
    if labels.shape != (data.shape[0],) or (
        len(labels) and not 0 <= labels.min() <= labels.max() < info.num_classes
    ):
        raise DatasetError(
            f"'{path}' is corrupt: expected {data.shape[0]} integer labels in 0..{info.num_classes - 1} "
            f"under '{layout.label_key}', one per image."
        )
    return data.reshape(-1, 3, 32, 32), labels  # stored as R plane, G plane, B plane per image


def _class_names(folder: Path, layout: CifarLayout) -> list[str] | None:
    if not (folder / layout.meta_file).is_file():
        return None
    classes = _load_pickle(folder / layout.meta_file).get(layout.names_key)
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return None  # only used to name classes in reports: a damaged list is not worth failing for
    return classes


def cifar_reader(layout: CifarLayout) -> Reader:
    """The :data:`~dimcl.data.info.Reader` of one CIFAR release."""

    def read(
        info: DatasetInfo, root: Path, parts: tuple[str, ...], transform: Callable[[Any], Any] | None,
        download: bool,
    ) -> Dataset:
        folder = root / layout.folder
        files = [folder / f for part in parts for f in layout.files[part]]
        def fetch(into: str) -> None:
            import torchvision.datasets

            getattr(torchvision.datasets, layout.torchvision_class)(into, train=True, download=True)

        require_files(info, root, files, layout.folder, fetch, download)
        batches = [_read_batch(info, layout, path) for path in files]
        return TensorImageDataset(
            torch.from_numpy(np.concatenate([images for images, _ in batches])),
            torch.from_numpy(np.concatenate([labels for _, labels in batches])),
            transform,
            _class_names(folder, layout),
        )

    return read
