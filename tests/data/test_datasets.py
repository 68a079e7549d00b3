"""Datasets: each on-disk format written small in tmp_path, then read back through build_dataset."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Subset

from dimcl.data import (
    DATASETS,
    DatasetError,
    DatasetNotFoundError,
    TensorImageDataset,
    build_dataset,
    dataset_info,
    labels_of,
)

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# --------------------------------------------------------------------------------------------------
# Writers for the distribution formats


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """IDX file of unsigned bytes: magic 0x0000080<ndim>, the dimensions as big-endian int32, the data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def fashion_arrays(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count, dtype=np.uint8)


def write_fashion_mnist(folder: Path, compress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": fashion_arrays(12, 0), "t10k": fashion_arrays(5, 1)}
    for prefix, (images, labels) in arrays.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return arrays


def cifar_images(count: int, offset: int) -> np.ndarray:
    """(count, 3072) rows: image i has R plane = offset + i, G plane = 100 + ..., B plane = 200 + ..."""
    planes = [np.full((count, 1024), base + offset, dtype=np.uint8) + np.arange(count, dtype=np.uint8)[:, None]
              for base in (0, 100, 200)]  # fmt: skip
    return np.concatenate(planes, axis=1)


def write_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        batch = {"data": cifar_images(2, 2 * (b - 1)), "labels": [b - 1, b + 4]}
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(batch))
    # Bytes keys, as a pickle written by Python 3 from the original files would have.
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": cifar_images(3, 50), b"labels": [7, 8, 9]}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train = {"data": cifar_images(4, 0), "fine_labels": [10, 20, 30, 99], "coarse_labels": [1, 2, 3, 4]}
    test = {"data": cifar_images(2, 9), "fine_labels": [55, 0], "coarse_labels": [5, 6]}
    (folder / "train").write_bytes(pickle.dumps(train))
    (folder / "test").write_bytes(pickle.dumps(test))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))


def stl_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3, 96, 96), dtype=np.uint8)


def write_stl10(root: Path) -> dict[str, np.ndarray]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    parts = {"train": stl_images(4, 0), "test": stl_images(3, 1), "unlabeled": stl_images(5, 2)}
    for part, images in parts.items():
        # STL-10 stores every image column-major: (3, W, H) in C order.
        (folder / f"{part}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
    (folder / "train_y.bin").write_bytes(bytes([1, 2, 10, 5]))
    (folder / "test_y.bin").write_bytes(bytes([3, 3, 7]))
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    return parts


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 16), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


# --------------------------------------------------------------------------------------------------
# Registry, names, splits


def test_registry_constants() -> None:
    assert set(DATASETS) == {"fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder"}
    fmnist = dataset_info("fashion_mnist")
    assert (fmnist.image_size, fmnist.in_channels, fmnist.num_classes) == (28, 1, 10)
    assert fmnist.mean == (0.2860,) and fmnist.std == (0.3530,)
    assert fmnist.default_root == "/usr/share/datasets/fashion-mnist"
    assert dataset_info("cifar100").num_classes == 100 and dataset_info("stl10").image_size == 96
    assert dataset_info("imagefolder").image_size == 224 and dataset_info("imagefolder").num_classes is None
    for info in DATASETS.values():
        assert len(info.mean) == len(info.std) == info.in_channels


def test_unknown_dataset_name_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar-10'.*fashion_mnist.*Did you mean 'cifar10'"):
        build_dataset("cifar-10", tmp_path, "train")
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        dataset_info("mnist")


def test_unknown_split_names_the_accepted_ones(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match=r"unknown split 'test'.*pretrain, train, eval"):
        build_dataset("fashion_mnist", tmp_path, "test")


def test_no_default_root_asks_for_data_root() -> None:
    with pytest.raises(DatasetNotFoundError, match=r"cifar10.*data\.root"):
        build_dataset("cifar10", None, "train")


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST


def test_fashion_mnist_splits_items_and_labels(tmp_path: Path) -> None:
    arrays = write_fashion_mnist(tmp_path)
    pretrain = build_dataset("fashion_mnist", tmp_path, "pretrain")
    train = build_dataset("fashion_mnist", tmp_path, "train")
    test = build_dataset("fashion_mnist", tmp_path, "eval")
    assert len(pretrain) == len(train) == 12 and len(test) == 5
    assert isinstance(train, TensorImageDataset) and train.images.shape == (12, 1, 28, 28)
    image, label = test[3]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
    assert torch.equal(image[0], torch.from_numpy(arrays["t10k"][0][3]))
    assert isinstance(label, int) and label == int(arrays["t10k"][1][3])
    assert torch.equal(labels_of(train), torch.from_numpy(arrays["train"][1]).long())
    assert labels_of(train).dtype == torch.long
    assert train.classes is not None and len(train.classes) == 10


def test_fashion_mnist_torchvision_raw_layout_uncompressed(tmp_path: Path) -> None:
    arrays = write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", compress=False)
    test = build_dataset("fashion_mnist", tmp_path, "eval")
    assert len(test) == 5 and torch.equal(test[0][0][0], torch.from_numpy(arrays["t10k"][0][0]))


