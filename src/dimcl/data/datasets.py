"""Datasets by name (Fashion-MNIST, CIFAR-10/100, STL-10, image folders), each with three splits.

Splits: ``"pretrain"`` is what self-supervised training sees, ``"train"`` the labelled training split
(kNN bank, linear probe) and ``"eval"`` the test / validation split. Every item is
``(transform(image), label)`` with label -1 where the image has none.

Fashion-MNIST, CIFAR and STL-10 are read straight from their distribution formats into one uint8
tensor of shape (N, C, H, W), so an item is a tensor index: no per-item file I/O and no PIL round trip
before the augmentations (which run on uint8 tensors, see :mod:`dimcl.data.views`). Image folders are
decoded with PIL on every access, as usual for ImageNet-sized data.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import stat
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset

from dimcl.errors import BadInputError
from dimcl.names import did_you_mean

SPLITS = ("pretrain", "train", "eval")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the library needs to know about a dataset before opening it."""

    name: str
    image_size: int  # side of the (square) images the recipes train on
    in_channels: int  # 1 (grayscale) or 3 (RGB)
    num_classes: int | None  # None when it depends on the data (image folders)
    mean: tuple[float, ...]  # per-channel normalisation constants, one per input channel
    std: tuple[float, ...]
    default_root: str | None  # where the files are looked for when no root is given


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("fashion_mnist", 28, 1, 10, (0.2860,), (0.3530,), "/usr/share/datasets/fashion-mnist"),
        DatasetInfo("cifar10", 32, 3, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), None),
        DatasetInfo("cifar100", 32, 3, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), None),
        DatasetInfo("stl10", 96, 3, 10, _IMAGENET_MEAN, _IMAGENET_STD, None),
        DatasetInfo("imagefolder", 224, 3, None, _IMAGENET_MEAN, _IMAGENET_STD, None),
    )
}


class DatasetError(BadInputError):
    """A dataset that cannot be used as given: bad name, split, subset, or a corrupt file."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are not where they were looked for (also a FileNotFoundError)."""


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
    resolved = _resolve_root(info, root)
    dataset = _BUILDERS[info.name](resolved, split, transform, download)
    if isinstance(dataset, ImageFolderDataset):
        if on_bad_image not in ON_BAD_IMAGE:
            raise DatasetError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}.")
        dataset.on_bad_image = on_bad_image
    if subset is None:
        return dataset
    if subset > len(dataset):
        raise DatasetError(
            f"data subset {subset} is larger than the {name} '{split}' split, which has {len(dataset)} "
            f"images; use a subset of at most {len(dataset)} or none."
        )
    return seeded_subset(dataset, subset, seed)


def seeded_subset(dataset: Dataset, size: int, seed: int) -> Subset:
    """A fixed random subset of ``size`` items, the same for a given ``seed`` in every process."""
    generator = torch.Generator().manual_seed(seed)
    # Sorted so that reading stays in file order (matters for image folders on spinning disks).
    indices = torch.randperm(len(dataset), generator=generator)[:size].sort().values
    return Subset(dataset, indices.tolist())


def labels_of(dataset: Dataset) -> Tensor | None:
    """Integer labels of every item (int64, -1 where unlabelled) without decoding any image.

    Understands this module's datasets, ``Subset`` and ``ConcatDataset`` of them, and any dataset with
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


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImageError(DatasetError):
    """An image file that cannot be decoded, with ``data.on_bad_image=fail``."""


ON_BAD_IMAGE = ("fail", "skip")


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
        if on_bad_image not in ON_BAD_IMAGE:
            raise DatasetError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}.")
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long) if labels is not None else None
        self.classes = list(classes) if classes is not None else None
        self.transform = transform
        self.on_bad_image = on_bad_image
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
        raise ValueError("32-bit floating-point image: no known value range to map to 8 bits")
    return image.convert("RGB")


def bad_image_count(dataset: Dataset) -> int:
    """Unreadable images skipped so far by the image folders inside ``dataset`` (0 for other datasets)."""
    if isinstance(dataset, Subset):
        return bad_image_count(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return sum(bad_image_count(d) for d in dataset.datasets)
    return dataset.bad_images if isinstance(dataset, ImageFolderDataset) else 0


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _resolve_root(info: DatasetInfo, root: str | os.PathLike[str] | None) -> Path:
    if root is None or str(root) == "":
        if info.default_root is None:
            raise DatasetNotFoundError(
                f"dataset '{info.name}' has no default location; set data.root to the folder that holds "
                f"its files (or pass root= to build_dataset)."
            )
        root = info.default_root
    return Path(root).expanduser()


def _download_with_torchvision(info: DatasetInfo, root: Path, fetch: Callable[[str], Any]) -> None:
    """Run a torchvision downloader into ``root``, turning its failures into one clear error."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch(str(root))
    except Exception as err:  # network, checksum and disk errors all end the same way for the user
        raise DatasetError(
            f"downloading {info.name} into '{root}' with torchvision failed ({type(err).__name__}: {err}); "
            f"check the network connection and that '{root}' is writable, or put the files there yourself."
        ) from err


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files (gzipped or not), flat under root or in torchvision's FashionMNIST/raw/.

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, cols)
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
_FASHION_MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "eval": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
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
            f"is corrupt or not an {'image' if magic == _IDX_IMAGES_MAGIC else 'label'} file."
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


