"""Typed configuration: YAML recipes + dotted command-line overrides + validation.

A run is described by one :class:`Config`. It is built from defaults, then a YAML recipe (read with
``yaml.safe_load``), then ``key=value`` overrides whose values are parsed as YAML (``trainer.max_epochs=5``,
``augment.crop_scale=[0.2,1.0]``, ``data.root=null``). Every key and type is checked here, before any
data is read or any file is written; a mistake raises :class:`ConfigError` with a one-paragraph message.

``method.*`` holds the method's name plus that method's own options (projector widths, temperatures,
queue size, ...): they are checked against the options the chosen method actually takes.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dimcl.files import write_atomic


class ConfigError(ValueError):
    """A bad configuration value; its message names the key, the value and what is accepted."""


@dataclass
class MethodConfig:
    name: str = "byol"
    #: the method's own keyword options, validated against ``dimcl.methods.method_options(name)``
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DimCLSection:
    weight: float = 0.1
    temperature: float = 0.1
    hardness_aware: bool = True
    #: plain (2D x 2D similarity matrix), blockwise (memory-lean), or auto (blockwise for wide projectors)
    implementation: Literal["auto", "plain", "blockwise"] = "auto"


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    #: None: decided by image size (a CIFAR stem for images of 64 px and less)
    cifar_stem: bool | None = None
    #: ViT patch size; None: 4 for small images, 16 otherwise
    patch_size: int | None = None


@dataclass
class DataConfig:
    name: str = "cifar10"
    #: None: the dataset's default location (Fashion-MNIST: the Debian package's folder)
    root: str | None = None
    download: bool = False
    #: pretrain on a fixed, seeded subset of this many training images
    subset: int | None = None
    #: evaluate (kNN bank and test split) on seeded subsets of this many images
    eval_subset: int | None = None
    #: hold out this many images of the labelled training split as a validation set (the same images
    #: for every seed): pretraining, the kNN bank and the linear probe use the rest, and every evaluation
    #: scores the held-out images instead of the test split. For tuning recipes without seeing the test set.
    val_size: int = 0
    #: per device
    batch_size: int = 256
    num_workers: int = 2
    #: an image file that cannot be decoded: stop the run naming it (fail), or skip and count it (skip)
    on_bad_image: Literal["fail", "skip"] = "fail"
    #: where the two views are augmented: per image in the loader workers (loader), or batched on the
    #: training device after the transfer (device; for GPUs whose loader workers cannot keep up)
    augment_on: Literal["loader", "device"] = "loader"


@dataclass
class AugmentConfig:
    """Knobs of the BYOL two-view recipe; None keeps the recipe's value for the dataset.

    Scalars apply to both views; a two-element list gives each view its own value.
    """

    crop_size: int | None = None
    crop_scale: list[float] | None = None
    horizontal_flip: float | list[float] | None = None
    brightness: float | list[float] | None = None
    contrast: float | list[float] | None = None
    saturation: float | list[float] | None = None
    hue: float | list[float] | None = None
    color_jitter_prob: float | list[float] | None = None
    grayscale_prob: float | list[float] | None = None
    gaussian_blur_prob: float | list[float] | None = None
    solarization_prob: float | list[float] | None = None


@dataclass
class OptimConfig:
    name: Literal["lars", "sgd", "adamw"] = "lars"
    #: learning rate for a global batch of 256, scaled linearly with the global batch size
    lr: float = 1.0
    weight_decay: float = 1e-5
    momentum: float = 0.9
    #: LARS trust coefficient
    eta: float = 0.02
    #: biases and normalisation parameters get no weight decay and no LARS adaptation
    exclude_bias_and_norm: bool = True
    warmup_epochs: float = 10.0
    warmup_start_lr: float = 3e-5
    min_lr: float = 0.0
    #: the online linear probe's learning rate (constant, no weight decay)
    classifier_lr: float = 0.1
    accumulate_grad_batches: int = 1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: PyTorch's fused SGD / AdamW kernels (None: on CUDA only); LARS updates all tensors at once off the CPU
    fused: bool | None = None


@dataclass
class TrainerConfig:
    max_epochs: int = 200
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = "auto"
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed"] = "32"
    sync_batchnorm: bool = False
    progress_bar: bool = True
    log_every_n_steps: int = 50
    tensorboard: bool = True
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
    knn_k: int = 200
    knn_temperature: float = 0.07
    online_probe: bool = True
    #: feature-diversity figures (correlation, effective rank, collapsed dims) every epoch, on a fixed batch
    diagnose: bool = True
    diagnose_images: int = 1024


@dataclass
class Config:
    seed: int = 0
    method: MethodConfig = field(default_factory=MethodConfig)
    dimcl: DimCLSection = field(default_factory=DimCLSection)
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


def _did_you_mean(value: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(hint, str(hint))


_NO_MATCH = object()


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` when it fits, else ``_NO_MATCH``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            out = _coerce(value, arg)
            if out is not _NO_MATCH:
                return out
        return _NO_MATCH
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        if isinstance(value, int | float) and str(value) in choices:  # precision: 32 -> "32"
            return str(value)
        return _NO_MATCH
    if origin is list:
        if not isinstance(value, list | tuple):
            return _NO_MATCH
        items = [_coerce(v, typing.get_args(hint)[0]) for v in value]
        return _NO_MATCH if any(i is _NO_MATCH for i in items) else items
    if origin is dict:
        return dict(value) if isinstance(value, dict) else _NO_MATCH
    if hint is type(None):
        return None if value is None else _NO_MATCH
    if hint is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if hint is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _NO_MATCH
    if hint is str:
        return value if isinstance(value, str) else _NO_MATCH
    return value


def _set(cfg: Config, key: str, value: Any) -> None:
    """Set dotted ``key`` on ``cfg``, checking that the key exists and the value has its type."""
    parts = key.split(".")
    if parts[0] == "method" and len(parts) == 2 and parts[1] != "name":
        cfg.method.options[parts[1]] = value  # checked against the method in validate()
        return
    node: Any = cfg
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node) if f.name != "options"]
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(
                f"unknown config key '{key}': '{part}' is not a key of {where}; "
                f"accepted: {', '.join(names)}.{_did_you_mean(part, names)}"
            )
        hint = typing.get_type_hints(type(node))[part]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hint):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{key}' is a section and takes a mapping, got {value!r}")
                for sub_key, sub_value in value.items():
                    _set(cfg, f"{key}.{sub_key}", sub_value)
                return
            converted = _coerce(value, hint)
            if converted is _NO_MATCH:
                extra = _did_you_mean(str(value), typing.get_args(hint)) if typing.get_origin(hint) is Literal else ""
                raise ConfigError(
                    f"config key '{key}' got {value!r}, which is not {_type_name(hint)}.{extra}"
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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- the YAML recipe at ``path`` <- ``key=value`` overrides, then :func:`validate`."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist; `dimcl list` shows the bundled recipes")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or "a syntax error"
            raise ConfigError(f"config file '{path}' is not valid YAML: {problem}{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {type(data).__name__}")
        for key, value in flatten_config(data).items():
            _set(cfg, key, value)
    for text in overrides:
        _set(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. a run's config.yaml)."""
    cfg = Config()
    for key, value in flatten_config(data).items():
        _set(cfg, key, value)
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------ validation


