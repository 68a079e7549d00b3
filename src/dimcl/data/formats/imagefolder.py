"""Image folders: ``root/train/<class>/*.jpg`` for training, ``root/val/<class>/*.jpg`` for evaluation.

Parts: ``train`` and ``val``, the two folders. A train folder of loose images (no class subfolders) is
fine for pretraining; its labels are -1. Images are decoded with PIL on every access, as usual for
ImageNet-sized data.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dimcl.data.errors import BadImageError, DatasetError, DatasetNotFoundError
from dimcl.data.info import DatasetInfo

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: the values of ``data.on_bad_image``
ON_BAD_IMAGE = ("fail", "skip")

_LAYOUT = (
    "imagefolder expects <data.root>/train/<class>/<image> for training and "
    "<data.root>/val/<class>/<image> for evaluation"
)


def check_on_bad_image(value: str) -> str:
    if value not in ON_BAD_IMAGE:
        raise DatasetError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {value!r}.")
    return value


class ImageFolderDataset(Dataset):
    """Image files decoded with PIL (as RGB) on every access; labels from class subfolders, or None.

    ``on_bad_image``: ``"fail"`` raises :class:`BadImageError` naming the unreadable file; ``"skip"`` serves
    the next readable image in its place and counts the file in :attr:`bad_images` (a counter shared with
    DataLoader workers, so the training loop can report it).
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int] | None,
        classes: Sequence[str] | None,
        transform: Callable[[Any], Any] | None = None,
        on_bad_image: str = "fail",
    ) -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long) if labels is not None else None
        self.classes = list(classes) if classes is not None else None
        self.transform = transform
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self._label_list = list(labels) if labels is not None else None
        # Shared memory, so counts made in DataLoader worker processes reach the main process.
        self._bad_count = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def bad_images(self) -> int:
        """How many unreadable files were skipped so far (every access counts)."""
        return int(self._bad_count)

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> Image.Image:
        # O_NONBLOCK: a FIFO named like an image would otherwise block the open forever.
        fd = os.open(self.paths[index], os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError("not a regular file")  # a FIFO, a device (/dev/zero never ends), a socket
            with warnings.catch_warnings():
                # Over Image.MAX_IMAGE_PIXELS PIL only warns, then decodes gigabytes: a decompression bomb.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(f)
                image.load()
            return _to_rgb(image)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for attempt in range(len(self.paths)):
            current = (index + attempt) % len(self.paths)
            try:
                image = self._read(current)
                break
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning) as err:
                if self.on_bad_image == "fail":
                    raise BadImageError(
                        f"cannot read image '{self.paths[current]}' ({type(err).__name__}: {err}); remove or "
                        "replace the file, or set data.on_bad_image=skip to skip unreadable images"
                    ) from None
                self._bad_count += 1
        else:
            raise BadImageError(f"none of the {len(self.paths)} images under this folder can be read")
        label = -1 if self._label_list is None else self._label_list[current]
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL decodes: CMYK, palette and grayscale through PIL; 16-bit grayscale
    scaled to 8 bits (PIL's own conversion clips it at 255, turning most of such an image white)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return Image.fromarray(pixels.astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        # caught in __getitem__ with PIL's own decoding errors, and reported as a BadImageError
        raise ValueError("32-bit floating-point image: no known value range to map to 8 bits")
    return image.convert("RGB")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images_under(folder: Path) -> list[str]:
    """Every image file under ``folder``, in sorted order. Links to directories are followed (a class folder
    may live elsewhere), but each real directory is visited once: a link back up (``up -> ..``) or to
    itself (``loop -> .``) would otherwise walk the same images again, or forever; a link to a folder
    above ``folder`` (its parents count as visited) would bring in other classes' images."""
    found = []
    seen = {_identity(folder), *(_identity(parent) for parent in folder.resolve().parents)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(dirnames):  # walk order is file-system dependent; sorted keeps item order reproducible
            identity = _identity(Path(dirpath) / name)
            if identity is not None and identity not in seen:
                seen.add(identity)
                kept.append(name)
        dirnames[:] = kept
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return found


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory ``path`` is or links to; None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _classes_for(root: Path, folder: Path, part: str) -> list[str]:
    """The class -> index map: from the train folder for every part, so that a validation set missing a
    class still labels the others as the kNN bank and linear probe (built on train) do."""
    train_dir = root / "train"
    classes = _class_folders(train_dir) if train_dir.is_dir() else _class_folders(folder)
    if part != "train" and train_dir.is_dir():
        unknown = sorted(set(_class_folders(folder)) - set(classes))
        if unknown:
            raise DatasetError(
                f"class folder '{folder / unknown[0]}' has no counterpart in '{train_dir}'; the validation "
                f"classes must be a subset of the training classes ({len(classes)} found)."
            )
    return classes


def _scan(root: Path, part: str) -> tuple[list[str], list[int] | None, list[str] | None]:
    """(paths, labels or None, class names or None) of one part's folder."""
    folder = root / part
    if not folder.is_dir():
        raise DatasetNotFoundError(f"image folder '{folder}' does not exist; {_LAYOUT} (data.root is '{root}').")
    classes = _classes_for(root, folder, part)
    if not _class_folders(folder):  # loose images only: unlabelled
        paths = sorted(str(folder / e.name) for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
        found: tuple[list[str], list[int] | None, list[str] | None] = (paths, None, None)
    else:
        paths, labels = [], []
        for index, name in enumerate(classes):
            if (folder / name).is_dir():
                images = _images_under(folder / name)
                paths.extend(images)
                labels.extend([index] * len(images))
        found = (paths, labels, classes)
    if not found[0]:
        raise DatasetNotFoundError(
            f"image folder '{folder}' holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}); {_LAYOUT}."
        )
    return found


def read_image_folder(
    info: DatasetInfo, root: Path, parts: tuple[str, ...], transform: Callable[[Any], Any] | None, download: bool
) -> Dataset:
    """The :data:`~dimcl.data.info.Reader` of image folders (parts ``train``, ``val``)."""
    if download:
        raise DatasetError(f"imagefolder cannot be downloaded; {_LAYOUT}. Set data.download=false.")
    scanned = [_scan(root, part) for part in parts]
    paths = [p for part_paths, _, _ in scanned for p in part_paths]
    classes = next((c for _, _, c in scanned if c is not None), None)
    labels = None
    if any(part_labels is not None for _, part_labels, _ in scanned):
        labels = [x for p, part_labels, _ in scanned for x in (part_labels or [-1] * len(p))]
    return ImageFolderDataset(paths, labels, classes, transform)
