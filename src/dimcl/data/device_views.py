"""Augmented views made a whole batch at a time on the training device (``data.augment_on=device``).

With ``data.augment_on=loader`` (the default) every DataLoader worker makes the two views of each image
with :class:`~dimcl.data.views.ViewTransform`. GPUs whose loader workers cannot keep up can move that work
to the device: the loader then yields every image once, as a uint8 tensor of one fixed size
(:class:`RawImageTransform`), and :class:`BatchMultiView` turns the whole uint8 batch into the views on
the device the batch lives on, right before the forward pass. This also moves an eighth of the bytes
from host to device (one uint8 image instead of two float32 views).

The recipe is the :class:`~dimcl.data.augment_plan.AugmentPlan` of a
:class:`~dimcl.data.view_config.ViewConfig`, the plan that ``ViewTransform`` applies too, step for step
and formula for formula: random resized crop -> horizontal flip -> colour jitter (brightness, contrast,
saturation, hue in a random order) -> grayscale -> Gaussian blur -> solarization -> normalisation. Every
sample gets its own parameters, including its own order of the jitter steps. The random numbers of a
batch come from one ``torch.rand((B, 36))`` on the batch's device (torch's global generator for that
device, so ``torch.manual_seed`` makes views reproducible), one row per sample laid out as
:class:`~dimcl.data.augment_plan.RandomColumns` says and turned into parameters by the plan's functions,
as ``ViewTransform`` does with its row of 36 per image. On the CPU, where ``torch.rand((B, 36))`` draws
the same numbers as ``B`` calls of ``torch.rand(36)``, a batch therefore gets the very views that
``ViewTransform`` gives its images one after another under the same seed (to float rounding; the tests
check this). CUDA's generator draws other numbers, from the same distribution.

Crop, resize and flip: one batched matrix product per axis. For each sample the crop box is drawn with
torchvision's ``RandomResizedCrop`` algorithm (ten tries, then the centred fallback) and turned into two
small resampling matrices, ``out = Wy @ image @ Wx^T``, whose rows hold the weights of bilinear
interpolation restricted to the box (so edges clamp to the box, as when the box is sliced out first),
widened to a triangle of the box-to-output scale when the crop is shrunk (PyTorch's antialiased
bilinear resize); a flip reverses the rows of ``Wx``. This gives exactly what the per-image path's
slice + ``interpolate`` gives, identity crops included. ``F.grid_sample`` was the alternative: it samples
outside the box at its edges and cannot antialias a shrinking crop (``roi_align`` averages a box of
samples instead, an approximation of its own, and needs a separate flip). The matrices cost
``B * S * (H + W)`` numbers per view (120 MB for 256 crops of 224 px from 256 px images) and the
products run as batched GEMMs, which GPUs do at full speed; with ``torch.backends.cuda.matmul.allow_tf32``
(or ``torch.set_float32_matmul_precision("high")``) they run in TF32, whose ~5e-4 relative error is below
an 8-bit image's quantisation step. The Gaussian blur is a grouped ``conv2d`` (one kernel per sample)
and so also follows cuDNN's TF32 setting on CUDA.

Masks instead of branches: every step is computed for the whole batch and ``torch.where`` keeps it for
the samples whose draw says so (blur, for example, is computed for all images even when only 10% keep
it). Nothing loops over samples; the only Python loop runs over the (at most 4) positions of the jitter
order. The one exception to "compute for all": the hue shift, which costs as much as all other colour
steps together, runs at each jitter position only on the samples that take it there; grouping them
reads four counts from the device, this transform's only wait for it (per view and batch, when hue
jitter is on at all). On the CPU every freshly allocated megabyte-sized tensor costs page faults, which
is why the hue shift works in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms.v2 import functional as tvf

from dimcl.data.augment_plan import PlannedView, RandomColumns, batch_gaussian_weights, scaled
from dimcl.data.image_ops import (
    as_image_tensor,
    device_constant,
    luma,
    reflect_pad,
    resize_shorter_side,
    resized_side,
    rgb_from_hue,
    solarize,
)
from dimcl.data.info import DatasetInfo
from dimcl.data.view_config import ViewConfig


@dataclass
class BatchViewParams:
    """The random parameters of one view of a batch of B images; every tensor lives on the batch's device.

    ``factors[:, j]`` belongs to the ``j``-th jitter step of the plan's ``jitter`` list (hue: shift in
    turns); ``order[b, k]`` is the step that sample ``b`` applies ``k``-th.
    """

    boxes: Tensor  # (B, 4) int64: top, left, height, width of the crop in source pixels
    flip: Tensor  # (B,) bool
    jitter: Tensor  # (B,) bool: colour jitter applied
    factors: Tensor  # (B, J) float32
    order: Tensor  # (B, J) int64
    gray: Tensor  # (B,) bool
    blur: Tensor  # (B,) bool
    sigma: Tensor  # (B,) float64, in pixels of the crop
    solarize: Tensor  # (B,) bool


class BatchViewTransform(PlannedView):
    """One augmented view of a batch: uint8 (B, C, H, W) on any device -> normalised float32 (B, C, S, S).

    Applies the same :class:`~dimcl.data.augment_plan.AugmentPlan` as :class:`~dimcl.data.views.ViewTransform`
    (see the module docstring), with per-sample random parameters. Float input is taken to be in [0, 1].
    The input is not modified.
    """

    def __init__(self, view: ViewConfig, info: DatasetInfo) -> None:
        super().__init__(view, info)

    # ---------------------------------------------------------------------------------------------
    # Random parameters

    def draw(self, batch_size: int, height: int, width: int, device: torch.device | str) -> BatchViewParams:
        """Per-sample parameters for ``batch_size`` images of ``height`` x ``width``, from one ``torch.rand``."""
        plan = self.plan
        random = torch.rand(batch_size, RandomColumns.COUNT, device=device)
        # Box geometry in float64 as the per-image path's Python floats (MPS has no float64).
        wide = torch.float32 if torch.device(device).type == "mps" else torch.float64
        r = random.to(wide)
        jitter_count = len(plan.jitter)
        factors = r[:, RandomColumns.FACTORS : RandomColumns.FACTORS + jitter_count]
        if jitter_count:
            low = device_constant(tuple(step.low for step in plan.jitter), wide, device)
            high = device_constant(tuple(step.high for step in plan.jitter), wide, device)
            factors = scaled(low, high, factors)
        order_keys = random[:, RandomColumns.ORDER : RandomColumns.ORDER + jitter_count]
        return BatchViewParams(
            boxes=plan.crop_boxes(r, height, width),
            flip=random[:, RandomColumns.FLIP] < plan.horizontal_flip,
            jitter=random[:, RandomColumns.JITTER] < plan.color_jitter_prob,
            factors=factors.to(torch.float32),
            # Ascending sort keys, as the per-image path's sorted(); a stable sort keeps its tie order.
            order=order_keys.argsort(dim=1, stable=True),
            gray=random[:, RandomColumns.GRAY] < plan.grayscale_prob,
            blur=random[:, RandomColumns.BLUR] < plan.gaussian_blur_prob,
            sigma=scaled(plan.blur_sigma[0], plan.blur_sigma[1], r[:, RandomColumns.SIGMA]),
            solarize=random[:, RandomColumns.SOLARIZE] < plan.solarization_prob,
        )

    # ---------------------------------------------------------------------------------------------
    # Applying them

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        images = self._check(images)
        batch, _, height, width = images.shape
        return self.apply(images, self.draw(batch, height, width, images.device))

    @torch.no_grad()
    def apply(self, images: Tensor, params: BatchViewParams) -> Tensor:
        """The view of ``images`` (uint8 or float in [0, 1], (B, C, H, W)) under the given parameters."""
        plan = self.plan
        images = self._check(images)
        x = images.to(torch.float32)
        if images.dtype == torch.uint8:
            x = x.div_(255)
        x = self._crop_resize_flip(x, params)
        if plan.jitter:
            x = torch.where(_per_sample(params.jitter), self._color_jitter(x, params), x)
        if plan.grayscale_prob > 0:
            x = torch.where(_per_sample(params.gray), luma(x).expand_as(x), x)
        if plan.gaussian_blur_prob > 0:
            x = torch.where(_per_sample(params.blur), self._gaussian_blur(x, params.sigma), x)
        if plan.solarization_prob > 0:
            x = torch.where(_per_sample(params.solarize), solarize(x), x)
        mean, std = plan.mean_std(x.device)
        return x.sub_(mean).div_(std)

    def _check(self, images: Tensor) -> Tensor:
        channels = self.plan.channels
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected a batch of images of shape (B, C, H, W), got {shape}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"expected uint8 images (or float in [0, 1]), got {images.dtype}")
        if images.shape[1] != channels:
            if images.shape[1] == 1 and channels == 3:  # grayscale images in an RGB dataset
                return images.expand(-1, 3, -1, -1)
            raise ValueError(f"expected {channels}-channel images, got a batch of shape {tuple(images.shape)}")
        return images

    def _crop_resize_flip(self, x: Tensor, params: BatchViewParams) -> Tensor:
        size = self.plan.crop_size
        boxes = params.boxes.to(torch.float32)
        rows = _resample_matrix(boxes[:, 0], boxes[:, 2], x.shape[-2], size)  # (B, S, H)
        cols = _resample_matrix(boxes[:, 1], boxes[:, 3], x.shape[-1], size)  # (B, S, W)
        cols = torch.where(params.flip[:, None, None], cols.flip(1), cols)
        return rows[:, None] @ x @ cols.transpose(1, 2)[:, None]

    def _color_jitter(self, x: Tensor, params: BatchViewParams) -> Tensor:
        """ColorJitter with a per-sample order: at position k each sample applies its own k-th step.

        Brightness, contrast and saturation are one blend ``clamp(f * x + (1 - f) * target)`` with target
        0, the mean luma and the luma image, so a position costs one blend whatever mix of these steps the
        samples pick there. The hue shift, the costliest step by far, runs at each position only on the
        samples whose step it is there: the samples are grouped by the position of their hue step, and
        reading the group sizes is this transform's one wait for the device (per view and batch).
        """
        names = [step.name for step in self.plan.jitter]
        code = {name: i for i, name in enumerate(names)}
        hue_groups: Sequence[Tensor] = ()
        if "hue" in code:
            position = (params.order == code["hue"]).to(torch.uint8).argmax(dim=1)  # (B,)
            counts = (position[:, None] == torch.arange(len(names), device=x.device)).sum(dim=0)
            hue_groups = position.argsort(stable=True).split(counts.tolist())
        for k in range(len(names)):
            step = params.order[:, k : k + 1]  # (B, 1)
            factor = params.factors.gather(1, step).view(-1, 1, 1, 1)
            step = step.view(-1, 1, 1, 1)
            gray = luma(x)
            target = torch.zeros((), device=x.device)  # brightness: blend with black
            if "contrast" in code:
                target = torch.where(step == code["contrast"], gray.mean(dim=(1, 2, 3), keepdim=True), target)
            if "saturation" in code:
                target = torch.where(step == code["saturation"], gray, target)
            blended = x.mul(factor).add_(target * (1 - factor)).clamp_(0, 1)
            if hue_groups and hue_groups[k].numel():
                chosen = hue_groups[k]
                blended.index_copy_(0, chosen, _shift_hue(x.index_select(0, chosen), factor.index_select(0, chosen)))
            x = blended
        return x

    def _gaussian_blur(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Separable Gaussian blur with reflect padding, one sigma per sample (grouped conv2d)."""
        batch, channels, height, width = x.shape
        size = self.plan.blur_kernel
        kernel = batch_gaussian_weights(size, sigma).to(torch.float32)  # (B, K)
        kernel = kernel.repeat_interleave(channels, dim=0)  # (B * C, K), one per image plane
        pad = size // 2
        planes = x.reshape(1, batch * channels, height, width)
        planes = nnf.conv2d(reflect_pad(planes, pad, -1), kernel.view(-1, 1, 1, size), groups=batch * channels)
        planes = nnf.conv2d(reflect_pad(planes, pad, -2), kernel.view(-1, 1, size, 1), groups=batch * channels)
        return planes.view(batch, channels, height, width)


