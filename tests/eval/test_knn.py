import math

import pytest
import torch
from torch import nn

from dimcl.eval import extract_features, weighted_knn


def _reference_knn(train_x, train_y, test_x, test_y, k, temperature, num_classes):
    """Plain per-sample loop over the InstDisc weighted kNN rule."""
    train_x = [v / v.norm() for v in train_x]
    correct1 = correct5 = 0
    for x, y in zip(test_x, test_y, strict=True):
        x = x / x.norm()
        pairs = [(float(x @ t), int(label)) for t, label in zip(train_x, train_y, strict=True)]
        sims = sorted(pairs, reverse=True)[: min(k, len(train_x))]
        scores = [0.0] * num_classes
        for sim, label in sims:
            scores[label] += math.exp(sim / temperature)
        best = max(range(num_classes), key=lambda c: scores[c])  # first index on a tie
        correct1 += best == int(y)
        better = sum(score > scores[int(y)] for score in scores)
        correct5 += scores[int(y)] > 0 and better < min(5, num_classes)
    return {"top1": 100.0 * correct1 / len(test_x), "top5": 100.0 * correct5 / len(test_x)}


@pytest.mark.parametrize(
    "k, temperature, num_classes",
    [(1, 0.07, 10), (5, 0.07, 10), (20, 0.5, 10), (200, 0.1, 10), (7, 0.07, 3)],
)
def test_matches_reference(k, temperature, num_classes):
    gen = torch.Generator().manual_seed(k)
    centers = torch.randn(num_classes, 8, generator=gen)
    train_y = torch.randint(num_classes, (120,), generator=gen)
    test_y = torch.randint(num_classes, (40,), generator=gen)
    # Noisy clusters: accuracy lands strictly between chance and 100, so a wrong rule shows up.
    train_x = centers[train_y] + 1.5 * torch.randn(120, 8, generator=gen)
    test_x = centers[test_y] + 1.5 * torch.randn(40, 8, generator=gen)

    got = weighted_knn(train_x, train_y, test_x, test_y, k=k, temperature=temperature, num_classes=num_classes)
    want = _reference_knn(train_x, train_y, test_x, test_y, k, temperature, num_classes)
    assert got == pytest.approx(want)
    assert 0.0 <= got["top1"] <= got["top5"] <= 100.0


def test_weighting_matters():
    # One very close neighbour of class 0 against two farther ones of class 1: with a small
    # temperature the close one wins, with a large one the majority does.
    train_x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    train_y = torch.tensor([0, 1, 1])
    test_x, test_y = torch.tensor([[1.0, 0.05]]), torch.tensor([0])
    assert weighted_knn(train_x, train_y, test_x, test_y, k=3, temperature=0.05)["top1"] == 100.0
    assert weighted_knn(train_x, train_y, test_x, test_y, k=3, temperature=10.0)["top1"] == 0.0


def test_separable_clusters_are_perfect():
    gen = torch.Generator().manual_seed(0)
    num_classes = 6
    directions = torch.eye(16)[:num_classes] * 10
    train_y = torch.arange(num_classes).repeat(20)
    test_y = torch.arange(num_classes).repeat(5)
    train_x = directions[train_y] + 0.1 * torch.randn(len(train_y), 16, generator=gen)
    test_x = directions[test_y] + 0.1 * torch.randn(len(test_y), 16, generator=gen)
    # k larger than a class: the weights must still let the own class win.
    result = weighted_knn(train_x, train_y, test_x, test_y, k=50, temperature=0.07)
    assert result == {"top1": 100.0, "top5": 100.0}


