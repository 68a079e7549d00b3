"""Feature-diversity diagnostics on matrices whose answers are known by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_RUN
from torch import nn

from dimcl.eval.diversity import (
    collapsed_dimensions,
    diagnose,
    diagnose_run,
    diversity_report,
    effective_rank,
    fixed_eval_batch,
    mean_abs_correlation,
    singular_spectrum,
)
from dimcl.methods import build_method
from dimcl.models import build_backbone
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import CHECKPOINT
from dimcl.train.loop import pretrain


def orthonormal_columns(n: int, d: int, seed: int = 0, centred: bool = True) -> torch.Tensor:
    """(n, d) with orthonormal columns; centred columns first, so they are also uncorrelated."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if centred:
        x = x - x.mean(dim=0)
    q, _ = torch.linalg.qr(x)
    return q


def test_orthogonal_centred_columns_are_uncorrelated_and_full_rank():
    x = orthonormal_columns(64, 8)
    assert mean_abs_correlation(x) == pytest.approx(0.0, abs=1e-12)
    # All singular values equal 1: p_k = 1/8 for each, entropy log 8, RankMe 8 (up to eps).
    assert effective_rank(x) == pytest.approx(8.0, rel=1e-5)
    assert collapsed_dimensions(x) == 0
    assert singular_spectrum(x).tolist() == pytest.approx([1 / 8] * 8)


def test_fully_collapsed_features():
    row = torch.tensor([0.3, -1.7, 2.0, 5.0, 1e-3])
    x = row.repeat(32, 1)  # every sample the same: every dimension constant
    assert collapsed_dimensions(x) == 5
    assert mean_abs_correlation(x) == 0.0  # constant dims count as uncorrelated, not NaN
    assert effective_rank(x) == pytest.approx(1.0, abs=1e-4)  # one repeated row is rank 1
    huge = (row * 1e9).repeat(32, 1)  # the mean's rounding noise must not pass for variation
    assert collapsed_dimensions(huge) == 5 and mean_abs_correlation(huge) == 0.0
    zeros = torch.zeros(16, 4)
    assert collapsed_dimensions(zeros) == 4
    assert effective_rank(zeros) == 0.0
    assert singular_spectrum(zeros).tolist() == [0.0] * 4


def test_rank_one_features():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 1, generator=gen) @ torch.randn(1, 12, generator=gen)
    # p = (1, 0, ..., 0) + eps: RankMe = exp(-(1+eps) log(1+eps) - 11 eps log eps) = 1 + 1.8e-5.
    assert effective_rank(x) == pytest.approx(1.0, abs=1e-4)
    assert mean_abs_correlation(x) == pytest.approx(1.0)  # every dimension is a multiple of one vector


def test_known_spectrum():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    u, v = orthonormal_columns(32, 4, seed=2, centred=False), orthonormal_columns(6, 4, seed=3, centred=False)
    x = u @ torch.diag(s) @ v.T  # (32, 6) with singular values 4, 2, 1, 1, 0, 0
    assert singular_spectrum(x).tolist() == pytest.approx([0.5, 0.25, 0.125, 0.125, 0.0, 0.0], abs=1e-12)
    # Entropy in bits: 0.5 * 1 + 0.25 * 2 + 2 * 0.125 * 3 = 1.75, so RankMe = 2 ** 1.75.
    assert effective_rank(x) == pytest.approx(2**1.75, rel=1e-5)


def test_correlation_of_perfectly_correlated_dimensions():
    a = torch.randn(40, generator=torch.Generator().manual_seed(4))
    assert mean_abs_correlation(torch.stack([a, 3 * a + 2], dim=1)) == pytest.approx(1.0)
    assert mean_abs_correlation(torch.stack([a, -0.5 * a], dim=1)) == pytest.approx(1.0)
    # Pairs (0, 1): 1, (0, 2) and (1, 2): 0 with the constant third dimension: mean over 3 * 2 = 1/3.
    x = torch.stack([a, 3 * a + 2, torch.full_like(a, 7.0)], dim=1)
    assert mean_abs_correlation(x) == pytest.approx(1 / 3)
    assert collapsed_dimensions(x) == 1


def test_correlation_matches_numpy():
    x = torch.randn(100, 6, generator=torch.Generator().manual_seed(5))
    x[:, 1] += x[:, 0]
    corr = np.corrcoef(x.numpy(), rowvar=False)
    expected = np.abs(corr[~np.eye(6, dtype=bool)]).mean()
    assert mean_abs_correlation(x) == pytest.approx(expected, rel=1e-9)


def test_collapsed_is_relative_to_the_widest_dimension():
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x = x / x.std(dim=0, unbiased=False) * torch.tensor([1.0, 1e-5, 0.5], dtype=torch.float64)
    assert collapsed_dimensions(x) == 1
    assert collapsed_dimensions(x, tol=1e-6) == 0


def test_report_keys_and_prefix():
    report = diversity_report(orthonormal_columns(20, 5), prefix="backbone_")
    assert set(report) == {"backbone_mean_abs_corr", "backbone_effective_rank", "backbone_collapsed_dims",
                           "backbone_num_dims"}
    assert report["backbone_num_dims"] == 5
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        diversity_report(torch.zeros(3))


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
        self.projector = nn.Linear(6, 3)


def test_diagnose_runs_in_eval_mode_and_restores_the_mode():
    method = TwoLayer().train()
    images = torch.randn(10, 4, generator=torch.Generator().manual_seed(7))
    stats = method.backbone[1].running_mean.clone()
    result = diagnose(method, images)
    assert method.training and method.backbone.training  # the mode is given back
    assert torch.equal(method.backbone[1].running_mean, stats)  # eval mode: running stats untouched
    method.eval()
    with torch.no_grad():
        features = method.backbone(images)
        expected = {**diversity_report(features, "backbone_"),
                    **diversity_report(method.projector(features), "projector_")}
    assert result == pytest.approx(expected)
    assert diagnose(method, images) == pytest.approx(expected) and not method.training


def test_diagnose_a_real_method():
    backbone = build_backbone("small_cnn", in_channels=1, image_size=28)
    method = build_method("byol", backbone, proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=16)
    result = diagnose(method, torch.randn(6, 1, 28, 28))
    assert result["backbone_num_dims"] == backbone.num_features and result["projector_num_dims"] == 8
    assert all(math.isfinite(v) for v in result.values())


def test_fixed_eval_batch_takes_the_first_images():
    data = [(torch.full((1, 2, 2), float(i)), i) for i in range(5)]
    batch = fixed_eval_batch(data, 3)
    assert batch.shape == (3, 1, 2, 2) and batch[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert fixed_eval_batch(data, 100).shape[0] == 5


def test_diagnose_run(tiny_fashion_mnist, tmp_path):
    cfg = load_config(resolve_recipe("fashion_mnist/byol"),
                      [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1", "eval.every=0"])
    run = tmp_path / "run"
    pretrain(cfg, run)
    result = diagnose_run(run, num_images=20)
    assert result["num_images"] == 20 and result["projector_num_dims"] == 16
    assert json.loads((run / "diversity.json").read_text()) == result
    # Without the checkpoint only the exported backbone is left: backbone figures only.
    (run / CHECKPOINT).unlink()
    result = diagnose_run(run, num_images=20, out_dir=tmp_path / "elsewhere")
    assert "projector_effective_rank" not in result and "backbone_effective_rank" in result
    assert (tmp_path / "elsewhere" / "diversity.json").is_file()
