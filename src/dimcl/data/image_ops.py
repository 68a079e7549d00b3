"""Image tensor operations shared by the per-image and the per-batch augmentation paths.

Every function takes the channels at dimension -3, so it works on one image (C, H, W) and on a batch
(B, C, H, W) alike, with the same arithmetic in the same order.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as tvf

# Luma weights of ITU-R 601-2, the ones torchvision (and PIL) use for grayscale conversion.
LUMA = (0.2989, 0.587, 0.114)

# Per channel (R, G, B), the piecewise-linear HSV -> RGB profile: clamp(A + S * |6h - K|, 0, 1).
HUE_K = (3.0, 2.0, 4.0)
HUE_S = (1.0, -1.0, -1.0)
HUE_A = (-1.0, 2.0, 2.0)

#: Large images are resized so that the crop is this fraction of their shorter side (256 px for 224 px crops)
CENTRE_CROP_FRACTION = 0.875


def as_image_tensor(image: Any, channels: int) -> Tensor:
    """A (C, H, W) tensor (uint8 or float) from a PIL image or tensor, with the dataset's channel count."""
    if isinstance(image, Image.Image):
        image = tvf.pil_to_tensor(image)
    elif not isinstance(image, Tensor):
        raise TypeError(f"expected a PIL image or a (C, H, W) tensor, got {type(image).__name__}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3:
        raise ValueError(f"expected an image tensor of shape (C, H, W), got {tuple(image.shape)}")
    if image.shape[0] != channels:
        if image.shape[0] == 1 and channels == 3:  # a grayscale file in an RGB dataset
            image = image.expand(3, -1, -1)
        elif image.shape[0] == 3 and channels == 1:  # an RGB image for a grayscale backbone (transfer): its luma
            gray = luma(image.float())
            image = gray.round_().clamp_(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else gray
        else:
            raise ValueError(f"expected {channels}-channel images, got shape {tuple(image.shape)}")
    return image


def resized_side(crop_size: int) -> int:
    """The shorter side an image is resized to before its centre ``crop_size`` square is taken."""
    return round(crop_size / CENTRE_CROP_FRACTION)


def resize_shorter_side(image: Tensor, side: int) -> Tensor:
    """``image`` with its shorter side resized to ``side`` (antialiased, aspect ratio kept); as is if it has it."""
    if min(image.shape[-2:]) == side:
        return image
    return tvf.resize_image(image, [side], antialias=True)


def luma(x: Tensor) -> Tensor:
    """Luma of float images (..., C, H, W), shape (..., 1, H, W); a 1-channel image is its own luma."""
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(-3)


@functools.lru_cache(maxsize=256)
def _device_constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def device_constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``torch.tensor(values)`` on ``device``, made once per (values, dtype, device) and then reused: a
    host-to-device copy in every batch would make the host wait for the device. Never modify the result
    in place."""
    return _device_constant(tuple(values), dtype, torch.device(device))


def _hue_profile(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(device_constant(v, dtype, device).view(3, 1, 1) for v in (HUE_K, HUE_S, HUE_A))


def rgb_from_hue(hue6: Tensor, chroma: Tensor, minimum: Tensor) -> Tensor:
    """RGB images (..., 3, H, W) from hue in sixths of a turn, chroma and smallest channel, each (..., 1, H, W).

    ``rgb = min + chroma * profile(hue)``: a hue rotation keeps every pixel's largest and smallest
    channel, so the HSV image never needs to be built. Edits ``hue6``'s result in place, not its inputs.
    """
    k, s, a = _hue_profile(hue6.device, hue6.dtype)
    return hue6.sub(k).abs_().mul_(s).add_(a).clamp_(0, 1).mul_(chroma).add_(minimum)


def reflect_pad(image: Tensor, pad: int, dim: int) -> Tensor:
    """Reflect-pad ``dim`` by ``pad`` on both sides (edge not repeated), like ``F.pad(mode="reflect")``.

    Built from flipped slices because ``F.pad``'s reflect kernel enters a parallel region on every call,
    which is slow when the process has several threads and the cores are busy.
    """
    size = image.shape[dim]
    before = image.narrow(dim, 1, pad).flip(dim)
    after = image.narrow(dim, size - pad - 1, pad).flip(dim)
    return torch.cat([before, image, after], dim=dim)


def solarize(x: Tensor) -> Tensor:
    """BYOL's solarization of images in [0, 1], ``x >= 0.5 -> 1 - x``, written as ``min(x, 1 - x)``.

    The two agree on every float32 value: for ``x >= 0.5``, ``1 - x`` is exact and not above ``x``; for
    ``x < 0.5``, ``1 - x`` rounds to at least 0.5. ``minimum`` avoids an element-wise ``where``, slow on CPUs.
    """
    return torch.minimum(x, 1 - x)