def test_fashion_mnist_transform_is_applied(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    dataset = build_dataset("fashion_mnist", tmp_path, "train", transform=lambda x: x.float() / 255)
    image, _ = dataset[0]
    assert image.dtype == torch.float32 and image.max() <= 1


def test_fashion_mnist_missing_files_explain_both_ways_to_get_them(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as caught:
        build_dataset("fashion_mnist", missing, "train")
    message = str(caught.value)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)
    assert "\n" not in message


def test_fashion_mnist_truncated_gzip_is_reported(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz.*truncated or corrupt"):
        build_dataset("fashion_mnist", tmp_path, "train")


def test_fashion_mnist_short_payload_is_reported(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-28]))  # one row short
    with pytest.raises(DatasetError, match=r"t10k-images.*truncated or corrupt.*3920 bytes.*3892"):
        build_dataset("fashion_mnist", tmp_path, "eval")


def test_fashion_mnist_wrong_magic_number_is_reported(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    # A labels file where the images should be.
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DatasetError, match=r"magic number 0x00000801, expected 0x00000803"):
        build_dataset("fashion_mnist", tmp_path, "pretrain")


def test_fashion_mnist_label_count_mismatch_is_reported(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DatasetError, match="12 images but .* 11 labels"):
        build_dataset("fashion_mnist", tmp_path, "train")


def test_fashion_mnist_download_uses_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    def fake_downloader(root: str, train: bool, download: bool) -> None:  # writes what torchvision would
        calls.append((root, train, download))
        write_fashion_mnist(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_downloader)
    dataset = build_dataset("fashion_mnist", tmp_path / "new", "eval", download=True)
    assert len(dataset) == 5 and calls == [(str(tmp_path / "new"), False, True)]


def test_failed_download_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetError, match=r"downloading fashion_mnist into '.*new'.*failed.*RuntimeError"):
        build_dataset("fashion_mnist", tmp_path / "new", "train", download=True)


