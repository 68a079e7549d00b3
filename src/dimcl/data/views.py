"""Augmented views: the BYOL asymmetric recipe (Grill et al., 2020), every knob configurable.

One view is: random resized crop -> horizontal flip -> colour jitter (brightness, contrast, saturation,
hue in random order) -> grayscale -> Gaussian blur -> solarization -> normalisation, each step applied
with its own probability. The two BYOL views differ only in their blur and solarization probabilities.

Speed. The CPU demo pre-trains on Fashion-MNIST on two cores, where a per-image
``torchvision.transforms.v2.Compose`` spends most of its time in Python dispatch rather than arithmetic.
So :class:`ViewTransform` draws all its random numbers with one ``torch.rand`` call, crops the uint8
tensor by slicing, converts only the crop to float, resizes only when the size changes, and does the
colour steps in place with torchvision's formulas; hue and blur use cheaper exact formulations (see
``_shift_hue`` and ``_gaussian_blur``; the tests compare all of them with torchvision's kernels).
Ops that open a parallel region even for tiny tensors (``argmax``, ``F.pad(mode="reflect")``) are
avoided: on a busy 2-core box each such region cost milliseconds when the process had 2 threads.

Two BYOL views of a 28x28 Fashion-MNIST image (uint8 tensor in, two normalised (1, 28, 28) float
tensors out), one thread as in a DataLoader worker, on the project's shared 2-core AMD EPYC dev box
(load average ~4 from other jobs, so numbers vary): 120-180 µs per image (best of 5), against
560-880 µs for the same recipe as a v2 ``Compose`` timed alongside, i.e. 4-5x less. CIFAR-10:
330-590 µs (v2: 1260-1930 µs); STL-10 at 96 px with blur: 0.97-1.4 ms (v2: 3.8-4.6 ms).
Measured with::

    .venv/bin/python -m timeit -s "import torch; torch.set_num_threads(1); import dimcl.data as d; \
        info = d.dataset_info('fashion_mnist'); \
        views = d.MultiViewTransform([d.build_view_transform(v, info) for v in d.byol_view_configs(info)]); \
        image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)" "views(image)"

Randomness comes from torch's global generator, which PyTorch seeds differently in every DataLoader
worker, so ``torch.manual_seed`` makes views reproducible and workers do not repeat each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as tvf

from dimcl.data.datasets import DatasetInfo

# Luma weights of ITU-R 601-2, the ones torchvision (and PIL) use for grayscale conversion.
_LUMA = (0.2989, 0.587, 0.114)


@dataclass
class ViewConfig:
    """One view's augmentation. Probabilities are per image; jitter strengths follow ``ColorJitter``.

    Brightness, contrast and saturation factors are drawn from ``[max(0, 1 - s), 1 + s]``, the hue shift
    from ``[-hue, hue]`` (fraction of the colour wheel). Saturation, hue and grayscale conversion are
    skipped for 1-channel data, where they mean nothing.
    """

    crop_size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random crop
    horizontal_flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    gaussian_blur_prob: float = 0.0
    solarization_prob: float = 0.0
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the random crop
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # BYOL's range, in pixels of the crop

    def __post_init__(self) -> None:
        # YAML hands over lists; keep tuples so that configs compare and print the same either way.
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)  # type: ignore[assignment]
        self.blur_sigma = tuple(float(v) for v in self.blur_sigma)  # type: ignore[assignment]
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int) or self.crop_size < 1:
            raise ValueError(f"view crop_size must be a positive number of pixels, got {self.crop_size!r}.")
        lo, hi = _pair("crop_scale", self.crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"view crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale}.")
        lo, hi = _pair("crop_ratio", self.crop_ratio)
        if not 0 < lo <= hi:
            raise ValueError(f"view crop_ratio must be (min, max) with 0 < min <= max, got {self.crop_ratio}.")
        lo, hi = _pair("blur_sigma", self.blur_sigma)
        if not 0 < lo <= hi:
            raise ValueError(f"view blur_sigma must be (min, max) with 0 < min <= max, got {self.blur_sigma}.")
        probabilities = ("horizontal_flip", "color_jitter_prob", "grayscale_prob", "gaussian_blur_prob")
        for name in (*probabilities, "solarization_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"view {name} is a probability and must lie in [0, 1], got {value}.")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"view {name} must be >= 0 (0 turns it off), got {getattr(self, name)}.")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"view hue must lie in [0, 0.5] (0 turns it off), got {self.hue}.")


def _pair(name: str, value: tuple[float, ...]) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"view {name} must be two numbers (min, max), got {value}.")
    return value[0], value[1]


def byol_view_configs(info: DatasetInfo, crop_size: int | None = None) -> list[ViewConfig]:
    """The two asymmetric BYOL views for a dataset: blur 1.0 / 0.1 and solarization 0.0 / 0.2.

    Below 64 px there is no blur (solo-learn's CIFAR recipe): a 3x3 kernel on 32 px images wipes out
    most of the object. For 1-channel data saturation, hue and grayscale are set to 0 so the config
    says what is applied.
    """
    size = crop_size if crop_size is not None else info.image_size
    large = size >= 64
    # At <= 32 px a 0.08 crop is ~9x9 source pixels blown up to the full image, which mostly erases the
    # object; 0.2 (MoCo / SimSiam CIFAR recipes) trains faster on the short CPU schedules. solo-learn's
    # CIFAR recipes use 0.08: pass crop_scale=(0.08, 1.0) to reproduce them exactly.
    scale = (0.08, 1.0) if large else (0.2, 1.0)
    blur = (1.0, 0.1) if large else (0.0, 0.0)
    color = {} if info.in_channels == 3 else {"saturation": 0.0, "hue": 0.0, "grayscale_prob": 0.0}
    return [
        ViewConfig(size, scale, gaussian_blur_prob=blur[0], solarization_prob=0.0, **color),
        ViewConfig(size, scale, gaussian_blur_prob=blur[1], solarization_prob=0.2, **color),
    ]


def _as_image_tensor(image: Any, channels: int) -> Tensor:
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
        else:
            raise ValueError(f"expected {channels}-channel images, got shape {tuple(image.shape)}")
    return image


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
        # Large uint8 crops (ImageNet): torch's vectorised uint8 path is about 2x faster than float.
        return _to_float(tvf.resize_image(image, [height, width], antialias=True))
    downscale = image.shape[-2] > height or image.shape[-1] > width
    # Antialiasing only changes anything when shrinking; skipping it when enlarging saves ~30%. Bilinear
    # weights are non-negative and sum to 1, so the result stays in [0, 1] without a clamp.
    return nnf.interpolate(
        _to_float(image)[None], size=(height, width), mode="bilinear", align_corners=False, antialias=downscale
    )[0]


# Per channel (R, G, B), the piecewise-linear HSV -> RGB profile: clamp(A + S * |6h - K|, 0, 1).
_HUE_K = torch.tensor([3.0, 2.0, 4.0]).view(3, 1, 1)
_HUE_S = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
_HUE_A = torch.tensor([-1.0, 2.0, 2.0]).view(3, 1, 1)


def _shift_hue(image: Tensor, shift: float) -> Tensor:
    """Rotate the hue of a (3, H, W) float tensor in [0, 1] by ``shift`` turns (HSV saturation and value kept).

    Same result as torchvision's ``adjust_hue`` (to within 1e-6) at about a quarter of the cost: a pixel
    keeps its largest and smallest channel, so ``rgb' = min + (max - min) * profile(h')`` and the HSV
    image never needs to be built.
    """
    maxc = image.amax(dim=0, keepdim=True)
    # Index of the largest channel, ties picking R before G before B as torchvision does. (Comparisons,
    # not argmax: argmax enters a parallel region that costs milliseconds when the cores are busy.)
    r, g, _ = image.unbind(0)
    argmax = torch.where(r == maxc[0], 0, torch.where(g == maxc[0], 1, 2)).unsqueeze_(0)
    minc = image.amin(dim=0, keepdim=True)
    chroma = maxc - minc
    # Hue in sixths of a turn: (G - B) / chroma next to red, 2 + (B - R) / chroma next to green, ...
    diffs = image.roll(-1, 0) - image.roll(-2, 0)  # (G - B, B - R, R - G)
    # Gray pixels (chroma 0) have a zero numerator; any non-zero divisor gives them hue 0.
    hue6 = diffs.gather(0, argmax).div_(chroma.clamp_min(1e-12)).add_(argmax, alpha=2)
    hue6.add_(6 * shift).remainder_(6)
    return hue6.sub(_HUE_K).abs_().mul_(_HUE_S).add_(_HUE_A).clamp_(0, 1).mul_(chroma).add_(minc)


def _reflect_pad(image: Tensor, pad: int, dim: int) -> Tensor:
    """Reflect-pad ``dim`` by ``pad`` on both sides (edge not repeated), like ``F.pad(mode="reflect")``.

    Built from flipped slices because ``F.pad``'s reflect kernel enters a parallel region that costs
    milliseconds per call when the process has several threads and the cores are busy.
    """
    size = image.shape[dim]
    before = image.narrow(dim, 1, pad).flip(dim)
    after = image.narrow(dim, size - pad - 1, pad).flip(dim)
    return torch.cat([before, image, after], dim=dim)


def _gaussian_blur(image: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding of a (C, H, W) float tensor, as torchvision's.

    Summing shifted slices is 2x (96 px) to 7x (224 px) faster on CPU than torchvision's grouped conv2d.
    """
    half = (kernel_size - 1) / 2
    weights = [math.exp(-0.5 * ((i - half) / sigma) ** 2) for i in range(kernel_size)]
    weights = [w / sum(weights) for w in weights]
    pad = kernel_size // 2
    height, width = image.shape[-2:]
    padded = _reflect_pad(image, pad, dim=-1)
    rows = padded[..., :width] * weights[0]
    for i in range(1, kernel_size):
        rows.add_(padded[..., i : i + width], alpha=weights[i])
    padded = _reflect_pad(rows, pad, dim=-2)
    blurred = padded[..., :height, :] * weights[0]
    for i in range(1, kernel_size):
        blurred.add_(padded[..., i : i + height, :], alpha=weights[i])
    return blurred


