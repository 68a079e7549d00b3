"""Typed configuration: YAML recipes + dotted command-line overrides + validation.

A run is described by one :class:`Config`. It is built from defaults, then a YAML recipe (read with
``yaml.safe_load``), then ``key=value`` overrides whose values are parsed as YAML (``trainer.max_epochs=5``,
``augment.crop_scale=[0.2,1.0]``, ``data.root=null``). Every key and type is checked here, before any
data is read or any file is written; a mistake raises :class:`ConfigError` with a one-paragraph message.

``method.*`` holds the method's name plus that method's own options (projector widths, temperatures,
queue size, ...): they are checked against the options the chosen method actually takes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dimcl.config_checks import check_values, require
from dimcl.errors import BadInputError, ConfigError
from dimcl.files import write_atomic
from dimcl.names import did_you_mean
from dimcl.yaml_files import load_yaml, read_yaml


@dataclass
class MethodConfig:
    #: the SSL method, a name in ``dimcl.methods.METHODS`` (``dimcl list``)
    name: str = "byol"
    #: the method's own keyword options, validated against ``dimcl.methods.method_options(name)``
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DimCLConfig:
    """The DimCL switch: λ (``weight``; 0 is the plain method, 0.1 the paper's), τ (``temperature``) and
    the form of the loss. The config's default is the paper's λ; a method built without one is plain."""

    #: λ: the loss is (1 - λ) · the method's loss + λ · DimCL; 0 is the plain method
    weight: float = 0.1
    #: τ of DimCL's InfoNCE over dimensions
    temperature: float = 0.1
    #: true: DimCL's InfoNCE; false: the uniform ablation (every negative dimension weighted alike)
    hardness_aware: bool = True
    #: plain (2D x 2D similarity matrix), blockwise (memory-lean), or auto (blockwise for wide projectors)
    implementation: Literal["auto", "plain", "blockwise"] = "auto"
    #: with multi-crop (augment.num_local_crops > 0): DimCL averaged over the two global views' pair and every
    #: (global, local) pair; false: between the two global views only
    local_pairs: bool = False

    def __post_init__(self) -> None:
        self.check()

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def check(self) -> None:
        """The one check of DimCL's settings: at construction (a method's), and after a config is assembled."""
        require(0.0 <= self.weight <= 1.0, "dimcl.weight", self.weight, "λ must lie in [0, 1]; 0 is the plain method")
        require(self.temperature > 0, "dimcl.temperature", self.temperature, "τ must be > 0 (the paper uses 0.1)")
        forms = typing.get_args(typing.get_type_hints(DimCLConfig)["implementation"])
        require(self.implementation in forms, "dimcl.implementation", self.implementation,
                f"implementation must be one of {', '.join(forms)}")


@dataclass
class BackboneConfig:
    #: a name in ``dimcl.models.BACKBONES`` (``dimcl list``), or timm/<model> (``pip install 'dimcl[timm]'``)
    name: str = "resnet18"
    #: None: decided by image size (a CIFAR stem for images of 64 px and less)
    cifar_stem: bool | None = None
    #: ViT patch size; None: 4 for small images, 16 otherwise
    patch_size: int | None = None


@dataclass
class DataConfig:
    #: a name in ``dimcl.data.DATASETS`` (``dimcl list``)
    name: str = "cifar10"
    #: None: the dataset's default location (Fashion-MNIST: the Debian package's folder)
    root: str | None = None
    #: fetch missing files with torchvision's downloaders (CIFAR, STL-10, Fashion-MNIST)
    download: bool = False
    #: pretrain on a fixed, seeded subset of this many training images
    subset: int | None = None
    #: evaluate (kNN bank and test split) on seeded subsets of this many images
    eval_subset: int | None = None
    #: hold out this many images of the labelled training split as a validation set (the same images
    #: for every seed): pretraining, the kNN bank and the linear probe use the rest, and every evaluation
    #: scores the held-out images instead of the test split. For tuning recipes without seeing the test set.
    val_size: int = 0
    #: pretrain on the images of these classes only (labels, e.g. [0, 1, 2, 3, 4]); null: every image. The
    #: evaluations then use these classes too, unless eval.classes names others
    classes: list[int] | None = None
    #: per device
    batch_size: int = 256
    #: loader worker processes per device (0: load in the training process)
    num_workers: int = 2
    #: an image file that cannot be decoded: stop the run naming it (fail), or skip and count it (skip)
    on_bad_image: Literal["fail", "skip"] = "fail"
    #: where the two views are augmented: per image in the loader workers (loader), or batched on the
    #: training device after the transfer (device; for GPUs whose loader workers cannot keep up)
    augment_on: Literal["loader", "device"] = "loader"


@dataclass
class AugmentConfig:
    """Knobs of the BYOL two-view recipe; None keeps the recipe's value for the dataset.

    Scalars apply to both views; a two-element list gives each view its own value. The multi-crop
    keys (``num_local_crops``, ``local_crop_*``) add small local views, each the second view's recipe at its own
    size and scale.
    """

    #: side of the random-resized crop in pixels
    crop_size: int | None = None
    #: [min, max] fraction of the image area a random-resized crop covers
    crop_scale: list[float] | None = None
    #: probability of a horizontal flip
    horizontal_flip: float | list[float] | None = None
    #: colour-jitter strength of brightness
    brightness: float | list[float] | None = None
    #: colour-jitter strength of contrast
    contrast: float | list[float] | None = None
    #: colour-jitter strength of saturation (colour images only)
    saturation: float | list[float] | None = None
    #: colour-jitter strength of hue, at most 0.5 (colour images only)
    hue: float | list[float] | None = None
    #: probability of applying the colour jitter
    color_jitter_prob: float | list[float] | None = None
    #: probability of turning the view grey (colour images only)
    grayscale_prob: float | list[float] | None = None
    #: probability of a Gaussian blur
    gaussian_blur_prob: float | list[float] | None = None
    #: probability of solarization
    solarization_prob: float | list[float] | None = None
    #: multi-crop: this many small local views besides the two global ones (0: plain two-view training)
    num_local_crops: int = 0
    #: side of the local views in pixels; None: the global size x 96 / 224 (solo-learn's ImageNet proportion)
    local_crop_size: int | None = None
    #: [min, max] fraction of the image area a local crop covers (solo-learn's multi-crop default)
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.14])


@dataclass
class OptimConfig:
    #: LARS (the SSL default), SGD with momentum, or AdamW
    name: Literal["lars", "sgd", "adamw"] = "lars"
    #: learning rate for a global batch of 256, scaled linearly with the global batch size
    lr: float = 1.0
    #: decoupled for AdamW, L2 for SGD and LARS
    weight_decay: float = 1e-5
    #: SGD / LARS momentum
    momentum: float = 0.9
    #: LARS trust coefficient
    eta: float = 0.02
    #: biases and normalisation parameters get no weight decay and no LARS adaptation
    exclude_bias_and_norm: bool = True
    #: linear warm-up of the learning rate, then a cosine decay to ``min_lr`` (per optimizer step)
    warmup_epochs: float = 10.0
    #: the learning rate at the first step of the warm-up
    warmup_start_lr: float = 3e-5
    #: the learning rate at the last step
    min_lr: float = 0.0
    #: the online linear probe's learning rate (constant, no weight decay)
    classifier_lr: float = 0.1
    #: optimizer step every this many batches (the global batch grows by as much)
    accumulate_grad_batches: int = 1
    #: AdamW's betas
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: PyTorch's fused SGD / AdamW kernels (None: on CUDA only); LARS updates all tensors at once off the CPU
    fused: bool | None = None
    #: clip the method's gradients to this total L2 norm before each optimizer step (None: no clipping)
    clip_grad_norm: float | None = None


@dataclass
class TrainerConfig:
    #: epochs of pretraining; the schedules span them all
    max_epochs: int = 200
    #: Lightning Fabric's accelerator (auto: CUDA when present, else the CPU)
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    #: devices per node; more than one runs DDP (start the processes with torchrun)
    devices: int = 1
    #: machines of a multi-node run
    num_nodes: int = 1
    #: Fabric's strategy; ddp for several devices (ddp_spawn is refused)
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = "auto"
    #: 32 (float32), bf16-mixed or 16-mixed autocast; the losses always compute in float32
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed"] = "32"
    #: batch-norm statistics over all devices (CUDA only)
    sync_batchnorm: bool = False
    #: a progress bar per epoch (off: one line per epoch)
    progress_bar: bool = True
    #: every this many steps: the losses read from the device (one sync), the progress bar, the stop check
    log_every_n_steps: int = 50
    #: also log to <run>/tensorboard (needs ``pip install 'dimcl[tensorboard]'``)
    tensorboard: bool = True
    #: also log to Weights & Biases, under <run>/wandb, one W&B run continued on resume (needs ``dimcl[wandb]``)
    wandb: bool = False
    #: the W&B project
    wandb_project: str = "dimcl"
    #: the W&B entity (user or team; none: W&B's default)
    wandb_entity: str | None = None
    #: the W&B run name (none: the run directory's name)
    wandb_name: str | None = None
    #: also checkpoint every this many optimizer steps within an epoch (0: at epoch ends only)
    checkpoint_every_n_steps: int = 0
    #: torch.compile the backbone, projector and predictor (opt-in: compiling takes a minute or more)
    compile: bool = False
    #: channels_last memory format for the convolutional backbone and its input batches
    channels_last: bool = False


@dataclass
class EvalConfig:
    #: kNN top-1 every this many epochs (and always after the last); 0 turns it off
    every: int = 1
    #: neighbours of the weighted kNN
    knn_k: int = 200
    #: temperature of the kNN's similarity weights
    knn_temperature: float = 0.07
    #: train a linear probe on detached features during pretraining (probe_top1 in the metrics)
    online_probe: bool = True
    #: feature-diversity figures (correlation, effective rank, collapsed dims) on a fixed batch
    diagnose: bool = True
    #: the diversity figures every this many epochs (and always after the last)
    diagnose_every: int = 1
    #: the fixed evaluation images the diversity figures are computed on
    diagnose_images: int = 1024
    #: evaluate on the images of these classes only: the kNN bank, the probes' training images and the scored
    #: images (e.g. pretrain with data.classes=[0,1,2,3,4], evaluate on [5,6,7,8,9]); null: data.classes
    classes: list[int] | None = None


@dataclass
class Config:
    seed: int = 0
    method: MethodConfig = field(default_factory=MethodConfig)
    dimcl: DimCLConfig = field(default_factory=DimCLConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; ``method`` is flattened back to ``{name, **options}``."""
        out = dataclasses.asdict(self)
        out["method"] = {"name": self.method.name, **self.method.options}
        return out


