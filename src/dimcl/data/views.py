"""Augmented views made one image at a time, in the DataLoader workers: the BYOL asymmetric recipe
(Grill et al., 2020), every knob configurable.

One view is: random resized crop -> horizontal flip -> colour jitter (brightness, contrast, saturation,
hue in random order) -> grayscale -> Gaussian blur -> solarization -> normalisation, each step applied
with its own probability. The two BYOL views differ only in their blur and solarization probabilities.
:class:`ViewTransform` applies the :class:`~dimcl.data.augment_plan.AugmentPlan` of a
:class:`~dimcl.data.view_config.ViewConfig`, the plan that the per-batch path
(:mod:`dimcl.data.device_views`) applies too.

Speed. The CPU demo pre-trains on Fashion-MNIST on two cores, where a per-image
``torchvision.transforms.v2.Compose`` spends most of its time in Python dispatch rather than arithmetic.
So :class:`ViewTransform` draws all its random numbers with one ``torch.rand`` call, crops the uint8
tensor by slicing, converts only the crop to float, resizes only when the size changes, and does the
colour steps in place with torchvision's formulas; hue and blur use cheaper exact formulations (see
``_shift_hue`` and ``_gaussian_blur``; the tests compare all of them with torchvision's kernels).
Ops that open a parallel region even for tiny tensors (``argmax``, ``F.pad(mode="reflect")``) are
avoided: on a busy 2-core box each such region is slow when the process has 2 threads.

Randomness comes from the generator that :func:`drawing_from` sets for the image being made (the
pretraining loader seeds one per image from (seed, epoch, image index): see
:class:`dimcl.train.sampling.PerImageSeeds`), else from torch's global generator, which PyTorch seeds
differently in every DataLoader worker, so ``torch.manual_seed`` makes views reproducible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms.v2 import functional as tvf

from dimcl.data.augment_plan import PlannedView, RandomColumns, gaussian_weights, scaled
from dimcl.data.image_ops import (
    as_image_tensor,
    luma,
    reflect_pad,
    resize_shorter_side,
    resized_side,
    rgb_from_hue,
    solarize,
)
from dimcl.data.info import DatasetInfo
from dimcl.data.view_config import ViewConfig, byol_view_configs

__all__ = [
    "EvalTransform",
    "MultiViewTransform",
    "ViewConfig",
    "ViewTransform",
    "build_view_transform",
    "byol_view_configs",
    "drawing_from",
    "eval_transform",
]

#: the generator the views being made draw from (None: torch's global one); one per process
_generator: torch.Generator | None = None


@contextlib.contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Inside, every :class:`ViewTransform` draws its random numbers from ``generator``."""
    global _generator
    previous, _generator = _generator, generator
    try:
        yield
    finally:
        _generator = previous


def _to_float(image: Tensor) -> Tensor:
    """A new float32 tensor in [0, 1] (never a view of the input, so later steps may work in place)."""
    if image.dtype == torch.uint8:
        return image.to(torch.float32).div_(255)
    return image.to(torch.float32, copy=True)


