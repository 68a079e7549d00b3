"""Views: shapes, randomness, the deterministic limit, BYOL's asymmetry, and agreement with torchvision."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as tvf

from dimcl.data import (
    MultiViewTransform,
    TensorImageDataset,
    ViewConfig,
    ViewTransform,
    build_view_transform,
    byol_view_configs,
    dataset_info,
    eval_transform,
)
from dimcl.data.augment_plan import RandomColumns, gaussian_weights
from dimcl.data.views import _gaussian_blur, _shift_hue

FASHION = dataset_info("fashion_mnist")
CIFAR = dataset_info("cifar10")
STL = dataset_info("stl10")
IMAGENET = dataset_info("imagefolder")


def random_image(channels: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, size, size), dtype=torch.uint8, generator=generator)


def plain_view(crop_size: int, **changes) -> ViewConfig:
    """A view that changes nothing unless told to: full-image crop, every probability 0."""
    settings = dict(
        crop_scale=(1.0, 1.0),
        horizontal_flip=0.0,
        color_jitter_prob=0.0,
        grayscale_prob=0.0,
        gaussian_blur_prob=0.0,
        solarization_prob=0.0,
    )
    settings.update(changes)
    return ViewConfig(crop_size, **settings)


def unnormalize(x: torch.Tensor, info) -> torch.Tensor:
    return x * torch.tensor(info.std).view(-1, 1, 1) + torch.tensor(info.mean).view(-1, 1, 1)


# --------------------------------------------------------------------------------------------------
# Shapes, dtypes, randomness


@pytest.mark.parametrize(
    ("info", "shape", "crop"),
    [(FASHION, (1, 28, 28), None), (CIFAR, (3, 32, 32), None), (STL, (3, 96, 96), 64)],
)
def test_byol_views_shapes_and_dtypes(info, shape, crop) -> None:
    torch.manual_seed(0)
    views = MultiViewTransform([build_view_transform(v, info) for v in byol_view_configs(info, crop)])
    image = random_image(shape[0], shape[1])
    out = views(image)
    size = crop or shape[1]
    assert isinstance(out, list) and len(out) == len(views) == 2
    for view in out:
        assert view.shape == (shape[0], size, size) and view.dtype == torch.float32
        assert torch.isfinite(view).all()
    assert not torch.equal(out[0], out[1])  # two views of one image differ
    assert torch.equal(image, random_image(shape[0], shape[1]))  # the input is left alone


def test_views_of_pil_images_and_grayscale_files() -> None:
    torch.manual_seed(0)
    view = build_view_transform(byol_view_configs(IMAGENET)[0], IMAGENET)
    rgb = Image.new("RGB", (300, 200), (200, 30, 90))
    assert view(rgb).shape == (3, 224, 224)
    gray = torch.full((1, 50, 60), 77, dtype=torch.uint8)  # a 1-channel image in an RGB dataset
    out = view(gray)
    assert out.shape == (3, 224, 224)
    # an RGB image in a grayscale dataset is made its luma (what a transfer evaluation feeds a grayscale backbone)
    assert build_view_transform(byol_view_configs(FASHION)[0], FASHION)(random_image(3, 28)).shape == (1, 28, 28)
    with pytest.raises(ValueError, match="1-channel images"):
        build_view_transform(byol_view_configs(FASHION)[0], FASHION)(random_image(4, 28))


def test_views_are_reproducible_under_manual_seed() -> None:
    view = build_view_transform(byol_view_configs(CIFAR)[1], CIFAR)
    image = random_image(3, 32)
    torch.manual_seed(5)
    first = [view(image) for _ in range(3)]
    torch.manual_seed(5)
    second = [view(image) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])


def test_float_input_is_not_modified_in_place() -> None:
    image = torch.rand(3, 32, 32)
    copy = image.clone()
    plain = build_view_transform(plain_view(32), CIFAR)
    plain(image)
    eval_transform(CIFAR)(image)
    assert torch.equal(image, copy)


def test_multiview_batches_through_a_dataloader() -> None:
    images = torch.stack([random_image(1, 28, seed) for seed in range(6)])
    info = FASHION
    transform = MultiViewTransform([build_view_transform(v, info) for v in byol_view_configs(info)])
    dataset = TensorImageDataset(images, torch.arange(6), transform)
    views, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert len(views) == 2 and views[0].shape == views[1].shape == (4, 1, 28, 28)
    assert labels.tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------------
# The deterministic limit and the evaluation transform


@pytest.mark.parametrize(("info", "channels", "size"), [(FASHION, 1, 28), (CIFAR, 3, 32), (STL, 3, 96)])
def test_plain_view_is_deterministic_and_equals_eval_transform(info, channels, size) -> None:
    image = random_image(channels, size)
    view = build_view_transform(plain_view(size), info)
    expected = eval_transform(info)(image)
    for _ in range(5):
        assert torch.equal(view(image), expected)


def test_eval_transform_normalises_with_the_dataset_constants() -> None:
    image = torch.full((1, 28, 28), 51, dtype=torch.uint8)
    out = eval_transform(FASHION)(image)
    assert out.shape == (1, 28, 28) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, (51 / 255 - 0.2860) / 0.3530))
    rgb = torch.stack([torch.full((32, 32), v, dtype=torch.uint8) for v in (0, 128, 255)])
    out = eval_transform(CIFAR)(rgb)
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), CIFAR.mean, CIFAR.std, strict=True)]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected))


def test_eval_transform_resizes_and_centre_crops_large_images() -> None:
    transform = eval_transform(IMAGENET)
    image = Image.new("RGB", (400, 300), (10, 20, 30))
    out = transform(image)
    assert out.shape == (3, 224, 224) and torch.equal(out, transform(image))
    # Left half black, right half white: the centre crop of the 256-px resize keeps both halves.
    halves = torch.zeros(3, 300, 400, dtype=torch.uint8)
    halves[:, :, 200:] = 255
    out = unnormalize(transform(halves), IMAGENET)
    assert out[:, :, :100].max() < 0.01 and out[:, :, 124:].min() > 0.99
    assert eval_transform(STL, 64)(random_image(3, 96)).shape == (3, 64, 64)
    assert eval_transform(IMAGENET, 112)(image).shape == (3, 112, 112)


# --------------------------------------------------------------------------------------------------
# Recipes


@pytest.mark.parametrize("info", [STL, IMAGENET])
def test_byol_configs_are_asymmetric_for_large_images(info) -> None:
    first, second = byol_view_configs(info)
    assert (first.gaussian_blur_prob, second.gaussian_blur_prob) == (1.0, 0.1)
    assert (first.solarization_prob, second.solarization_prob) == (0.0, 0.2)
    assert first.crop_scale == second.crop_scale == (0.08, 1.0)
    assert first.crop_size == second.crop_size == info.image_size
    assert (first.brightness, first.contrast, first.saturation, first.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (first.color_jitter_prob, first.grayscale_prob, first.horizontal_flip) == (0.8, 0.2, 0.5)


@pytest.mark.parametrize("info", [FASHION, CIFAR])
def test_byol_configs_skip_blur_for_small_images(info) -> None:
    first, second = byol_view_configs(info)
    assert (first.gaussian_blur_prob, second.gaussian_blur_prob) == (0.0, 0.0)
    assert (first.solarization_prob, second.solarization_prob) == (0.0, 0.2)
    assert first.crop_scale == (0.2, 1.0)


def test_byol_configs_for_grayscale_drop_colour_steps() -> None:
    first, second = byol_view_configs(FASHION)
    for view in (first, second):
        assert (view.saturation, view.hue, view.grayscale_prob) == (0.0, 0.0, 0.0)
        assert (view.brightness, view.contrast, view.color_jitter_prob) == (0.4, 0.4, 0.8)
    assert byol_view_configs(CIFAR)[0].saturation == 0.2
    assert [v.crop_size for v in byol_view_configs(STL, 64)] == [64, 64]
    assert byol_view_configs(STL, 32)[0].gaussian_blur_prob == 0.0  # blur follows the crop size


def test_view_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"crop_scale.*got \(0\.0, 1\.0\)"):
        ViewConfig(32, crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"solarization_prob .*got 1\.5"):
        ViewConfig(32, solarization_prob=1.5)
    with pytest.raises(ValueError, match="hue"):
        ViewConfig(32, hue=0.7)
    with pytest.raises(ValueError, match="crop_size"):
        ViewConfig(0)
    assert ViewConfig(32, crop_scale=[0.5, 1]).crop_scale == (0.5, 1.0)  # YAML lists become tuples


# --------------------------------------------------------------------------------------------------
# Each step against torchvision's definition


def test_grayscale_data_keeps_one_channel_and_skips_colour_steps() -> None:
    view = ViewTransform(ViewConfig(28, saturation=0.5, hue=0.2, grayscale_prob=1.0), FASHION)
    assert [name for name, _, _ in view.jitter] == ["brightness", "contrast"]
    assert view.plan.grayscale_prob == 0.0
    torch.manual_seed(0)
    assert view(random_image(1, 28)).shape == (1, 28, 28)


def test_jitter_steps_match_torchvision() -> None:
    x = torch.rand(3, 16, 16)
    random = [0.0] * RandomColumns.COUNT
    random[RandomColumns.FACTORS] = 0.75  # factor 1 - s + 2 s * 0.75 = 1 + s / 2
    cases = [
        ("brightness", tvf.adjust_brightness_image(x, 1.2)),
        ("contrast", tvf.adjust_contrast_image(x, 1.2)),
        ("saturation", tvf.adjust_saturation_image(x, 1.2)),
        ("hue", tvf.adjust_hue_image(x, 0.1)),
    ]
    for name, expected in cases:
        strengths = dict.fromkeys(("brightness", "contrast", "saturation", "hue"), 0.0)
        strengths[name] = 0.4 if name != "hue" else 0.2
        view = ViewTransform(ViewConfig(16, **strengths), CIFAR)
        out = view._color_jitter(x.clone(), random)
        assert torch.allclose(out, expected, atol=1e-5), name
    gray = unnormalize(build_view_transform(plain_view(16, grayscale_prob=1.0), CIFAR)(x), CIFAR)
    assert torch.allclose(gray, tvf.rgb_to_grayscale_image(x, num_output_channels=3), atol=1e-5)


@pytest.mark.parametrize("shift", [-0.5, -0.1, 0.0, 0.03, 0.25, 0.5])
def test_hue_shift_matches_torchvision(shift) -> None:
    x = (torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(1)) * 255).round() / 255
    x[:, :3] = x[:1, :3]  # gray pixels (no hue)
    x[1, 3:6] = x[0, 3:6]  # ties between red and green
    assert torch.allclose(_shift_hue(x, shift), tvf.adjust_hue_image(x, shift), atol=1e-5)


@pytest.mark.parametrize(("size", "kernel", "sigma"), [(32, 3, 0.1), (96, 9, 1.3), (40, 23, 2.0)])
def test_gaussian_blur_matches_torchvision(size, kernel, sigma) -> None:
    x = torch.rand(3, size, size + 5)
    expected = tvf.gaussian_blur_image(x, [kernel, kernel], [sigma, sigma])
    assert torch.allclose(_gaussian_blur(x, gaussian_weights(kernel, sigma)), expected, atol=1e-5)


def test_flip_and_solarization_steps() -> None:
    image = torch.arange(28, dtype=torch.uint8).repeat(1, 28, 1) * 9  # brightness grows to the right
    flipped = build_view_transform(plain_view(28, horizontal_flip=1.0), FASHION)(image)
    assert torch.equal(flipped, eval_transform(FASHION)(image).flip(-1))
    solarized = unnormalize(build_view_transform(plain_view(28, solarization_prob=1.0), FASHION)(image), FASHION)
    x = image.float() / 255
    assert torch.allclose(solarized, torch.where(x >= 0.5, 1 - x, x), atol=1e-5)


def test_blur_kernel_follows_byol() -> None:
    assert ViewTransform(byol_view_configs(IMAGENET)[0], IMAGENET).blur_kernel == 23
    assert ViewTransform(byol_view_configs(STL)[0], STL).blur_kernel == 9
    torch.manual_seed(0)
    blurred = build_view_transform(plain_view(96, gaussian_blur_prob=1.0), STL)(random_image(3, 96))
    plain = eval_transform(STL)(random_image(3, 96))
    assert blurred.std() < plain.std()  # blurring a noise image lowers its contrast


def test_random_crops_respect_scale_and_bounds() -> None:
    view = ViewTransform(ViewConfig(32, crop_scale=(0.2, 0.5)), CIFAR)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        random = torch.rand(RandomColumns.COUNT, generator=generator).tolist()
        top, left, h, w = view.crop_box(40, 60, random)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.15 <= h * w / 2400 <= 0.55
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # Nothing fits a (1, 1) crop of a very wide image: the fallback is the widest centred crop allowed.
    assert ViewTransform(plain_view(32), CIFAR).crop_box(10, 100, [0.5] * 36) == (0, 43, 10, 13)
