"""One view's augmentation resolved for a dataset: the plan that both the per-image and the per-batch paths apply.

:class:`~dimcl.data.view_config.ViewConfig` says what was asked for; :class:`AugmentPlan` says what that
means for a dataset: which colour-jitter steps do something (saturation, hue and grayscale mean nothing for
1-channel data) and the range of each one's random factor, the crop geometry, the blur kernel, the
normalisation constants. :class:`~dimcl.data.views.ViewTransform` (one image in a loader worker) and
:class:`~dimcl.data.device_views.BatchViewTransform` (a whole batch on the training device) are both built
from a plan, so the recipe has one home.

Randomness is shared the same way. Each image gets one row of :attr:`RandomColumns.COUNT` uniform numbers
in [0, 1), laid out as :class:`RandomColumns` says, and both paths turn a row into parameters with the
functions below: :func:`scaled` maps a number onto a range, :meth:`AugmentPlan.crop_box` (one row, Python
floats) and :meth:`AugmentPlan.crop_boxes` (a batch of rows, tensors) apply torchvision's
``RandomResizedCrop`` algorithm with the same formulas in the same order, and :func:`gaussian_weights` /
:func:`batch_gaussian_weights` give the blur kernel of a sigma. On the CPU ``torch.rand((B, COUNT))`` draws
what ``B`` calls of ``torch.rand(COUNT)`` draw, so a batch gets the parameters its images get one by one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from dimcl.data.image_ops import device_constant
from dimcl.data.info import DatasetInfo
from dimcl.data.view_config import ViewConfig

#: (area, aspect ratio) pairs tried for a random crop, as torchvision's RandomResizedCrop, before its fallback
CROP_TRIES = 10


class RandomColumns:
    """Where each step finds its uniform random numbers in the row drawn for one image."""

    CROP = 0  # CROP_TRIES (area, aspect ratio) pairs
    POSITION = 20  # top, left
    FLIP = 22
    JITTER = 23
    FACTORS = 24  # one per jitter step (at most 4)
    ORDER = 28  # sort keys giving the random order of the jitter steps
    GRAY = 32
    BLUR = 33
    SIGMA = 34
    SOLARIZE = 35
    COUNT = 36


class JitterStep(NamedTuple):
    """A colour-jitter step that changes something, and the range its random factor is drawn from.

    Brightness, contrast and saturation factors multiply (``low >= 0``); the hue factor is a shift in
    turns of the colour wheel, symmetric around 0.
    """

    name: str  # "brightness", "contrast", "saturation" or "hue"
    low: float
    high: float


def scaled(low: float | Tensor, high: float | Tensor, uniform: float | Tensor) -> Any:
    """``uniform`` in [0, 1) mapped onto [low, high): Python floats and tensors alike, with the same rounding."""
    return low + (high - low) * uniform


def blur_kernel_size(crop_size: int) -> int:
    """Side of the Gaussian blur kernel: about 10% of the crop and odd, as BYOL's 23 px at 224 px."""
    return max(3, int(0.1 * crop_size) // 2 * 2 + 1)


def kernel_offsets(kernel_size: int) -> list[float]:
    """Distance of each kernel tap from the kernel's centre, in pixels (exact in float32 and float64)."""
    half = (kernel_size - 1) / 2
    return [i - half for i in range(kernel_size)]


def gaussian_weights(kernel_size: int, sigma: float) -> list[float]:
    """Normalised 1-D Gaussian kernel ``exp(-x^2 / (2 sigma^2)) / sum``, torchvision's, as Python floats."""
    weights = [math.exp(-0.5 * (offset / sigma) ** 2) for offset in kernel_offsets(kernel_size)]
    total = sum(weights)
    return [w / total for w in weights]


def batch_gaussian_weights(kernel_size: int, sigma: Tensor) -> Tensor:
    """:func:`gaussian_weights` for a (B,) tensor of sigmas: (B, kernel_size) in sigma's dtype and device."""
    offsets = torch.tensor(kernel_offsets(kernel_size), dtype=sigma.dtype, device=sigma.device)
    weights = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class AugmentPlan:
    """One view resolved for a dataset: random resized crop -> flip -> colour jitter -> grayscale -> blur ->
    solarization -> normalisation, each step with its own probability (see the module docstring)."""

    channels: int
    crop_size: int  # side of the square output, in pixels
    crop_scale: tuple[float, float]  # area fraction of the crop
    crop_ratio: tuple[float, float]  # aspect ratio (width / height) range of the crop
    log_ratio: tuple[float, float]  # the ratio range in log space, where it is drawn uniformly
    horizontal_flip: float
    jitter: tuple[JitterStep, ...]  # the steps that do something, in their fixed column order
    color_jitter_prob: float  # 0 when no step does anything
    grayscale_prob: float  # 0 for 1-channel data
    gaussian_blur_prob: float
    blur_sigma: tuple[float, float]  # in pixels of the crop
    blur_kernel: int
    solarization_prob: float
    mean: tuple[float, ...]  # per channel, applied last: (x - mean) / std
    std: tuple[float, ...]

    @classmethod
    def from_view(cls, view: ViewConfig, info: DatasetInfo) -> AugmentPlan:
        """The plan of ``view`` for images of ``info``'s dataset."""
        channels = info.in_channels
        mean = tuple(float(v) for v in info.mean)
        std = tuple(float(v) for v in info.std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"dataset {info.name}: mean/std need {channels} values, got {info.mean}, {info.std}")
        color = channels == 3
        strengths = {
            "brightness": view.brightness,
            "contrast": view.contrast,
            "saturation": view.saturation if color else 0.0,
            "hue": view.hue if color else 0.0,
        }
        jitter = tuple(
            JitterStep(name, -s, s) if name == "hue" else JitterStep(name, max(0.0, 1 - s), 1 + s)
            for name, s in strengths.items()
            if s > 0
        )
        return cls(
            channels=channels,
            crop_size=view.crop_size,
            crop_scale=view.crop_scale,
            crop_ratio=view.crop_ratio,
            log_ratio=(math.log(view.crop_ratio[0]), math.log(view.crop_ratio[1])),
            horizontal_flip=view.horizontal_flip,
            jitter=jitter,
            color_jitter_prob=view.color_jitter_prob if jitter else 0.0,
            grayscale_prob=view.grayscale_prob if color else 0.0,
            gaussian_blur_prob=view.gaussian_blur_prob,
            blur_sigma=view.blur_sigma,
            blur_kernel=blur_kernel_size(view.crop_size),
            solarization_prob=view.solarization_prob,
            mean=mean,
            std=std,
        )

    def mean_std(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """The normalisation constants as float32 tensors of shape (C, 1, 1) on ``device`` (cached there:
        read-only)."""
        mean = device_constant(self.mean, torch.float32, device).view(-1, 1, 1)
        std = device_constant(self.std, torch.float32, device).view(-1, 1, 1)
        return mean, std

    def fallback_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's box when no try fits: the largest centred crop whose aspect ratio is allowed."""
        ratio = width / height
        if ratio < self.crop_ratio[0]:
            w, h = width, round(width / self.crop_ratio[0])
        elif ratio > self.crop_ratio[1]:
            h, w = height, round(height * self.crop_ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def crop_box(self, height: int, width: int, random: Sequence[float]) -> tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of the random resized crop that one row of uniforms gives."""
        area = height * width
        for k in range(CROP_TRIES):
            u_area, u_ratio = random[RandomColumns.CROP + 2 * k], random[RandomColumns.CROP + 2 * k + 1]
            target = area * scaled(self.crop_scale[0], self.crop_scale[1], u_area)
            ratio = math.exp(scaled(self.log_ratio[0], self.log_ratio[1], u_ratio))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(random[RandomColumns.POSITION] * (height - h + 1))
                left = int(random[RandomColumns.POSITION + 1] * (width - w + 1))
                return top, left, h, w
        return self.fallback_box(height, width)

    def crop_boxes(self, random: Tensor, height: int, width: int) -> Tensor:
        """:meth:`crop_box` for a (B, COUNT) batch of rows (float64 for the per-image path's rounding).

        Returns (B, 4) int64 boxes (top, left, height, width), on the rows' device.
        """
        u = random[:, RandomColumns.CROP : RandomColumns.CROP + 2 * CROP_TRIES].view(-1, CROP_TRIES, 2)
        target = height * width * scaled(self.crop_scale[0], self.crop_scale[1], u[..., 0])
        ratio = torch.exp(scaled(self.log_ratio[0], self.log_ratio[1], u[..., 1]))
        w = torch.sqrt(target * ratio).round()  # round half to even, as Python's round()
        h = torch.sqrt(target / ratio).round()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
        found = fits.any(dim=1)
        h = h.gather(1, first).squeeze(1)
        w = w.gather(1, first).squeeze(1)
        top = (random[:, RandomColumns.POSITION] * (height - h + 1)).floor()
        left = (random[:, RandomColumns.POSITION + 1] * (width - w + 1)).floor()
        boxes = torch.stack([top, left, h, w], dim=1).to(torch.int64)
        fallback = torch.tensor(self.fallback_box(height, width), dtype=torch.int64, device=random.device)
        return torch.where(found[:, None], boxes, fallback)


class PlannedView:
    """What the per-image and the per-batch transforms share: their view config and its resolved plan."""

    def __init__(self, view: ViewConfig, info: DatasetInfo) -> None:
        self.view = view
        self.plan = AugmentPlan.from_view(view, info)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.view})"

    @property
    def jitter(self) -> tuple[JitterStep, ...]:
        """The colour-jitter steps that do something for this dataset (the plan's)."""
        return self.plan.jitter

    @property
    def blur_kernel(self) -> int:
        """Side of the Gaussian blur kernel (the plan's)."""
        return self.plan.blur_kernel
