"""Batched views on the device (data.augment_on=device): the per-image recipe, a whole batch at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_RUN
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as tvf

from dimcl.checkpoint import load_checkpoint
from dimcl.data import (
    TensorImageDataset,
    ViewConfig,
    ViewTransform,
    byol_view_configs,
    dataset_info,
    eval_transform,
    run_splits,
)
from dimcl.data.augment_plan import RandomColumns
from dimcl.data.device_views import (
    BatchMultiView,
    BatchViewTransform,
    RawImageTransform,
    build_batch_views,
    raw_image_transform,
)
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import read_metrics

FASHION = dataset_info("fashion_mnist")
CIFAR = dataset_info("cifar10")
STL = dataset_info("stl10")
IMAGENET = dataset_info("imagefolder")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def random_batch(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=generator)


def plain_view(crop_size: int, **changes) -> ViewConfig:
    """A view that changes nothing unless told to: full-image square crop, every probability 0."""
    settings = dict(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
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


def colour_only(info, **strengths) -> BatchViewTransform:
    """An identity-crop view whose colour jitter is always on, with the given strengths (others 0)."""
    values = dict.fromkeys(("brightness", "contrast", "saturation", "hue"), 0.0) | strengths
    return BatchViewTransform(plain_view(info.image_size, color_jitter_prob=1.0, **values), info)


# --------------------------------------------------------------------------------------------------
# The deterministic limit, and agreement with the per-image path


@pytest.mark.parametrize(("info", "size"), [(FASHION, 28), (CIFAR, 32), (FASHION, 36), (CIFAR, 45)])
def test_identity_settings_equal_the_eval_transform(info, size) -> None:
    images = random_batch(6, info.in_channels, info.image_size)
    out = BatchViewTransform(plain_view(size), info)(images)
    expected = torch.stack([eval_transform(info, size)(image) for image in images])
    assert out.shape == expected.shape == (6, info.in_channels, size, size)
    assert torch.allclose(out, expected, atol=1e-5)


def test_shrinking_crops_are_antialiased_like_interpolate() -> None:
    images = random_batch(3, 3, 96)
    out = unnormalize(BatchViewTransform(plain_view(64), STL)(images), STL)
    expected = F.interpolate(images.float() / 255, size=(64, 64), mode="bilinear", antialias=True)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("info", "view"),
    [
        (FASHION, byol_view_configs(FASHION)[0]),
        (FASHION, byol_view_configs(FASHION)[1]),
        (CIFAR, byol_view_configs(CIFAR)[0]),
        (CIFAR, byol_view_configs(CIFAR)[1]),
        # every step of the recipe, each with a coin flip per image
        (CIFAR, ViewConfig(32, gaussian_blur_prob=0.5, solarization_prob=0.5, grayscale_prob=0.5)),
        (FASHION, ViewConfig(28, saturation=0, hue=0, grayscale_prob=0, gaussian_blur_prob=0.5, solarization_prob=0.5)),
    ],
)
def test_a_batch_gets_the_per_image_views_of_the_same_seed(info, view) -> None:
    """On the CPU, torch.rand((B, 36)) draws what B calls of torch.rand(36) draw, and the random numbers
    are laid out as ViewTransform's: so crop, flip, jitter (factors and order), grayscale, blur and
    solarization must all come out as the per-image transform makes them, image after image."""
    images = random_batch(48, info.in_channels, info.image_size, seed=3)
    torch.manual_seed(11)
    batched = BatchViewTransform(view, info)(images)
    torch.manual_seed(11)
    per_image = ViewTransform(view, info)
    expected = torch.stack([per_image(image) for image in images])
    # Resize as a matrix product (<= 28 terms <= 1) vs torchvision's: <= 2 * 28 * 6e-8; ~30 elementwise steps
    # add <= 2e-6; normalising by std 0.353 multiplies by 2.8: ~1.5e-5 at worst (docs/testing.md)
    assert torch.allclose(batched, expected, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Each step with fixed parameters, per sample, against torchvision


@pytest.mark.parametrize(
    ("name", "strength", "reference"),
    [
        ("brightness", 0.5, tvf.adjust_brightness_image),
        ("contrast", 0.5, tvf.adjust_contrast_image),
        ("saturation", 0.5, tvf.adjust_saturation_image),
        ("hue", 0.5, tvf.adjust_hue_image),
    ],
)
def test_each_colour_step_matches_torchvision_per_sample(name, strength, reference) -> None:
    images = random_batch(5, 3, 32)
    transform = colour_only(CIFAR, **{name: strength})
    params = transform.draw(5, 32, 32, "cpu")
    factors = torch.tensor([0.6, 0.8, 1.0, 1.2, 1.4]) if name != "hue" else torch.tensor([-0.4, -0.1, 0.0, 0.2, 0.5])
    params = dataclasses.replace(params, factors=factors[:, None])
    out = unnormalize(transform.apply(images, params), CIFAR)
    for image, factor, got in zip(images, factors.tolist(), out, strict=True):
        assert torch.allclose(got, reference(image.float() / 255, factor), atol=1e-5), (name, factor)


def test_grayscale_data_jitters_brightness_and_contrast_per_sample() -> None:
    images = random_batch(4, 1, 28)
    transform = colour_only(FASHION, brightness=0.4, contrast=0.4, saturation=0.5, hue=0.2)
    assert [name for name, _, _ in transform.jitter] == ["brightness", "contrast"]  # colour steps skipped
    params = transform.draw(4, 28, 28, "cpu")
    factors = torch.tensor([[0.7, 1.3], [1.2, 0.8], [1.0, 1.0], [0.65, 0.9]])
    order = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]])  # contrast first for samples 1 and 3
    out = unnormalize(transform.apply(images, dataclasses.replace(params, factors=factors, order=order)), FASHION)
    for image, (b, c), first, got in zip(images, factors.tolist(), order[:, 0].tolist(), out, strict=True):
        x = image.float() / 255
        if first == 0:
            expected = tvf.adjust_contrast_image(tvf.adjust_brightness_image(x, b), c)
        else:
            expected = tvf.adjust_brightness_image(tvf.adjust_contrast_image(x, c), b)
        assert torch.allclose(got, expected, atol=1e-5)


def test_grayscale_blur_and_solarization_per_sample() -> None:
    images = random_batch(4, 3, 32)
    x = images.float() / 255
    gray = unnormalize(BatchViewTransform(plain_view(32, grayscale_prob=1.0), CIFAR)(images), CIFAR)
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-6) and torch.allclose(gray[:, 1], gray[:, 2], atol=1e-6)
    assert torch.allclose(gray, tvf.rgb_to_grayscale_image(x, num_output_channels=3), atol=1e-5)

    blur = BatchViewTransform(plain_view(32, gaussian_blur_prob=1.0), CIFAR)
    params = blur.draw(4, 32, 32, "cpu")
    sigmas = torch.tensor([0.3, 0.8, 1.5, 2.0], dtype=torch.float64)
    out = unnormalize(blur.apply(images, dataclasses.replace(params, sigma=sigmas)), CIFAR)
    k = blur.blur_kernel
    for image, sigma, got in zip(x, sigmas.tolist(), out, strict=True):
        assert torch.allclose(got, tvf.gaussian_blur_image(image, [k, k], [sigma, sigma]), atol=1e-5)

    solar = BatchViewTransform(plain_view(32, solarization_prob=1.0), CIFAR)
    params = solar.draw(4, 32, 32, "cpu")
    mask = torch.tensor([True, False, True, False])
    out = unnormalize(solar.apply(images, dataclasses.replace(params, solarize=mask)), CIFAR)
    assert torch.allclose(out[mask], torch.where(x[mask] >= 0.5, 1 - x[mask], x[mask]), atol=1e-5)
    assert torch.allclose(out[~mask], x[~mask], atol=1e-5)


def test_flip_and_crop_with_given_boxes() -> None:
    images = torch.arange(40 * 60, dtype=torch.float32).view(1, 1, 40, 60).expand(3, 1, 40, 60) / 2400
    transform = BatchViewTransform(plain_view(20), FASHION)
    params = transform.draw(3, 40, 60, "cpu")
    boxes = torch.tensor([[0, 0, 20, 20], [5, 30, 20, 20], [10, 7, 20, 20]])
    flip = torch.tensor([False, True, False])
    out = unnormalize(transform.apply(images, dataclasses.replace(params, boxes=boxes, flip=flip)), FASHION)
    for (top, left, h, w), flipped, got, image in zip(boxes.tolist(), flip.tolist(), out, images, strict=True):
        crop = image[:, top : top + h, left : left + w]
        assert torch.allclose(got, crop.flip(-1) if flipped else crop, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Random parameters


def test_crop_boxes_are_torchvisions_and_stay_in_range() -> None:
    view = ViewConfig(32, crop_scale=(0.2, 0.5), horizontal_flip=0.3, color_jitter_prob=0.8)
    transform = BatchViewTransform(view, CIFAR)
    torch.manual_seed(0)
    params = transform.draw(4000, 40, 60, "cpu")
    top, left, h, w = params.boxes.T
    assert (top >= 0).all() and (top + h <= 40).all() and (left >= 0).all() and (left + w <= 60).all()
    area = (h * w).double() / 2400
    assert area.min() >= 0.15 and area.max() <= 0.55  # the scale range, up to rounding to whole pixels
    assert area.mean() == pytest.approx(0.35, abs=0.02)  # uniform over the range
    ratio = w.double() / h
    assert ratio.min() >= 3 / 4 * 0.85 and ratio.max() <= 4 / 3 * 1.15
    assert params.flip.float().mean() == pytest.approx(0.3, abs=0.03)
    assert params.jitter.float().mean() == pytest.approx(0.8, abs=0.03)
    # Box for box what the per-image transform makes of the same random numbers.
    torch.manual_seed(0)
    random = torch.rand(100, RandomColumns.COUNT).tolist()
    expected = [ViewTransform(view, CIFAR).crop_box(40, 60, r) for r in random]
    assert params.boxes[:100].tolist() == [list(box) for box in expected]
    # Nothing fits a (1, 1) crop of a very wide image: the widest centred crop allowed, for every sample.
    fallback = BatchViewTransform(plain_view(32, crop_ratio=(0.75, 4 / 3)), CIFAR).draw(5, 10, 100, "cpu")
    assert fallback.boxes.tolist() == [[0, 43, 10, 13]] * 5


def test_parameters_differ_across_the_batch() -> None:
    transform = BatchViewTransform(byol_view_configs(CIFAR)[1], CIFAR)
    image = random_batch(1, 3, 32)
    torch.manual_seed(0)
    params = transform.draw(64, 32, 32, "cpu")
    assert len({tuple(box) for box in params.boxes.tolist()}) > 50
    assert params.factors.std(dim=0).min() > 0.05 and len({tuple(o) for o in params.order.tolist()}) > 10
    assert 0 < params.flip.sum() < 64 and 0 < params.solarize.sum() < 64
    views = transform(image.expand(64, -1, -1, -1))  # one image 64 times: 64 different views
    assert len({v.sum().item() for v in views}) == 64


def test_views_are_reproducible_under_manual_seed() -> None:
    views = build_batch_views(byol_view_configs(CIFAR), CIFAR)
    images = random_batch(8, 3, 32)
    torch.manual_seed(5)
    first = views(images)
    torch.manual_seed(5)
    second = views(images)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # two views of one batch differ
    torch.manual_seed(6)
    assert not torch.equal(views(images)[0], first[0])


# --------------------------------------------------------------------------------------------------
# Shapes, dtypes, devices, inputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("info", "crop"), [(FASHION, None), (CIFAR, None), (STL, 64)])
def test_shapes_dtypes_and_devices(info, crop, device) -> None:
    views = build_batch_views(byol_view_configs(info, crop), info)
    images = random_batch(4, info.in_channels, info.image_size).to(device)
    copy = images.clone()
    torch.manual_seed(0)
    out = views(images)
    size = crop or info.image_size
    assert isinstance(out, list) and len(out) == len(views) == 2
    for view in out:
        assert view.shape == (4, info.in_channels, size, size) and view.dtype == torch.float32
        assert view.device == images.device and torch.isfinite(view).all()
    assert torch.equal(images, copy)  # the input is left alone


def test_float_input_and_channel_checks() -> None:
    transform = BatchViewTransform(plain_view(32), CIFAR)
    images = random_batch(2, 3, 32)
    as_float = images.float() / 255
    copy = as_float.clone()
    assert torch.allclose(transform(as_float), transform(images), atol=1e-6)
    assert torch.equal(as_float, copy)
    gray = random_batch(2, 1, 32)  # grayscale images in an RGB dataset
    assert torch.allclose(transform(gray), transform(gray.expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match="1-channel images"):
        BatchViewTransform(plain_view(28), FASHION)(random_batch(2, 3, 28))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        transform(images[0])
    with pytest.raises(ValueError, match="at least one"):
        BatchMultiView([])


# --------------------------------------------------------------------------------------------------
# The loader side


def test_raw_transform_keeps_fixed_size_images_and_squares_image_folders() -> None:
    image = random_batch(1, 3, 32)[0]
    out = raw_image_transform(CIFAR, 32)(image)
    assert torch.equal(out, image) and out.dtype == torch.uint8
    assert raw_image_transform(STL, 64).size is None  # STL-10 stays at 96 px; the crop resizes
    folder = raw_image_transform(IMAGENET, 224)
    assert folder.size == 256
    photo = Image.new("RGB", (400, 300), (200, 30, 90))
    out = folder(photo)
    assert out.shape == (3, 256, 256) and out.dtype == torch.uint8 and out[:, 128, 128].tolist() == [200, 30, 90]
    assert folder(torch.full((1, 50, 80), 7, dtype=torch.uint8)).shape == (3, 256, 256)  # a grayscale file
    assert RawImageTransform(IMAGENET, 64)(photo).shape == (3, 64, 64)


def test_raw_images_batch_through_a_dataloader_into_views() -> None:
    dataset = TensorImageDataset(random_batch(6, 1, 28), torch.arange(6), raw_image_transform(FASHION))
    images, labels = next(iter(DataLoader(dataset, batch_size=4)))
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.uint8 and labels.tolist() == [0, 1, 2, 3]
    views = build_batch_views(byol_view_configs(FASHION), FASHION)(images)
    assert [v.shape for v in views] == [(4, 1, 28, 28)] * 2


# --------------------------------------------------------------------------------------------------
# Wiring into pretraining


def tiny_config(root, *extra):
    return load_config(resolve_recipe("fashion_mnist/byol"), [*TINY_RUN, f"data.root={root}", *extra])


def test_setup_builds_raw_datasets_and_device_views(tiny_fashion_mnist) -> None:
    assert run_splits(tiny_config(tiny_fashion_mnist)).device_views() is None
    splits = run_splits(tiny_config(tiny_fashion_mnist, "data.augment_on=device", "augment.contrast=0.3"))
    image, label = splits.pretrain()[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= label < 10
    views = splits.device_views()
    assert isinstance(views, BatchMultiView) and len(views) == 2
    assert [t.view.solarization_prob for t in views.transforms] == [0.0, 0.2]  # the recipe's views
    assert [t.view.contrast for t in views.transforms] == [0.3, 0.3]  # with its augment.* overrides


def test_pretrain_with_device_views_runs_and_resumes_mid_epoch_exactly(tiny_fashion_mnist, tmp_path, monkeypatch):
    """A real run with data.augment_on=device, and a mid-epoch resume replaying it bit for bit."""
    import dimcl.train.loop as loop

    cfg = tiny_config(tiny_fashion_mnist, "data.augment_on=device", "trainer.checkpoint_every_n_steps=2")
    full = loop.pretrain(cfg, tmp_path / "full")
    records = read_metrics(tmp_path / "full")
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("loss", "loss_ssl", "loss_dimcl", "knn_top1", "probe_top1"):
        assert all(key in r for r in records), key
    assert (tmp_path / "full" / "backbone.safetensors").is_file()

    calls = {"n": 0}
    original = loop.set_learning_rate

    def stop_in_second_epoch(optimizer, factor):
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 2, after the mid-epoch checkpoint at step 8
            raise KeyboardInterrupt
        original(optimizer, factor)

    monkeypatch.setattr(loop, "set_learning_rate", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        loop.pretrain(cfg, tmp_path / "part")
    monkeypatch.setattr(loop, "set_learning_rate", original)
    assert load_checkpoint(tmp_path / "part" / "checkpoints" / "last.ckpt")["batch_in_epoch"] == 2
    resumed = loop.pretrain(cfg, tmp_path / "part", resume=True)
    assert resumed.records[-1]["loss"] == full.records[-1]["loss"]
    for p, q in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(p, q)