def _require(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' got {value!r}; {accepted}")


def validate(cfg: Config) -> None:
    """Check names against the registries and values against their ranges."""
    from dimcl.data import DATASETS
    from dimcl.methods import METHODS, method_options
    from dimcl.models import BACKBONES, TIMM_PREFIX, check_backbone_name

    for key, name, registry in (
        ("method.name", cfg.method.name, METHODS),
        ("backbone.name", cfg.backbone.name, BACKBONES),
        ("data.name", cfg.data.name, DATASETS),
    ):
        if key == "backbone.name" and name.startswith(TIMM_PREFIX):
            try:  # timm installed, and the model one of its names
                check_backbone_name(name)
            except ValueError as err:
                raise ConfigError(f"config key 'backbone.name' got '{name}': {err}") from None
            continue
        if name not in registry:
            raise ConfigError(
                f"config key '{key}' got unknown name '{name}'; accepted: {', '.join(registry)}."
                f"{_did_you_mean(name, registry)}"
            )
    accepted = method_options(cfg.method.name)
    for option, value in cfg.method.options.items():
        if option not in accepted:
            raise ConfigError(
                f"config key 'method.{option}' is not an option of method '{cfg.method.name}'; its options are: "
                f"{', '.join(accepted)}.{_did_you_mean(option, accepted)} (Switching methods? Start from that "
                "method's own recipe, e.g. -c <dataset>/<method>; `dimcl list` shows them.)"
            )
        default = accepted[option]
        hint = type(default) if default is not None else typing.Any
        converted = _coerce(value, hint)
        _require(converted is not _NO_MATCH, f"method.{option}", value, f"it takes {_type_name(hint)}")
        if isinstance(converted, int | float) and not isinstance(converted, bool):
            _require(converted > 0, f"method.{option}", value, "it must be > 0")
        cfg.method.options[option] = converted

    d, o, t, e = cfg.dimcl, cfg.optim, cfg.trainer, cfg.eval
    _require(0.0 <= d.weight <= 1.0, "dimcl.weight", d.weight, "λ must lie in [0, 1]; 0 is the plain method")
    _require(d.temperature > 0, "dimcl.temperature", d.temperature, "τ must be > 0 (the paper uses 0.1)")
    _require(
        cfg.data.batch_size >= 2,
        "data.batch_size",
        cfg.data.batch_size,
        "the batch size per device must be at least 2: DimCL and the batch-norm based objectives "
        "standardise over the batch",
    )
    _require(cfg.data.num_workers >= 0, "data.num_workers", cfg.data.num_workers, "it must be >= 0")
    for key in ("subset", "eval_subset"):
        value = getattr(cfg.data, key)
        _require(value is None or value >= 1, f"data.{key}", value, "it must be null or a positive count")
    _require(
        cfg.data.val_size >= 0, "data.val_size", cfg.data.val_size,
        "it must be >= 0 (0: evaluate on the test split, N: on N images held out from the training split)",
    )
    _require(t.max_epochs >= 1, "trainer.max_epochs", t.max_epochs, "it must be a positive number of epochs")
    _require(t.devices >= 1, "trainer.devices", t.devices, "it must be >= 1")
    _require(t.num_nodes >= 1, "trainer.num_nodes", t.num_nodes, "it must be >= 1")
    # Fabric's spawn launcher needs the whole run as one picklable function; dimcl's processes are started
    # the way torchrun starts them (the command again, once per device), which 'ddp' does.
    _require(
        t.strategy != "ddp_spawn", "trainer.strategy", t.strategy,
        "dimcl does not spawn its processes: use trainer.strategy=ddp (the same data parallelism, each process "
        "started as the command itself) or auto",
    )
    _require(
        t.checkpoint_every_n_steps >= 0, "trainer.checkpoint_every_n_steps", t.checkpoint_every_n_steps,
        "it must be >= 0 (0: checkpoint at epoch ends only)",
    )
    _require(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", t.log_every_n_steps, "it must be >= 1")
    _require(o.lr > 0, "optim.lr", o.lr, "the learning rate must be > 0")
    _require(o.classifier_lr > 0, "optim.classifier_lr", o.classifier_lr, "it must be > 0")
    _require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "it must be >= 0")
    _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "it must lie in [0, 1)")
    _require(o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "it must be >= 0")
    _require(o.min_lr >= 0, "optim.min_lr", o.min_lr, "it must be >= 0")
    _require(
        o.accumulate_grad_batches >= 1, "optim.accumulate_grad_batches", o.accumulate_grad_batches, "it must be >= 1"
    )
    _require(e.every >= 0, "eval.every", e.every, "it must be >= 0 (0 turns kNN evaluation off)")
    _require(e.knn_k >= 1, "eval.knn_k", e.knn_k, "it must be >= 1")
    _require(e.diagnose_images >= 2, "eval.diagnose_images", e.diagnose_images, "it must be >= 2")
    _require(e.knn_temperature > 0, "eval.knn_temperature", e.knn_temperature, "it must be > 0")
    a = cfg.augment
    if DATASETS[cfg.data.name].in_channels == 1:
        for name in ("saturation", "hue", "grayscale_prob"):
            value = getattr(a, name)
            _require(
                value is None or all(v == 0 for v in (value if isinstance(value, list) else [value])),
                f"augment.{name}", value,
                f"dataset '{cfg.data.name}' has one channel, where {name} means nothing; leave it unset",
            )
    if a.crop_scale is not None:
        _require(
            len(a.crop_scale) == 2 and 0 < a.crop_scale[0] <= a.crop_scale[1] <= 1,
            "augment.crop_scale",
            a.crop_scale,
            "it takes [min, max] with 0 < min <= max <= 1",
        )
    _require(a.crop_size is None or a.crop_size >= 1, "augment.crop_size", a.crop_size, "it must be >= 1")
    for f in dataclasses.fields(a):
        if f.name in ("crop_size", "crop_scale"):
            continue
        value = getattr(a, f.name)
        values = value if isinstance(value, list) else [value]
        if value is None:
            continue
        _require(len(values) in (1, 2), f"augment.{f.name}", value, "it takes a number or a list of two (per view)")
        upper = 0.5 if f.name == "hue" else (None if f.name in ("brightness", "contrast", "saturation") else 1.0)
        ok = all(v >= 0 and (upper is None or v <= upper) for v in values)
        _require(ok, f"augment.{f.name}", value, f"values must lie in [0, {upper if upper is not None else 'inf'}]")


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML, replacing ``path`` atomically (a failed write leaves the old file whole)."""
    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())


#: keys that change only what a run shows or logs, how often it saves, or how fast it goes (up to the
#: order of floating-point operations): runs that differ in them are the same experiment, and a run may
#: be resumed with other values of them
RUN_ONLY_KEYS = frozenset({
    "trainer.progress_bar", "trainer.log_every_n_steps", "trainer.tensorboard", "trainer.checkpoint_every_n_steps",
    "trainer.compile", "trainer.channels_last", "optim.fused", "data.num_workers", "data.on_bad_image",
    "data.augment_on",
})


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every dotted key whose value differs.

    A key that one side lacks counts as the default value: a config saved before the key existed
    describes the same experiment as one with the key at its default.
    """
    defaults = flatten_config(Config().to_dict())
    flat_old = {**defaults, **flatten_config(old)}
    flat_new = {**defaults, **flatten_config(new)}
    keys = sorted(set(flat_old) | set(flat_new))
    return [(k, flat_old.get(k), flat_new.get(k)) for k in keys if flat_old.get(k) != flat_new.get(k)]
