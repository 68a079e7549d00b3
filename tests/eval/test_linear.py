"""Linear evaluation: the probe on synthetic features, the feature cache, and run directories."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_RUN
from torch import nn
from torch.utils.data import TensorDataset

import dimcl.eval.linear as linear
from dimcl.eval.features import cached_features, feature_fingerprint
from dimcl.eval.linear import linear_of_run, train_linear_probe
from dimcl.recipes import load_config, resolve_recipe
from dimcl.train.loop import pretrain


def clusters(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(num_classes, dim, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    # An offset and scale far from standard: the probe standardises them away.
    return 100 + 30 * features, labels


def test_linearly_separable_set_is_learned():
    x, y = clusters(55, 4, 10, spread=0.5, seed=0)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    train_x, train_y, test_x, test_y = x[order[:160]], y[order[:160]], x[order[160:]], y[order[160:]]
    result = train_linear_probe(train_x, train_y, test_x, test_y, 4, epochs=30)
    assert result["top1"] == 100.0 and result["top5"] == 100.0 and result["train_top1"] == 100.0


def test_same_seed_same_result():
    train_x, train_y = clusters(30, 3, 6, spread=4.0, seed=2)  # overlapping: the order of batches matters
    test_x, test_y = clusters(10, 3, 6, spread=4.0, seed=3)
    args = (train_x, train_y, test_x, test_y, 3)
    a = train_linear_probe(*args, epochs=5, batch_size=8, seed=0)
    b = train_linear_probe(*args, epochs=5, batch_size=8, seed=0)
    assert a == b
    assert 0 <= a["top1"] <= 100 and a["top1"] <= a["top5"]


def test_unlabelled_training_samples_are_left_out_and_bad_labels_refused():
    train_x, train_y = clusters(20, 2, 4, spread=0.3, seed=4)
    train_y = train_y.clone()
    train_y[::5] = -1
    result = train_linear_probe(train_x, train_y, train_x[train_y >= 0], train_y[train_y >= 0], 2, epochs=10)
    assert result["top1"] == 100.0
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        train_linear_probe(train_x, train_y + 5, train_x, train_y, 2, epochs=1)


class CountingBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x)


def test_cache_is_reused_and_invalidated_when_weights_change(tmp_path):
    backbone = CountingBackbone()
    dataset = TensorDataset(torch.randn(10, 4), torch.arange(10) % 2)
    path = tmp_path / "cache" / "train.pt"
    features, labels = cached_features(backbone, dataset, path, batch_size=4)
    assert backbone.calls == 3 and features.shape == (10, 3) and labels.tolist() == [0, 1] * 5
    stored = torch.load(path, weights_only=True)  # tensors and a string only
    assert stored["fingerprint"] == feature_fingerprint(backbone, dataset)

    again, _ = cached_features(backbone, dataset, path, batch_size=4)
    assert backbone.calls == 3 and torch.equal(again, features)  # read back, no forward pass

    with torch.no_grad():
        backbone.linear.weight[0, 0] += 1.0
    changed, _ = cached_features(backbone, dataset, path, batch_size=4)
    assert backbone.calls == 6 and not torch.equal(changed, features)

    shorter = TensorDataset(torch.randn(8, 4), torch.arange(8) % 2)
    cached_features(backbone, shorter, path, batch_size=4)
    assert backbone.calls == 8  # another dataset: extracted again

    path.write_bytes(b"not a torch file")
    cached_features(backbone, shorter, path, batch_size=4)
    assert backbone.calls == 10  # a broken cache is only a cache


@pytest.fixture(scope="module")
def tiny_run(tiny_fashion_mnist, tmp_path_factory):
    cfg = load_config(resolve_recipe("fashion_mnist/byol"),
                      [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1", "eval.every=0"])
    run = tmp_path_factory.mktemp("linear") / "run"
    pretrain(cfg, run)
    return run


def test_linear_of_run(tiny_run, monkeypatch):
    result = linear_of_run(tiny_run, epochs=20)
    assert json.loads((tiny_run / "linear.json").read_text()) == result
    assert result["protocol"] == "fast" and result["num_classes"] == 10
    assert result["train_size"] == 96 and result["eval_size"] == 48
    assert 0 <= result["linear_top1"] <= result["linear_top5"] <= 100
    assert (tiny_run / "features" / "train.pt").is_file() and (tiny_run / "features" / "eval.pt").is_file()

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cached features should have been used")

    monkeypatch.setattr(linear, "extract_features", no_extraction)
    assert linear_of_run(tiny_run, epochs=20) == result  # from the cache, and deterministic


def test_linear_of_run_augmented_protocol(tiny_run, tmp_path):
    result = linear_of_run(tiny_run, out_dir=tmp_path, protocol="augmented", epochs=1)
    assert result["protocol"] == "augmented" and result["epochs"] == 1
    assert 0 <= result["linear_top1"] <= result["linear_top5"] <= 100
    assert json.loads((tmp_path / "linear.json").read_text()) == result
    with pytest.raises(ValueError, match="protocol"):
        linear_of_run(tiny_run, protocol="slow")