def _build_fashion_mnist(root: Path, split: str, transform, download: bool) -> Dataset:
    info = DATASETS["fashion_mnist"]
    stems = _FASHION_MNIST_STEMS["eval" if split == "eval" else "train"]  # pretrain = train
    paths = _find_fashion_mnist(root, stems)
    if paths is None and download:
        from torchvision.datasets import FashionMNIST

        _download_with_torchvision(info, root, lambda r: FashionMNIST(r, train=split != "eval", download=True))
        paths = _find_fashion_mnist(root, stems)
    if paths is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST files not found under '{root}' (looked for {stems[0]}[.gz] and {stems[1]}[.gz] "
            f"in '{root}' and in '{root / 'FashionMNIST' / 'raw'}'). Install them with "
            f"`apt-get install dataset-fashion-mnist` (they land in {info.default_root}, the default "
            f"data.root), or set data.download=true to fetch them with torchvision into data.root."
        )
    images = read_idx(paths[0], _IDX_IMAGES_MAGIC)
    labels = read_idx(paths[1], _IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"'{paths[0]}' holds {images.shape[0]} images but '{paths[1]}' holds {labels.shape[0]} labels; "
            f"one of the two files is from another release or corrupt."
        )
    if labels.size and labels.max() >= info.num_classes:
        raise DatasetError(
            f"'{paths[1]}' is corrupt: it holds label {int(labels.max())}, but Fashion-MNIST labels are 0..9."
        )
    return TensorImageDataset(
        torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28)
        torch.from_numpy(labels).long(),
        transform,
        FASHION_MNIST_CLASSES,
    )


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: torchvision's on-disk format (python pickles). Read here rather than through
# torchvision.datasets.CIFAR10, whose md5 check rejects every file but the official ones. A plain
# unpickler calls whatever the file names (os.system included), so these files are read with one that
# admits only what the format needs: see _SafeUnpickler.