def test_chunking_and_large_k_give_identical_results():
    gen = torch.Generator().manual_seed(1)
    train_x, train_y = torch.randn(300, 32, generator=gen), torch.randint(10, (300,), generator=gen)
    test_x, test_y = torch.randn(97, 32, generator=gen), torch.randint(10, (97,), generator=gen)
    whole = weighted_knn(train_x, train_y, test_x, test_y, k=25, chunk_size=1024)
    for chunk_size in (1, 10, 96, 97):
        assert weighted_knn(train_x, train_y, test_x, test_y, k=25, chunk_size=chunk_size) == whole
    # k is clipped to the train size rather than failing.
    clipped = weighted_knn(train_x, train_y, test_x, test_y, k=10_000)
    assert clipped == weighted_knn(train_x, train_y, test_x, test_y, k=300)


def test_top5_with_fewer_than_five_classes_is_always_right():
    gen = torch.Generator().manual_seed(2)
    train_x, train_y = torch.randn(50, 4, generator=gen), torch.randint(3, (50,), generator=gen)
    test_x, test_y = torch.randn(20, 4, generator=gen), torch.randint(3, (20,), generator=gen)
    assert weighted_knn(train_x, train_y, test_x, test_y, k=10, num_classes=3)["top5"] == 100.0


def test_bad_inputs():
    x, y = torch.randn(10, 4), torch.randint(3, (10,))
    with pytest.raises(ValueError, match="same F"):
        weighted_knn(x, y, torch.randn(5, 3), y[:5])
    with pytest.raises(ValueError, match="one label per sample"):
        weighted_knn(x, y[:9], x, y)
    with pytest.raises(ValueError, match="k=0"):
        weighted_knn(x, y, x, y, k=0)
    with pytest.raises(ValueError, match="num_classes"):
        weighted_knn(x, y, x, y, num_classes=2 if int(y.max()) == 2 else int(y.max()))


class _RecordsMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.seen_training: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return self.linear(x).double()  # a non-float32 output gets converted


@pytest.mark.parametrize("start_in_train_mode", [True, False])
def test_extract_features(start_in_train_mode):
    model = _RecordsMode().train(start_in_train_mode)
    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 2, 3], dtype=torch.int32)), (torch.randn(2, 3), [4, 5])]
    features, labels = extract_features(model, batches)
    assert model.training is start_in_train_mode
    assert model.seen_training == [False, False]
    assert features.shape == (6, 2) and features.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3, 4, 5]
    expected = torch.cat([model.linear(b[0]) for b in batches]).detach()
    torch.testing.assert_close(features, expected, rtol=1e-6, atol=1e-6)
    assert not features.requires_grad


def test_extract_features_restores_mode_on_error():
    model = nn.Sequential(nn.Linear(3, 2)).train()

    def broken_loader():
        yield torch.randn(2, 3), torch.tensor([0, 1])
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        extract_features(model, broken_loader())
    assert model.training


def test_top5_ignores_classes_without_votes():
    # With k=1 only one class gets a vote, so top-5 can be no better than top-1.
    gen = torch.Generator().manual_seed(3)
    train_x, train_y = torch.randn(40, 6, generator=gen), torch.randint(10, (40,), generator=gen)
    test_x, test_y = torch.randn(30, 6, generator=gen), torch.randint(10, (30,), generator=gen)
    result = weighted_knn(train_x, train_y, test_x, test_y, k=1, num_classes=10)
    assert result["top5"] == result["top1"] < 100.0


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_knn_on_a_device_counts_the_same_hits(device):
    """The whole kNN (similarities, top-k, votes) runs on ``device`` from features held anywhere. Hits
    are integer counts; on CUDA the float32 similarities' last bits may reorder neighbours whose
    similarities tie to 1e-7, which moves at most a vote's weight: none of these random points are
    that close, so the counts agree exactly."""
    gen = torch.Generator().manual_seed(3)
    train_x, train_y = torch.randn(500, 32, generator=gen), torch.randint(10, (500,), generator=gen)
    test_x, test_y = torch.randn(130, 32, generator=gen), torch.randint(10, (130,), generator=gen)
    on_host = weighted_knn(train_x, train_y, test_x, test_y, k=20, chunk_size=64)
    assert weighted_knn(train_x, train_y, test_x, test_y, k=20, chunk_size=64, device=device) == on_host