def _grayscale(image: Tensor) -> Tensor:
    """Luma of a (3, H, W) float tensor, shape (1, H, W)."""
    r, g, b = image.unbind(0)
    return r.mul(_LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(0)


class ViewTransform:
    """One augmented view: image (PIL, or uint8 tensor (C, H, W)) -> normalised float tensor (C, S, S)."""

    # Where each step finds its uniform random numbers in the vector drawn once per call.
    _CROP_TRIES = 10  # (area, ratio) pairs, as torchvision's RandomResizedCrop, then a centre crop
    _R_CROP = 0
    _R_POS = 20  # top, left
    _R_FLIP = 22
    _R_JITTER = 23
    _R_FACTORS = 24  # one per jitter step
    _R_ORDER = 28  # sort keys giving the random order of the jitter steps
    _R_GRAY = 32
    _R_BLUR = 33
    _R_SIGMA = 34
    _R_SOLAR = 35
    _NUM_RANDOM = 36

    def __init__(self, view: ViewConfig, info: DatasetInfo) -> None:
        self.view = view
        self.channels = info.in_channels
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)
        if self.mean.shape[0] != self.channels or self.std.shape[0] != self.channels:
            raise ValueError(f"dataset {info.name}: mean/std need {self.channels} values, got {info.mean}, {info.std}")
        # Kernel about 10% of the crop and odd, as BYOL's 23 px at 224 px.
        self.blur_kernel = max(3, int(0.1 * view.crop_size) // 2 * 2 + 1)
        self.log_ratio = (math.log(view.crop_ratio[0]), math.log(view.crop_ratio[1]))
        color = self.channels == 3
        # The jitter steps that do something, as (name, low, high) of their random factor: multiplicative
        # factors cannot go below 0, the hue shift is symmetric around 0.
        strengths = {
            "brightness": view.brightness,
            "contrast": view.contrast,
            "saturation": view.saturation if color else 0.0,
            "hue": view.hue if color else 0.0,
        }
        self.jitter = [
            (name, -s, s) if name == "hue" else (name, max(0.0, 1 - s), 1 + s) for name, s in strengths.items() if s > 0
        ]
        self.grayscale_prob = view.grayscale_prob if color else 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.view})"

    def crop_box(self, height: int, width: int, random: Sequence[float]) -> tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of a random resized crop, torchvision's algorithm."""
        area = height * width
        scale, log_ratio = self.view.crop_scale, self.log_ratio
        for k in range(self._CROP_TRIES):
            u_area, u_ratio = random[self._R_CROP + 2 * k], random[self._R_CROP + 2 * k + 1]
            target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
            ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(random[self._R_POS] * (height - h + 1))
                left = int(random[self._R_POS + 1] * (width - w + 1))
                return top, left, h, w
        # Fallback: the largest centred crop whose aspect ratio lies in the allowed range.
        ratio = width / height
        if ratio < self.view.crop_ratio[0]:
            w, h = width, round(width / self.view.crop_ratio[0])
        elif ratio > self.view.crop_ratio[1]:
            h, w = height, round(height * self.view.crop_ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: Any) -> Tensor:
        view = self.view
        image = _as_image_tensor(image, self.channels)
        random = torch.rand(self._NUM_RANDOM).tolist()
        top, left, h, w = self.crop_box(image.shape[-2], image.shape[-1], random)
        # Crop the uint8 image by slicing, so only the crop is ever converted to float.
        x = _resize(image[:, top : top + h, left : left + w], view.crop_size, view.crop_size)
        if random[self._R_FLIP] < view.horizontal_flip:
            x = x.flip(-1)
        if self.jitter and random[self._R_JITTER] < view.color_jitter_prob:
            x = self._color_jitter(x, random)
        if random[self._R_GRAY] < self.grayscale_prob:
            x = _grayscale(x).expand(3, -1, -1).contiguous()
        if random[self._R_BLUR] < view.gaussian_blur_prob:
            lo, hi = view.blur_sigma
            sigma = lo + (hi - lo) * random[self._R_SIGMA]
            x = _gaussian_blur(x, self.blur_kernel, sigma)
        if random[self._R_SOLAR] < view.solarization_prob:
            x = torch.where(x >= 0.5, 1 - x, x)  # BYOL's solarization of [0, 1] images
        return x.sub_(self.mean).div_(self.std)

    def _color_jitter(self, x: Tensor, random: Sequence[float]) -> Tensor:
        """ColorJitter on a float (C, H, W) tensor in [0, 1] that this transform owns (edited in place)."""
        order = sorted(range(len(self.jitter)), key=lambda i: random[self._R_ORDER + i])  # random order
        for i in order:
            name, low, high = self.jitter[i]
            factor = low + (high - low) * random[self._R_FACTORS + i]
            if name == "brightness":  # blend with black
                x.mul_(factor).clamp_(0, 1)
            elif name == "contrast":  # blend with the mean luma
                mean = (x if self.channels == 1 else _grayscale(x)).mean()
                x.mul_(factor).add_(mean * (1 - factor)).clamp_(0, 1)
            elif name == "saturation":  # blend with the grayscale image
                gray = _grayscale(x).mul_(1 - factor)
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
        image = _as_image_tensor(image, self.channels)
        size = self.size
        if self.center_crop:
            short = round(size / 0.875)
            if min(image.shape[-2:]) != short:
                image = tvf.resize_image(image, [short], antialias=True)  # shorter side to `short`
            image = tvf.center_crop_image(image, [size, size])
        x = _resize(image, size, size)
        return x.sub_(self.mean).div_(self.std)


def eval_transform(info: DatasetInfo, image_size: int | None = None) -> Callable[[Any], Tensor]:
    """Deterministic transform for kNN / linear evaluation: image -> normalised tensor (C, S, S)."""
    return EvalTransform(info, image_size)
