"""What one augmented view asks for (:class:`ViewConfig`), the two BYOL views of a dataset, and a recipe's
``augment.*`` section laid over them (:func:`view_configs`).

A config is the user's description. :class:`~dimcl.data.augment_plan.AugmentPlan` resolves it for a
dataset, and the per-image (:mod:`dimcl.data.views`) and per-batch (:mod:`dimcl.data.device_views`)
transforms apply that plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dimcl.config import AugmentConfig
from dimcl.data.info import DatasetInfo
from dimcl.errors import ConfigError


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
            raise ConfigError(f"view crop_size must be a positive number of pixels, got {self.crop_size!r}.")
        lo, hi = _pair("crop_scale", self.crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"view crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale}.")
        lo, hi = _pair("crop_ratio", self.crop_ratio)
        if not 0 < lo <= hi:
            raise ConfigError(f"view crop_ratio must be (min, max) with 0 < min <= max, got {self.crop_ratio}.")
        lo, hi = _pair("blur_sigma", self.blur_sigma)
        if not 0 < lo <= hi:
            raise ConfigError(f"view blur_sigma must be (min, max) with 0 < min <= max, got {self.blur_sigma}.")
        probabilities = ("horizontal_flip", "color_jitter_prob", "grayscale_prob", "gaussian_blur_prob")
        for name in (*probabilities, "solarization_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"view {name} is a probability and must lie in [0, 1], got {value}.")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ConfigError(f"view {name} must be >= 0 (0 turns it off), got {getattr(self, name)}.")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"view hue must lie in [0, 0.5] (0 turns it off), got {self.hue}.")


def crop_and_flip_view(crop_size: int, crop_scale: tuple[float, float]) -> ViewConfig:
    """A random-resized crop of ``crop_scale`` and a horizontal flip, every colour operation off: the
    augmentation of training with labels (the supervised reference, fine-tuning, the augmented linear probe)."""
    return ViewConfig(
        crop_size, crop_scale, horizontal_flip=0.5, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
        color_jitter_prob=0.0, grayscale_prob=0.0, gaussian_blur_prob=0.0, solarization_prob=0.0,
    )

def _pair(name: str, value: tuple[float, ...]) -> tuple[float, float]:
    if len(value) != 2:
        raise ConfigError(f"view {name} must be two numbers (min, max), got {value}.")
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


#: solo-learn's ImageNet multi-crop proportion: 96 px local crops beside 224 px global ones
LOCAL_TO_GLOBAL_SIZE = 96 / 224


def local_crop_side(global_size: int, local_size: int | None = None) -> int:
    """The side of the local views: ``local_size``, or ``global_size`` x 96 / 224 (224 -> 96, 32 -> 14)."""
    return local_size if local_size is not None else max(1, round(global_size * LOCAL_TO_GLOBAL_SIZE))


def with_local_views(
    global_views: list[ViewConfig], count: int, size: int | None = None, scale: tuple[float, float] = (0.05, 0.14)
) -> list[ViewConfig]:
    """Multi-crop: the global views followed by ``count`` local views.

    As in solo-learn, a local view is the last global view's recipe (BYOL's second view: light blur,
    some solarization) at its own smaller side and crop scale. With ``count = 0`` the list is returned
    unchanged, so two-view training stays exactly what it was.
    """
    if count == 0:
        return list(global_views)
    last = global_views[-1]
    local = dataclasses.replace(last, crop_size=local_crop_side(last.crop_size, size), crop_scale=tuple(scale))
    return [*global_views, *(dataclasses.replace(local) for _ in range(count))]


def crop_size_of(augment: AugmentConfig, info: DatasetInfo) -> int:
    """The side of the global views: ``augment.crop_size``, or the dataset's image size."""
    return augment.crop_size or info.image_size


def view_configs(augment: AugmentConfig, info: DatasetInfo) -> list[ViewConfig]:
    """The dataset's two BYOL views with the recipe's ``augment.*`` values laid over them, then
    ``augment.num_local_crops`` multi-crop local views (none by default)."""
    views = byol_view_configs(info, augment.crop_size)
    for f in dataclasses.fields(augment):
        value = getattr(augment, f.name)
        if value is None or f.name in ("crop_size", "num_local_crops", "local_crop_size", "local_crop_scale"):
            continue
        if f.name == "crop_scale":
            views = [dataclasses.replace(v, crop_scale=tuple(value)) for v in views]
            continue
        per_view = value if isinstance(value, list) else [value] * len(views)
        if len(per_view) == 1:
            per_view = per_view * len(views)
        views = [dataclasses.replace(v, **{f.name: x}) for v, x in zip(views, per_view, strict=True)]
    return with_local_views(views, augment.num_local_crops, augment.local_crop_size, tuple(augment.local_crop_scale))
