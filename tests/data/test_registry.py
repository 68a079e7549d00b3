"""The dataset registry: self-describing entries, the split-order contract, and a dataset added from a test
(one reader and one entry) that works through build_dataset and a run's splits, data.val_size included."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import dimcl.data.datasets as registry
from dimcl.config import Config
from dimcl.data import (
    DATASETS,
    SPLITS,
    DatasetInfo,
    RunSplits,
    TensorImageDataset,
    build_dataset,
    labels_of,
    run_splits,
)
from dimcl.data.device_views import raw_image_transform
from dimcl.data.splits import validation_split
from dimcl.errors import BadInputError
from dimcl.recipes import load_config, resolve_recipe


def test_every_entry_has_a_reader_and_a_pretraining_split_that_starts_with_the_labelled_one():
    for info in DATASETS.values():
        assert callable(info.reader), info.name
        train = info.parts_of("train")
        assert info.parts_of("pretrain")[: len(train)] == train, info.name
        assert all(info.parts_of(split) for split in SPLITS), info.name


def test_an_entry_whose_pretraining_split_does_not_open_with_the_training_images_is_refused():
    with pytest.raises(ValueError, match="must start with the labelled training split"):
        DatasetInfo("bad", 32, 3, 10, (0.5,) * 3, (0.5,) * 3, None, pretrain_parts=("unlabeled", "train"))


def test_whether_image_sizes_vary_is_read_from_the_entry():
    assert [n for n, info in DATASETS.items() if info.variable_size] == ["imagefolder"]
    fixed = dataset_like("imagefolder", variable_size=False)
    assert raw_image_transform(fixed, 64).size is None
    assert raw_image_transform(DATASETS["imagefolder"], 224).size == 256


def dataset_like(name: str, **changes) -> DatasetInfo:
    return dataclasses.replace(DATASETS[name], **changes)


# --------------------------------------------------------------------------------------------------
# A new dataset: one reader and one entry


def read_squares(info: DatasetInfo, root: Path, parts: tuple[str, ...], transform, download: bool) -> Dataset:
    """A made-up format: part "train" is 12 labelled 8x8 images, "extra" 5 unlabelled ones, "test" 6."""
    # part: (first pixel value, count); every image is filled with its own value, so items can be told apart
    layout = {"train": (0, 12), "extra": (12, 5), "test": (17, 6)}
    images, labels = [], []
    for part in parts:
        start, n = layout[part]
        images.append(torch.arange(start, start + n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 8, 8))
        labels.append(torch.full((n,), -1) if part == "extra" else torch.arange(n) % 3)
    return TensorImageDataset(torch.cat(images).contiguous(), torch.cat(labels), transform)


SQUARES = DatasetInfo("squares", 8, 1, 3, (0.5,), (0.25,), "/nonexistent", reader=read_squares,
                      pretrain_parts=("train", "extra"))  # fmt: skip


@pytest.fixture
def squares(monkeypatch):
    monkeypatch.setitem(registry.DATASETS, "squares", SQUARES)


def squares_config(*overrides: str) -> Config:
    return load_config(resolve_recipe("fashion_mnist/byol"), ["data.name=squares", "data.num_workers=0", *overrides])


def test_a_registered_dataset_opens_its_three_splits(squares):
    assert len(build_dataset("squares", None, "pretrain")) == 17
    assert len(build_dataset("squares", None, "train")) == 12
    evaluation = build_dataset("squares", None, "eval")
    assert len(evaluation) == 6 and int(evaluation[0][0][0, 0, 0]) == 17
    assert labels_of(build_dataset("squares", None, "pretrain")).tolist()[-5:] == [-1] * 5


def test_a_registered_dataset_serves_a_run_with_a_validation_hold_out(squares):
    splits = run_splits(squares_config("data.val_size=4", "data.augment_on=device"))
    kept, held_out = validation_split(12, 4)
    pretrain = splits.pretrain()
    first_pixel = [int(pretrain[i][0][0, 0, 0]) for i in range(len(pretrain))]
    assert first_pixel == kept + list(range(12, 17))  # the held-out training images left; the extras stayed
    bank, evaluation = splits.labelled()
    assert (len(bank), len(evaluation)) == (8, 4) and splits.num_classes(bank) == 3
    assert labels_of(bank).max().item() + 1 == 3  # the labels the reader served, not only the entry's count
    assert splits.crop_size == 8 and splits.device_views() is not None


def test_unknown_names_and_bad_view_values_are_bad_input(squares):
    cfg = squares_config()
    with pytest.raises(BadInputError, match="unknown dataset 'square'.*Did you mean 'squares'"):
        RunSplits(dataclasses.replace(cfg.data, name="square"), cfg.augment, cfg.seed).pretrain()
    with pytest.raises(BadInputError, match="crop_scale"):
        dataclasses.replace(run_splits(squares_config()).views[0], crop_scale=(0.5, 2.0))