@pytest.mark.skipif(not (REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="no Debian copy")
def test_real_fashion_mnist_files() -> None:
    train = build_dataset("fashion_mnist", None, "train")
    test = build_dataset("fashion_mnist", None, "eval")
    assert len(train) == 60000 and len(test) == 10000
    image, label = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= label < 10
    assert torch.equal(labels_of(train).unique(), torch.arange(10))
    assert torch.equal(labels_of(test).bincount(), torch.full((10,), 1000))


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


def test_cifar10_splits_and_pixel_layout(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    pretrain = build_dataset("cifar10", tmp_path, "pretrain")
    train = build_dataset("cifar10", tmp_path, "train")
    test = build_dataset("cifar10", tmp_path, "eval")
    assert len(pretrain) == len(train) == 10 and len(test) == 3
    image, label = train[3]  # batch 2, second image: offset 2 + 1
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert [image[c].unique().tolist() for c in range(3)] == [[3], [103], [203]]
    assert label == 6
    assert labels_of(train).tolist() == [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]
    assert labels_of(test).tolist() == [7, 8, 9] and test[2][0][0, 0, 0] == 52
    assert train.classes[0] == "airplane"


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    train = build_dataset("cifar100", tmp_path, "train")
    test = build_dataset("cifar100", tmp_path, "eval")
    assert len(train) == 4 and len(test) == 2
    assert labels_of(train).tolist() == [10, 20, 30, 99] and test[0][1] == 55
    assert train[0][0].shape == (3, 32, 32) and len(train.classes) == 100


def test_cifar_missing_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py[/\\]data_batch_1.*data\.download"):
        build_dataset("cifar10", tmp_path, "pretrain")
    with pytest.raises(DatasetNotFoundError, match=r"cifar-100-python[/\\]test"):
        build_dataset("cifar100", tmp_path, "eval")


def test_cifar_corrupt_pickle_is_reported(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"test_batch.*truncated or corrupt"):
        build_dataset("cifar10", tmp_path, "eval")


# --------------------------------------------------------------------------------------------------
# STL-10


def test_stl10_splits_labels_and_orientation(tmp_path: Path) -> None:
    parts = write_stl10(tmp_path)
    pretrain = build_dataset("stl10", tmp_path, "pretrain")
    train = build_dataset("stl10", tmp_path, "train")
    test = build_dataset("stl10", tmp_path, "eval")
    assert (len(pretrain), len(train), len(test)) == (9, 4, 3)
    assert labels_of(pretrain).tolist() == [0, 1, 9, 4, -1, -1, -1, -1, -1]
    assert labels_of(train).tolist() == [0, 1, 9, 4] and labels_of(test).tolist() == [2, 2, 6]
    # Read back in (C, H, W) order, not the file's column-major order.
    assert torch.equal(train[1][0], torch.from_numpy(parts["train"][1]))
    image, label = pretrain[6]
    assert torch.equal(image, torch.from_numpy(parts["unlabeled"][2])) and label == -1
    assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
    assert pretrain.images.is_contiguous() and train.classes[9] == "class9"


def test_stl10_truncated_files_are_reported(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "unlabeled_X.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"unlabeled_X\.bin.*truncated or corrupt"):
        build_dataset("stl10", tmp_path, "pretrain")
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([3, 3]))
    with pytest.raises(DatasetError, match=r"test_y\.bin.*expected 3 labels"):
        build_dataset("stl10", tmp_path, "eval")


def test_stl10_missing_unlabeled_only_matters_for_pretraining(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert len(build_dataset("stl10", tmp_path, "train")) == 4
    with pytest.raises(DatasetNotFoundError, match=r"unlabeled_X\.bin"):
        build_dataset("stl10", tmp_path, "pretrain")


# --------------------------------------------------------------------------------------------------
# Image folders


def test_imagefolder_classes_and_splits(tmp_path: Path) -> None:
    for i in range(2):
        write_png(tmp_path / "train" / "cat" / f"{i}.png", (255, 0, 0))
    for i in range(3):
        write_png(tmp_path / "train" / "dog" / f"{i}.jpg", (0, 0, 255))
    write_png(tmp_path / "train" / "dog" / "gray.png", (128, 0, 0), mode="L")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "val" / "dog" / "0.png", (0, 0, 255))  # no cat in val
    pretrain = build_dataset("imagefolder", tmp_path, "pretrain")
    train = build_dataset("imagefolder", tmp_path, "train")
    val = build_dataset("imagefolder", tmp_path, "eval")
    assert len(pretrain) == len(train) == 6 and len(val) == 1
    assert labels_of(train).tolist() == [0, 0, 1, 1, 1, 1] and train.classes == ["cat", "dog"]
    image, label = train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (20, 16) and label == 0
    assert train[5][0].mode == "RGB"  # the grayscale file is converted
    # The class index comes from the train folder: dog stays 1 although val has no cat.
    assert val[0][1] == 1 and labels_of(val).tolist() == [1]


def test_imagefolder_loose_images_are_unlabelled(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / "train" / f"{i}.png", (i * 60, 10, 10))
    pretrain = build_dataset("imagefolder", tmp_path, "pretrain")
    assert len(pretrain) == 4 and pretrain[2][1] == -1 and labels_of(pretrain) is None
    assert pretrain[2][0].getpixel((0, 0)) == (120, 10, 10)


def test_imagefolder_errors_name_the_folder(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "cat" / "0.png", (1, 2, 3))
    with pytest.raises(DatasetNotFoundError, match=r"image folder '.*val' does not exist"):
        build_dataset("imagefolder", tmp_path, "eval")
    write_png(tmp_path / "val" / "horse" / "0.png", (1, 2, 3))
    with pytest.raises(DatasetError, match=r"class folder '.*horse' has no counterpart"):
        build_dataset("imagefolder", tmp_path, "eval")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"'.*empty[/\\]train' holds no images"):
        build_dataset("imagefolder", tmp_path / "empty", "train")


# --------------------------------------------------------------------------------------------------
# Subsets and labels_of


def test_subset_is_seeded_and_deterministic(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    a = build_dataset("fashion_mnist", tmp_path, "train", subset=6, seed=1)
    b = build_dataset("fashion_mnist", tmp_path, "train", subset=6, seed=1)
    c = build_dataset("fashion_mnist", tmp_path, "train", subset=6, seed=2)
    assert isinstance(a, Subset) and len(a) == 6
    assert a.indices == b.indices and a.indices != c.indices
    assert len(set(a.indices)) == 6
    assert torch.equal(a[0][0], a.dataset[a.indices[0]][0])
    full = labels_of(a.dataset)
    assert torch.equal(labels_of(a), full[torch.tensor(a.indices)])
    assert labels_of(a).tolist() == [a[i][1] for i in range(len(a))]


def test_subset_applies_to_any_split_and_checks_its_size(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    assert len(build_dataset("stl10", tmp_path, "pretrain", subset=7)) == 7
    assert len(build_dataset("stl10", tmp_path, "eval", subset=3)) == 3
    with pytest.raises(ValueError, match=r"subset 10 is larger than the stl10 'eval' split, which has 3"):
        build_dataset("stl10", tmp_path, "eval", subset=10)
    with pytest.raises(ValueError, match="positive number of images"):
        build_dataset("stl10", tmp_path, "eval", subset=0)


def test_labels_of_concat_and_foreign_datasets() -> None:
    labelled = TensorImageDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([2, 0, 1]))
    unlabelled = TensorImageDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), None)
    assert labels_of(unlabelled) is None and unlabelled[1][1] == -1
    assert labels_of(ConcatDataset([labelled, unlabelled])).tolist() == [2, 0, 1, -1, -1]
    assert labels_of(ConcatDataset([unlabelled, unlabelled])) is None

    class WithTargets(torch.utils.data.Dataset):
        targets = [4, 5]

    assert labels_of(WithTargets()).tolist() == [4, 5]
    labels = labels_of(labelled)
    labels[0] = 9  # the result is a copy: the dataset's labels stay as they are
    assert labelled[0][1] == 2


def test_in_memory_dataset_batches_through_a_dataloader(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    dataset = build_dataset("fashion_mnist", tmp_path, "train", transform=lambda x: x.float())
    images, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 1, 28, 28) and labels.dtype == torch.long and labels.shape == (4,)