class BatchMultiView:
    """Applies each of ``transforms`` to the same batch: uint8 (B, C, H, W) -> list of views, one per transform."""

    def __init__(self, transforms: Sequence[BatchViewTransform]) -> None:
        if len(transforms) == 0:
            raise ValueError("BatchMultiView needs at least one view transform.")
        self.transforms = list(transforms)

    def __call__(self, images: Tensor) -> list[Tensor]:
        return [transform(images) for transform in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"


def build_batch_views(views: Sequence[ViewConfig], info: DatasetInfo) -> BatchMultiView:
    """The batched transform of ``views`` (e.g. :func:`~dimcl.data.view_config.byol_view_configs`)."""
    return BatchMultiView([BatchViewTransform(v, info) for v in views])


class RawImageTransform:
    """The loader side of ``data.augment_on=device``: image -> uint8 tensor (C, H, W), one size for all.

    Images of fixed-size datasets (Fashion-MNIST, CIFAR, STL-10) are passed on as stored. With ``size``
    (image folders, whose images vary in size), the shorter side is resized to ``size`` (antialiased)
    and the centre ``size`` x ``size`` square is kept: the random crops then see every object with its
    true proportions, and the aspect-ratio jitter stays the configured one, at the cost of the ends of
    the longer side (1/8 of a 4:3 photo on each side). Squashing the whole image into the square would keep
    those ends but distort every image by its own aspect ratio before the crop's own jitter.
    """

    def __init__(self, info: DatasetInfo, size: int | None = None) -> None:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"raw image size must be a positive number of pixels or None, got {size!r}.")
        self.channels = info.in_channels
        self.size = size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"

    def __call__(self, image: Any) -> Tensor:
        x = as_image_tensor(image, self.channels)
        if self.size is not None:
            x = resize_shorter_side(x, self.size)
            x = tvf.center_crop_image(x, [self.size, self.size])
        return x.contiguous()


