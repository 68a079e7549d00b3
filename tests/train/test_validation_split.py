"""data.val_size: a validation set held out from the training split, for tuning without the test split."""

from __future__ import annotations

import pytest
import torch
from conftest import write_fashion_mnist

from dimcl.build import build_eval_datasets, build_pretrain_dataset, validation_split
from dimcl.config import ConfigError
from dimcl.data import build_dataset
from dimcl.experiment import experiment_differences
from dimcl.recipes import load_config, resolve_recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=96, n_test=48)


def cfg_of(data, *overrides):
    return load_config(resolve_recipe("fashion_mnist/byol"), [f"data.root={data}", "data.num_workers=0", *overrides])


def indices_in_train(dataset, train_images):
    """Which images of the raw training split ``dataset``'s items are (images are unique in the fixture)."""
    rows = {bytes(train_images[i].numpy().tobytes()): i for i in range(len(train_images))}
    found = []
    for i in range(len(dataset)):
        image, _ = dataset[i]
        image = image[0] if isinstance(image, list) else image
        found.append(rows.get(bytes(image.numpy().tobytes())))
    return found


def test_held_out_images_leave_pretraining_and_the_bank_and_become_the_evaluation_set(data):
    raw = build_dataset("fashion_mnist", data, "train", None)
    train_images = torch.stack([raw[i][0] for i in range(len(raw))])
    cfg = cfg_of(data, "data.val_size=20")
    bank, evaluation = build_eval_datasets(cfg)
    kept, held_out = validation_split(96, 20)
    assert (len(bank), len(evaluation)) == (76, 20)
    assert sorted(kept + held_out) == list(range(96)) and not set(kept) & set(held_out)
    # raw (uint8) items of the same splits: compare by image bytes with the raw training split
    cfg_raw = cfg_of(data, "data.val_size=20", "data.augment_on=device")
    assert indices_in_train(build_pretrain_dataset(cfg_raw), train_images) == kept
    labels = torch.as_tensor([raw[i][1] for i in held_out])
    assert torch.equal(torch.as_tensor([evaluation[i][1] for i in range(20)]), labels)


def test_the_held_out_images_do_not_depend_on_the_seed_but_subsets_do(data):
    a = build_eval_datasets(cfg_of(data, "data.val_size=20", "seed=0"))[1]
    b = build_eval_datasets(cfg_of(data, "data.val_size=20", "seed=1"))[1]
    assert a.indices == b.indices
    p0 = build_pretrain_dataset(cfg_of(data, "data.val_size=20", "data.subset=30", "seed=0"))
    p1 = build_pretrain_dataset(cfg_of(data, "data.val_size=20", "data.subset=30", "seed=1"))
    assert len(p0) == len(p1) == 30 and p0.indices != p1.indices


def test_without_val_size_the_test_split_is_evaluated_as_before(data):
    bank, evaluation = build_eval_datasets(cfg_of(data))
    assert (len(bank), len(evaluation)) == (96, 48)
    assert len(build_pretrain_dataset(cfg_of(data, "data.subset=40"))) == 40


def test_bad_sizes_are_clear_errors(data):
    with pytest.raises(ConfigError, match="data.val_size"):
        cfg_of(data, "data.val_size=-1")
    with pytest.raises(ConfigError, match="whole training split"):
        build_eval_datasets(cfg_of(data, "data.val_size=96"))
    with pytest.raises(ConfigError, match="data.subset=90 is larger than the 76"):
        build_pretrain_dataset(cfg_of(data, "data.val_size=20", "data.subset=90"))


def test_a_config_saved_before_a_key_existed_is_the_same_experiment():
    new = load_config(resolve_recipe("fashion_mnist/byol")).to_dict()
    old = {**new, "data": {k: v for k, v in new["data"].items() if k != "val_size"}}
    assert experiment_differences(old, new) == []
    changed = {**new, "data": {**new["data"], "val_size": 10}}
    assert experiment_differences(old, changed) == [("data.val_size", 0, 10)]
