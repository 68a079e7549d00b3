"""Image operations shared by the per-image and per-batch paths: one image and a batch get the same bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as tvf

from dimcl.data.image_ops import (
    as_image_tensor,
    luma,
    reflect_pad,
    resize_shorter_side,
    resized_side,
    rgb_from_hue,
    solarize,
)


def test_luma_of_an_image_and_of_a_batch() -> None:
    batch = torch.rand(4, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    out = luma(batch)
    assert out.shape == (4, 1, 9, 11)
    for image, got in zip(batch, out, strict=True):
        assert torch.equal(luma(image), got)  # the same operations on a (3, H, W) image
    assert torch.allclose(out, tvf.rgb_to_grayscale_image(batch), atol=1e-6)
    gray = torch.rand(2, 1, 5, 5)
    assert luma(gray) is gray


def test_solarize_is_byols_where_on_every_input() -> None:
    # Every value an 8-bit image can take, the float32 neighbours of 0.5 and 1, and values a blur
    # can push just outside [0, 1].
    half, one = torch.tensor(0.5), torch.tensor(1.0)
    x = torch.cat([
        torch.arange(256) / 255,
        torch.tensor([0.0, 1e-8, -1e-7, 1.0000001, 2.5, -0.0]),
        torch.stack([half.nextafter(one - 1), half, half.nextafter(one), one.nextafter(half)]),
        torch.rand(10000, generator=torch.Generator().manual_seed(0)),
    ])
    assert torch.equal(solarize(x), torch.where(x >= 0.5, 1 - x, x))


def hue_in_sixths(rgb: torch.Tensor) -> torch.Tensor:
    """Reference HSV hue of (B, 3, H, W) images in [0, 6), the textbook piecewise formula."""
    r, g, b = rgb.unbind(1)
    maxc, minc = rgb.amax(dim=1), rgb.amin(dim=1)
    chroma = maxc - minc
    next_to_green_or_blue = torch.where(maxc == g, (b - r) / chroma + 2, (r - g) / chroma + 4)
    return torch.where(maxc == r, ((g - b) / chroma) % 6, next_to_green_or_blue).unsqueeze(1)


def test_rgb_from_hue_rebuilds_the_image_at_its_own_hue() -> None:
    rgb = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    maxc, minc = rgb.amax(dim=1, keepdim=True), rgb.amin(dim=1, keepdim=True)
    out = rgb_from_hue(hue_in_sixths(rgb), maxc - minc, minc)
    assert torch.allclose(out, rgb, atol=1e-6)  # float32 rounding of a few operations on values in [0, 1]
    single = rgb_from_hue(hue_in_sixths(rgb)[0], (maxc - minc)[0], minc[0])
    assert torch.equal(single, out[0])  # one image and a batch broadcast the same profile


@pytest.mark.parametrize("dim", [-1, -2])
def test_reflect_pad_is_f_pad_reflect(dim) -> None:
    x = torch.rand(2, 3, 7, 9)
    padding = (3, 3, 0, 0) if dim == -1 else (0, 0, 3, 3)
    assert torch.equal(reflect_pad(x, 3, dim), F.pad(x, padding, mode="reflect"))


def test_resize_shorter_side_and_the_imagenet_resize() -> None:
    assert resized_side(224) == 256 and resized_side(112) == 128
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert resize_shorter_side(image, 256).shape == (3, 256, 341)
    assert resize_shorter_side(image, 300) is image  # already there: no resampling


def test_as_image_tensor_accepts_pil_and_grayscale_files() -> None:
    out = as_image_tensor(Image.new("RGB", (5, 4), (1, 2, 3)), 3)
    assert out.shape == (3, 4, 5) and out.dtype == torch.uint8 and out[:, 0, 0].tolist() == [1, 2, 3]
    assert as_image_tensor(torch.zeros(4, 5, dtype=torch.uint8), 3).shape == (3, 4, 5)
    # an RGB image for a grayscale backbone (a transfer evaluation) becomes its luma, still uint8
    gray = as_image_tensor(Image.new("RGB", (5, 4), (200, 100, 50)), 1)
    assert gray.shape == (1, 4, 5) and gray.dtype == torch.uint8
    assert gray[0, 0, 0].item() == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    with pytest.raises(ValueError, match="1-channel images"):
        as_image_tensor(torch.zeros(4, 4, 5), 1)
    with pytest.raises(TypeError, match="PIL image"):
        as_image_tensor([[0]], 1)