def raw_image_transform(info: DatasetInfo, crop_size: int | None = None) -> RawImageTransform:
    """The loader's transform for ``data.augment_on=device`` (see :class:`RawImageTransform`).

    Variable-size datasets get a side of ``crop_size / 0.875`` (256 px for 224 px crops, the usual
    ImageNet resize, as :class:`~dimcl.data.views.EvalTransform`'s), so a full-image crop is slightly
    shrunk, as with the loader path on large photos.
    """
    if not info.variable_size:
        return RawImageTransform(info)
    crop = crop_size if crop_size is not None else info.image_size
    return RawImageTransform(info, resized_side(crop))


# --------------------------------------------------------------------------------------------------
# Batched helpers


def _per_sample(mask: Tensor) -> Tensor:
    return mask.view(-1, 1, 1, 1)


def _resample_matrix(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """(B, out_size, in_size) weights that resize the span [start, start + length) of an axis to out_size.

    Row i is PyTorch's bilinear filter (``align_corners=False``) centred on ``start + (i + 0.5) * scale``,
    ``scale = length / out_size``, over the pixels inside the span only, normalised: clamping at the span's
    edges as slicing the span out first would. When shrinking (scale > 1) the triangle is ``scale`` wide,
    as in ``interpolate(..., antialias=True)``; at scale 1 the matrix is the identity on the span.
    """
    scale = (length / out_size)[:, None, None]
    centre = start[:, None, None] + (torch.arange(out_size, device=start.device) + 0.5)[None, :, None] * scale
    pixel = (torch.arange(in_size, device=start.device) + 0.5)[None, None, :]
    weights = (1 - (pixel - centre).abs_() / scale.clamp(min=1)).clamp_(min=0)
    inside = (pixel >= start[:, None, None]) & (pixel < (start + length)[:, None, None])
    weights = weights * inside
    return weights / weights.sum(dim=-1, keepdim=True)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """The per-image path's hue rotation for a (B, 3, H, W) batch, with a (B, 1, 1, 1) shift in turns.

    The largest channel (ties: R before G before B) is picked with 0/1 float masks made by ``sign``
    instead of comparisons and ``where`` (on the CPU an element-wise ``where`` is much slower than an
    addition); multiplying by exact 0s and 1s keeps the result the same. In-place steps wherever possible:
    on the CPU every new megabyte-sized tensor costs page faults.
    """
    # Contiguous copies of the planes (strided ones make every op below slower; edited in place below).
    r, g, b = x.transpose(0, 1).clone(memory_format=torch.contiguous_format)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    minc = torch.minimum(r, g)
    torch.minimum(minc, b, out=minc)
    chroma = maxc - minc
    is_r = torch.sub(r, maxc).sign_().add_(1)  # 1 where R is the largest channel (r - maxc is 0 there, < 0 elsewhere)
    is_g = torch.sub(g, maxc).sign_().add_(1).mul_(1 - is_r)
    is_b = torch.add(is_r, is_g).neg_().add_(1)
    # Hue in sixths of a turn: (G - B) / chroma next to red, 2 + (B - R) / chroma next to green, ...
    hue6 = torch.sub(g, b).mul_(is_r).addcmul_(b.sub_(r), is_g).addcmul_(r.sub_(g), is_b)
    # Gray pixels (chroma 0) have a zero numerator; any non-zero divisor gives them hue 0.
    hue6.div_(chroma.clamp_min(1e-12)).add_(is_g, alpha=2).add_(is_b, alpha=4)
    hue6 = hue6.unsqueeze_(1).add_(6 * shift).remainder_(6)
    return rgb_from_hue(hue6, chroma.unsqueeze_(1), minc.unsqueeze_(1))