# --------------------------------------------------------------------------------------------- loading


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(hint, str(hint))


NO_MATCH = object()


def coerce_value(value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` when it fits, else ``NO_MATCH``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            out = coerce_value(value, arg)
            if out is not NO_MATCH:
                return out
        return NO_MATCH
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        if isinstance(value, int | float) and str(value) in choices:  # precision: 32 -> "32"
            return str(value)
        return NO_MATCH
    if origin is list:
        if not isinstance(value, list | tuple):
            return NO_MATCH
        items = [coerce_value(v, typing.get_args(hint)[0]) for v in value]
        return NO_MATCH if any(i is NO_MATCH for i in items) else items
    if origin is dict:
        return dict(value) if isinstance(value, dict) else NO_MATCH
    if hint is type(None):
        return None if value is None else NO_MATCH
    if hint is bool:
        return value if isinstance(value, bool) else NO_MATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else NO_MATCH
    if hint is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else NO_MATCH
    if hint is str:
        return value if isinstance(value, str) else NO_MATCH
    return value


@functools.cache
def _type_hints(section: type) -> dict[str, Any]:
    """The resolved annotations of a config section (resolving them is most of a config's build time)."""
    return typing.get_type_hints(section)


def _set(cfg: Config, key: str, value: Any) -> None:
    """Set dotted ``key`` on ``cfg``, checking that the key exists and the value has its type."""
    parts = key.split(".")
    if parts[0] == "method" and len(parts) == 2 and parts[1] != "name":
        cfg.method.options[parts[1]] = value  # checked against the method in dimcl.recipes.check_names
        return
    node: Any = cfg
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node) if f.name != "options"]
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(
                f"unknown config key '{key}': '{part}' is not a key of {where}; "
                f"accepted: {', '.join(names)}.{did_you_mean(part, names)}"
            )
        hint = _type_hints(type(node))[part]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hint):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{key}' is a section and takes a mapping, got {value!r}")
                for sub_key, sub_value in value.items():
                    _set(cfg, f"{key}.{sub_key}", sub_value)
                return
            converted = coerce_value(value, hint)
            if converted is NO_MATCH:
                extra = did_you_mean(str(value), typing.get_args(hint)) if typing.get_origin(hint) is Literal else ""
                raise ConfigError(
                    f"config key '{key}' got {value!r}, which is not {type_name(hint)}.{extra}"
                )
            setattr(node, part, converted)
            return
        if not dataclasses.is_dataclass(hint):
            raise ConfigError(f"config key '{key}': '{'.'.join(parts[: depth + 1])}' is a value, not a section")
        node = getattr(node, part)


def flatten_config(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"dimcl": {"weight": 0.1}}`` -> ``{"dimcl.weight": 0.1}``: nested sections to dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten_config(value, full))
        else:
            flat[full] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """``'trainer.max_epochs=5'`` -> ``('trainer.max_epochs', 5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value, e.g. trainer.max_epochs=5")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw, f"override '{text}'") if raw.strip() else None
    except BadInputError:
        value = raw
    return key.strip(), value


@functools.lru_cache(maxsize=64)
def _read_recipe_cached(path: str, mtime_ns: int, size: int, shown: str) -> Any:
    # A sweep builds one config per cell from the same recipe: read it once (keyed by its size and time).
    return read_yaml(path, f"config file '{shown}'") or {}


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The mapping of keys in the YAML recipe at ``path``; a one-paragraph error for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; `dimcl list` shows the bundled recipes")
    stat = path.stat()
    data = copy.deepcopy(_read_recipe_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(path)))
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {type(data).__name__}")
    return data


def make_config(data: dict[str, Any] | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- ``data`` (a recipe's mapping, or :meth:`Config.to_dict` output) <- ``key=value``
    overrides, with every key, type and range checked (:func:`check_values`).

    The names (method, backbone, dataset) and the method's own options are checked against the
    registries by :func:`dimcl.recipes.load_config`, which is what callers use.
    """
    cfg = Config()
    for key, value in flatten_config(data or {}).items():
        _set(cfg, key, value)
    for text in overrides:
        _set(cfg, *parse_override(text))
    check_values(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML, replacing ``path`` atomically (a failed write leaves the old file whole)."""
    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