def _resize(image: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of a (C, H, W) uint8 or float tensor; returns float32 in [0, 1]."""
    if image.shape[-2:] == (height, width):
        return _to_float(image)
    if image.dtype == torch.uint8 and image.shape[-2] * image.shape[-1] > 64 * 64:
        # Large uint8 crops (ImageNet): torch's vectorised uint8 path is faster than the float one.
        return _to_float(tvf.resize_image(image, [height, width], antialias=True))
    downscale = image.shape[-2] > height or image.shape[-1] > width
    # Antialiasing only changes anything when shrinking, so enlarging skips its cost. Bilinear weights
    # are non-negative and sum to 1, so the result stays in [0, 1] without a clamp.
    return nnf.interpolate(
        _to_float(image)[None], size=(height, width), mode="bilinear", align_corners=False, antialias=downscale
    )[0]


def _shift_hue(image: Tensor, shift: float) -> Tensor:
    """Rotate the hue of a (3, H, W) float tensor in [0, 1] by ``shift`` turns (HSV saturation and value kept).

    Same result as torchvision's ``adjust_hue`` (to within 1e-6) with fewer operations: a pixel keeps its
    largest and smallest channel, so ``rgb' = min + (max - min) * profile(h')``
    (:func:`~dimcl.data.image_ops.rgb_from_hue`) and the HSV image never needs to be built.
    """
    maxc = image.amax(dim=0, keepdim=True)
    # Index of the largest channel, ties picking R before G before B as torchvision does. (Comparisons,
    # not argmax: argmax enters a parallel region, slow when the cores are busy.)
    r, g, _ = image.unbind(0)
    argmax = torch.where(r == maxc[0], 0, torch.where(g == maxc[0], 1, 2)).unsqueeze_(0)
    minc = image.amin(dim=0, keepdim=True)
    chroma = maxc - minc
    # Hue in sixths of a turn: (G - B) / chroma next to red, 2 + (B - R) / chroma next to green, ...
    diffs = image.roll(-1, 0) - image.roll(-2, 0)  # (G - B, B - R, R - G)
    # Gray pixels (chroma 0) have a zero numerator; any non-zero divisor gives them hue 0.
    hue6 = diffs.gather(0, argmax).div_(chroma.clamp_min(1e-12)).add_(argmax, alpha=2)
    hue6.add_(6 * shift).remainder_(6)
    return rgb_from_hue(hue6, chroma, minc)


def _gaussian_blur(image: Tensor, weights: Sequence[float]) -> Tensor:
    """Separable blur with reflect padding of a (C, H, W) float tensor by an odd 1-D kernel, as torchvision's.

    Summing shifted slices is faster on CPU than torchvision's grouped conv2d, more so for larger images.
    """
    kernel_size = len(weights)
    pad = kernel_size // 2
    height, width = image.shape[-2:]
    padded = reflect_pad(image, pad, dim=-1)
    rows = padded[..., :width] * weights[0]
    for i in range(1, kernel_size):
        rows.add_(padded[..., i : i + width], alpha=weights[i])
    padded = reflect_pad(rows, pad, dim=-2)
    blurred = padded[..., :height, :] * weights[0]
    for i in range(1, kernel_size):
        blurred.add_(padded[..., i : i + height, :], alpha=weights[i])
    return blurred


class ViewTransform(PlannedView):
    """One augmented view: image (PIL, or uint8 tensor (C, H, W)) -> normalised float tensor (C, S, S)."""

    def __init__(self, view: ViewConfig, info: DatasetInfo) -> None:
        super().__init__(view, info)
        self.mean, self.std = self.plan.mean_std()

    def crop_box(self, height: int, width: int, random: Sequence[float]) -> tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of a random resized crop, torchvision's algorithm."""
        return self.plan.crop_box(height, width, random)

    def __call__(self, image: Any) -> Tensor:
        plan = self.plan
        image = as_image_tensor(image, plan.channels)
        random = torch.rand(RandomColumns.COUNT, generator=_generator).tolist()
        top, left, h, w = plan.crop_box(image.shape[-2], image.shape[-1], random)
        # Crop the uint8 image by slicing, so only the crop is ever converted to float.
        x = _resize(image[:, top : top + h, left : left + w], plan.crop_size, plan.crop_size)
        if random[RandomColumns.FLIP] < plan.horizontal_flip:
            x = x.flip(-1)
        if random[RandomColumns.JITTER] < plan.color_jitter_prob:
            x = self._color_jitter(x, random)
        if random[RandomColumns.GRAY] < plan.grayscale_prob:
            x = luma(x).expand(3, -1, -1).contiguous()
        if random[RandomColumns.BLUR] < plan.gaussian_blur_prob:
            sigma = scaled(plan.blur_sigma[0], plan.blur_sigma[1], random[RandomColumns.SIGMA])
            x = _gaussian_blur(x, gaussian_weights(plan.blur_kernel, sigma))
        if random[RandomColumns.SOLARIZE] < plan.solarization_prob:
            x = solarize(x)
        return x.sub_(self.mean).div_(self.std)

    def _color_jitter(self, x: Tensor, random: Sequence[float]) -> Tensor:
        """ColorJitter on a float (C, H, W) tensor in [0, 1] that this transform owns (edited in place)."""
        steps = self.plan.jitter
        order = sorted(range(len(steps)), key=lambda i: random[RandomColumns.ORDER + i])  # random order
        for i in order:
            name, low, high = steps[i]
            factor = scaled(low, high, random[RandomColumns.FACTORS + i])
            if name == "brightness":  # blend with black
                x.mul_(factor).clamp_(0, 1)
            elif name == "contrast":  # blend with the mean luma
                mean = luma(x).mean()
                x.mul_(factor).add_(mean * (1 - factor)).clamp_(0, 1)
            elif name == "saturation":  # blend with the grayscale image
                gray = luma(x).mul_(1 - factor)
                x.mul_(factor).add_(gray).clamp_(0, 1)
            else:
                x = _shift_hue(x, factor)
        return x


def build_view_transform(view: ViewConfig, info: DatasetInfo) -> Callable[[Any], Tensor]:
    """The transform of one view: image -> normalised float tensor (C, crop_size, crop_size)."""
    return ViewTransform(view, info)


class MultiViewTransform:
    """Applies each of ``transforms`` to the same image: image -> list of tensors, one per view."""

    def __init__(self, transforms: Sequence[Callable[[Any], Tensor]]) -> None:
        if len(transforms) == 0:
            raise ValueError("MultiViewTransform needs at least one view transform.")
        self.transforms = list(transforms)

    def __call__(self, image: Any) -> list[Tensor]:
        return [transform(image) for transform in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"


class EvalTransform:
    """Deterministic evaluation transform: image -> normalised float tensor (C, S, S).

    Large-image datasets (native size >= 128 px, ImageNet-style) resize the shorter side to S / 0.875
    and take the centre S x S crop (256 -> 224); small ones keep the image as it is when it is S x S
    already and otherwise resize it to S x S.
    """

    def __init__(self, info: DatasetInfo, image_size: int | None = None) -> None:
        self.size = image_size if image_size is not None else info.image_size
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"eval image_size must be a positive number of pixels, got {self.size!r}.")
        self.channels = info.in_channels
        self.center_crop = info.image_size >= 128
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, center_crop={self.center_crop})"

    def __call__(self, image: Any) -> Tensor:
        image = as_image_tensor(image, self.channels)
        size = self.size
        if self.center_crop:
            image = resize_shorter_side(image, resized_side(size))
            image = tvf.center_crop_image(image, [size, size])
        x = _resize(image, size, size)
        return x.sub_(self.mean).div_(self.std)


def eval_transform(info: DatasetInfo, image_size: int | None = None) -> Callable[[Any], Tensor]:
    """Deterministic transform for kNN / linear evaluation: image -> normalised tensor (C, S, S)."""
    return EvalTransform(info, image_size)