_CIFAR_LAYOUT = {
    # name: (folder, train files, test files, label key, meta file, class-name key, torchvision class)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        "batches.meta",
        "label_names",
        "CIFAR10",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names", "CIFAR100"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that names a callable other than the few that rebuild plain data and numpy arrays."""


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, bytes, numbers and numpy arrays / scalars / dtypes only.

    Containers and scalars are pickle opcodes that call nothing; everything else is a global the file
    asks for by name, and only the constructors below are looked up (numpy 1.x and 2.x module names;
    ``_codecs.encode`` is how Python 3 pickles bytes at protocol 2). None of them runs code of the
    file's choosing: an object array's items are unpickled by this same unpickler.
    """

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    })  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(f"{module}.{name}")
        return super().find_class(module, name)


def load_safe_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle a data file with :class:`_SafeUnpickler` (Python 2 pickles read as latin1).

    Raises :class:`DatasetError` naming the file when it asks for anything else, or is damaged.
    """
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as err:
        raise DatasetError(
            f"refusing to read '{path}': it is a pickle that calls {err}, which could run arbitrary code; a data "
            "file may hold only dicts, lists, strings, numbers and numpy arrays. Replace it with the file from "
            "the dataset's official archive."
        ) from None
    except Exception as err:  # unpickling fails in many ways on a damaged file
        raise DatasetError(
            f"could not read '{path}': it is truncated or corrupt ({type(err).__name__}: {err}); delete it "
            f"and get it again."
        ) from err


def _load_pickle(path: Path) -> dict[str, Any]:
    entry = load_safe_pickle(path)
    if not isinstance(entry, dict):
        raise DatasetError(f"'{path}' is not a CIFAR batch: it unpickles to {type(entry).__name__}, not a dict.")
    # Python 2 pickles read with latin1 have str keys; files written with bytes keys are accepted too.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _build_cifar(name: str) -> Callable[..., Dataset]:
    def build(root: Path, split: str, transform, download: bool) -> Dataset:
        info = DATASETS[name]
        folder_name, train_files, test_files, label_key, meta_file, names_key, tv_class = _CIFAR_LAYOUT[name]
        folder = root / folder_name
        files = [folder / f for f in (test_files if split == "eval" else train_files)]  # pretrain = train
        if not all(f.is_file() for f in files) and download:
            import torchvision.datasets

            downloader = getattr(torchvision.datasets, tv_class)
            _download_with_torchvision(info, root, lambda r: downloader(r, train=True, download=True))
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{name} files not found: '{missing[0]}' does not exist (data.root is '{root}', which should "
                f"hold the folder {folder_name}/ in torchvision's format). Set data.root to the folder that "
                f"holds {folder_name}/, or set data.download=true to fetch it with torchvision."
            )
        images, labels = [], []
        for path in files:
            entry = _load_pickle(path)
            if "data" not in entry or label_key not in entry:
                raise DatasetError(f"'{path}' is not a {name} batch: it lacks the 'data' or '{label_key}' entry.")
            data, batch_labels = entry["data"], entry[label_key]
            if not (isinstance(data, np.ndarray) and data.dtype.kind in "ui" and data.shape[1:] == (3 * 32 * 32,)
                    and (data.size == 0 or 0 <= data.min() <= data.max() <= 255)):
                shown = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
                raise DatasetError(
                    f"'{path}' is corrupt: expected 'data' as an array of bytes of shape (N, 3072), got {shown}."
                )
            data = data.astype(np.uint8, copy=False)
            try:
                batch_labels = np.asarray(batch_labels, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                batch_labels = np.empty(0)
            if batch_labels.shape != (data.shape[0],) or (
                len(batch_labels) and not 0 <= batch_labels.min() <= batch_labels.max() < info.num_classes
            ):
                raise DatasetError(
                    f"'{path}' is corrupt: expected {data.shape[0]} integer labels in 0..{info.num_classes - 1} "
                    f"under '{label_key}', one per image."
                )
            images.append(data.reshape(-1, 3, 32, 32))  # stored as R plane, G plane, B plane per image
            labels.append(batch_labels)
        classes = None
        if (folder / meta_file).is_file():
            classes = _load_pickle(folder / meta_file).get(names_key)
            if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
                classes = None  # only used to name classes in reports: a damaged list is not worth failing for
        return TensorImageDataset(
            torch.from_numpy(np.concatenate(images)),
            torch.from_numpy(np.concatenate(labels)),
            transform,
            classes,
        )

    return build


# --------------------------------------------------------------------------------------------------
# STL-10: torchvision's on-disk format, stl10_binary/{train,test,unlabeled}_X.bin (uint8 images stored
# column-major, i.e. as (N, 3, W, H)) and {train,test}_y.bin (uint8 labels 1..10).

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


def _build_stl10(root: Path, split: str, transform, download: bool) -> Dataset:
    info = DATASETS["stl10"]
    folder = root / "stl10_binary"
    parts = {"pretrain": ["train", "unlabeled"], "train": ["train"], "eval": ["test"]}[split]
    needed = [folder / f"{p}_X.bin" for p in parts] + [folder / f"{p}_y.bin" for p in parts if p != "unlabeled"]
    if not all(f.is_file() for f in needed) and download:
        from torchvision.datasets import STL10

        _download_with_torchvision(info, root, lambda r: STL10(r, split="train+unlabeled", download=True))
    missing = [f for f in needed if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"stl10 files not found: '{missing[0]}' does not exist (data.root is '{root}', which should hold "
            f"the folder stl10_binary/ in torchvision's format). Set data.root to the folder that holds "
            f"stl10_binary/, or set data.download=true to fetch it with torchvision (2.6 GB)."
        )
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


# --------------------------------------------------------------------------------------------------
# Image folders: root/train/<class>/*.jpg for training, root/val/<class>/*.jpg for evaluation. A train
# folder of loose images (no class subfolders) is fine for pretraining; its labels are -1.


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images_under(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()  # walk order is file-system dependent; sorted keeps item order reproducible
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return found


def _build_imagefolder(root: Path, split: str, transform, download: bool) -> Dataset:
    layout = (
        "imagefolder expects <data.root>/train/<class>/<image> for training and "
        "<data.root>/val/<class>/<image> for evaluation"
    )
    if download:
        raise DatasetError(f"imagefolder cannot be downloaded; {layout}. Set data.download=false.")
    train_dir, val_dir = root / "train", root / "val"
    folder = val_dir if split == "eval" else train_dir
    if not folder.is_dir():
        raise DatasetNotFoundError(f"image folder '{folder}' does not exist; {layout} (data.root is '{root}').")
    # The class -> index map comes from the train folder for every split, so that a validation set
    # missing a class still labels the others as the kNN bank and linear probe (built on train) do.
    classes = _class_folders(train_dir) if train_dir.is_dir() else _class_folders(folder)
    if split == "eval" and train_dir.is_dir():
        unknown = sorted(set(_class_folders(folder)) - set(classes))
        if unknown:
            raise DatasetError(
                f"class folder '{folder / unknown[0]}' has no counterpart in '{train_dir}'; the validation "
                f"classes must be a subset of the training classes ({len(classes)} found)."
            )
    if _class_folders(folder):
        paths, labels = [], []
        for index, name in enumerate(classes):
            if (folder / name).is_dir():
                found = _images_under(folder / name)
                paths.extend(found)
                labels.extend([index] * len(found))
        dataset = ImageFolderDataset(paths, labels, classes, transform)
    else:  # loose images only: unlabelled
        paths = sorted(str(folder / e.name) for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
        dataset = ImageFolderDataset(paths, None, None, transform)
    if len(dataset) == 0:
        raise DatasetNotFoundError(
            f"image folder '{folder}' holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}); {layout}."
        )
    return dataset


_BUILDERS: dict[str, Callable[[Path, str, Any, bool], Dataset]] = {
    "fashion_mnist": _build_fashion_mnist,
    "cifar10": _build_cifar("cifar10"),
    "cifar100": _build_cifar("cifar100"),
    "stl10": _build_stl10,
    "imagefolder": _build_imagefolder,
}
