"""The augmentation plan: one resolution of a view for a dataset, read by the per-image and per-batch paths."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch

import dimcl.data
from dimcl.data import ViewConfig, ViewTransform, byol_view_configs, dataset_info
from dimcl.data.augment_plan import (
    CROP_TRIES,
    AugmentPlan,
    JitterStep,
    RandomColumns,
    batch_gaussian_weights,
    blur_kernel_size,
    gaussian_weights,
    kernel_offsets,
    scaled,
)
from dimcl.data.device_views import BatchViewTransform
from dimcl.data.info import DatasetInfo

FASHION = dataset_info("fashion_mnist")
CIFAR = dataset_info("cifar10")
STL = dataset_info("stl10")
IMAGENET = dataset_info("imagefolder")


# --------------------------------------------------------------------------------------------------
# Resolution


def test_colour_steps_are_resolved_for_the_channel_count() -> None:
    view = ViewConfig(28, brightness=0.4, contrast=0.5, saturation=0.3, hue=0.2, grayscale_prob=0.4)
    gray = AugmentPlan.from_view(view, FASHION)
    assert gray.jitter == (JitterStep("brightness", 0.6, 1.4), JitterStep("contrast", 0.5, 1.5))
    assert gray.grayscale_prob == 0.0 and gray.color_jitter_prob == 0.8
    rgb = AugmentPlan.from_view(view, CIFAR)
    assert [step.name for step in rgb.jitter] == ["brightness", "contrast", "saturation", "hue"]
    assert rgb.jitter[3] == JitterStep("hue", -0.2, 0.2) and rgb.grayscale_prob == 0.4
    # A multiplicative factor never goes below 0; a step of strength 0 is left out.
    strong = AugmentPlan.from_view(ViewConfig(32, brightness=1.5, contrast=0.0, saturation=0.0, hue=0.0), CIFAR)
    assert strong.jitter == (JitterStep("brightness", 0.0, 2.5),)


def test_no_jitter_step_means_no_jitter_draw() -> None:
    plan = AugmentPlan.from_view(ViewConfig(28, brightness=0, contrast=0, color_jitter_prob=1.0), FASHION)
    assert plan.jitter == () and plan.color_jitter_prob == 0.0


def test_geometry_blur_and_normalisation() -> None:
    plan = AugmentPlan.from_view(byol_view_configs(IMAGENET)[0], IMAGENET)
    assert plan.crop_size == 224 and plan.blur_kernel == 23  # BYOL's kernel at 224 px
    assert plan.log_ratio == (math.log(3 / 4), math.log(4 / 3))
    assert [blur_kernel_size(s) for s in (28, 32, 64, 96, 224)] == [3, 3, 7, 9, 23]
    mean, std = AugmentPlan.from_view(byol_view_configs(CIFAR)[0], CIFAR).mean_std()
    assert mean.shape == std.shape == (3, 1, 1) and mean.dtype == torch.float32
    assert mean.flatten().tolist() == torch.tensor(CIFAR.mean, dtype=torch.float32).tolist()
    broken = DatasetInfo("broken", 32, 3, 10, (0.5,), (0.5,), None)
    with pytest.raises(ValueError, match="broken: mean/std need 3 values"):
        AugmentPlan.from_view(ViewConfig(32), broken)


def test_the_plan_is_frozen_and_both_paths_read_the_same_one() -> None:
    for info in (FASHION, CIFAR, STL):
        for view in byol_view_configs(info):
            plan = AugmentPlan.from_view(view, info)
            assert ViewTransform(view, info).plan == plan == BatchViewTransform(view, info).plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.crop_size = 1  # type: ignore[misc]


def test_random_columns_tile_the_row() -> None:
    starts = {
        "CROP": 2 * CROP_TRIES,
        "POSITION": 2,
        "FLIP": 1,
        "JITTER": 1,
        "FACTORS": 4,
        "ORDER": 4,
        "GRAY": 1,
        "BLUR": 1,
        "SIGMA": 1,
        "SOLARIZE": 1,
    }
    column = 0
    for name, width in starts.items():
        assert getattr(RandomColumns, name) == column, name
        column += width
    assert RandomColumns.COUNT == column == 36


# --------------------------------------------------------------------------------------------------
# Random numbers to parameters


def test_scaled_rounds_floats_and_tensors_alike() -> None:
    u = torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = [scaled(0.1, 2.0, v) for v in u.tolist()]
    assert scaled(0.1, 2.0, u).tolist() == expected  # the same IEEE operations, so bit for bit


def test_crop_boxes_are_crop_box_row_for_row() -> None:
    """The batched crop is the per-image one applied to each row (same formulas: exact equality)."""
    plan = AugmentPlan.from_view(ViewConfig(32, crop_scale=(0.1, 0.9), crop_ratio=(0.5, 2.0)), CIFAR)
    rows = torch.rand(400, RandomColumns.COUNT, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for height, width in ((32, 32), (40, 60), (10, 100), (100, 10)):
        expected = [list(plan.crop_box(height, width, row)) for row in rows.tolist()]
        assert plan.crop_boxes(rows, height, width).tolist() == expected


@pytest.mark.parametrize(
    ("height", "width", "box"),
    [(10, 100, (0, 43, 10, 13)), (100, 10, (43, 0, 13, 10)), (30, 36, (0, 0, 30, 36))],
)
def test_fallback_is_the_largest_centred_allowed_crop(height, width, box) -> None:
    plan = AugmentPlan.from_view(ViewConfig(32, crop_scale=(1.0, 1.0)), CIFAR)
    assert plan.fallback_box(height, width) == box


def test_every_sample_falls_back_when_no_try_fits() -> None:
    # A full-area crop of a 10 x 100 image with an aspect ratio of at most 4/3 is never 10 px high.
    plan = AugmentPlan.from_view(ViewConfig(32, crop_scale=(1.0, 1.0)), CIFAR)
    rows = torch.rand(5, RandomColumns.COUNT, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert plan.crop_boxes(rows, 10, 100).tolist() == [[0, 43, 10, 13]] * 5
    assert [plan.crop_box(10, 100, row) for row in rows.tolist()] == [(0, 43, 10, 13)] * 5


def test_gaussian_weights_scalar_and_batched() -> None:
    assert kernel_offsets(5) == [-2.0, -1.0, 0.0, 1.0, 2.0]
    sigmas = torch.tensor([0.1, 0.7, 1.3, 2.0], dtype=torch.float64)
    batched = batch_gaussian_weights(9, sigmas)
    assert batched.shape == (4, 9) and batched.dtype == torch.float64
    for sigma, row in zip(sigmas.tolist(), batched, strict=True):
        weights = torch.tensor(gaussian_weights(9, sigma), dtype=torch.float64)
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-15)
        assert torch.equal(weights, weights.flip(0))  # symmetric: the offsets are exact
        # math.exp and torch.exp are each within an ulp or so of exp, and the normalisation adds a few
        # float64 roundings over 9 terms: 1e-14 relative is ~50 ulps of slack and far below float32's 6e-8,
        # the precision the blur is applied in.
        assert torch.allclose(row, weights, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------------------------------
# One home: neither path borrows private names of another module


def test_data_modules_import_no_private_names_of_each_other() -> None:
    package = Path(dimcl.data.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dimcl."):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
