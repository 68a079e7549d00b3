"""The ranges of every configuration value, section by section; names are checked against the registries
by :func:`dimcl.recipes.check_names`. A bad value raises :class:`~dimcl.errors.ConfigError` naming the key,
the value and what is accepted (:func:`require`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dimcl.errors import ConfigError

# The sections are typed Any: config.py calls these checks, so importing its classes here (even for type
# checkers only) would make the two modules a circle. Each function's parameter is the section it names.


def require(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' got {value!r}; {accepted}")


#: seeds are combined with epochs and ranks into 64-bit generator seeds (dimcl.train.sampling.epoch_seed)
MAX_SEED = 2**40


def check_values(cfg: Any) -> None:
    """Check every value against its range, section by section (names: :func:`dimcl.recipes.check_names`).

    First the one rule for every number of every section: finite, and an integer within 64 bits (an
    infinite learning rate or temperature would train to NaN or a constant loss; 2**70 overflows torch)."""
    _check_numbers(cfg)
    require(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, "a seed is an integer in [0, 2**40]")
    cfg.dimcl.check()
    _check_data(cfg.data)
    _check_trainer(cfg.trainer)
    _check_optim(cfg.optim)
    _check_eval(cfg.eval)
    _check_augment(cfg.augment)


def _check_numbers(node: Any, prefix: str = "") -> None:
    for name, value in (node if isinstance(node, dict) else vars(node)).items():
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(value) or isinstance(value, dict):  # a section, or a method's options
            _check_numbers(value, prefix if name == "options" else f"{key}.")
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, float):
                require(math.isfinite(item), key, value, "numbers must be finite")
            elif isinstance(item, int) and not isinstance(item, bool):
                require(-(2**63) <= item < 2**63, key, value, "integers must fit in 64 bits")


def _check_data(d: Any) -> None:
    require(
        d.batch_size >= 2,
        "data.batch_size",
        d.batch_size,
        "the batch size per device must be at least 2: DimCL and the batch-norm based objectives "
        "standardise over the batch",
    )
    require(d.num_workers >= 0, "data.num_workers", d.num_workers, "it must be >= 0")
    for key in ("subset", "eval_subset"):
        value = getattr(d, key)
        require(value is None or value >= 1, f"data.{key}", value, "it must be null or a positive count")
    require(
        d.val_size >= 0, "data.val_size", d.val_size,
        "it must be >= 0 (0: evaluate on the test split, N: on N images held out from the training split)",
    )
    check_classes(d.classes, "data.classes")


def check_classes(classes: Any, key: str) -> None:
    """``data.classes`` / ``eval.classes``: null, or a non-empty list of distinct labels (integers >= 0)."""
    require(
        classes is None or (isinstance(classes, list) and len(classes) > 0 and len(set(classes)) == len(classes)
                            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)),
        key, classes, "it must be null or a non-empty list of distinct class labels (integers >= 0), e.g. [0, 1, 2]",
    )


def _check_trainer(t: Any) -> None:
    require(t.max_epochs >= 1, "trainer.max_epochs", t.max_epochs, "it must be a positive number of epochs")
    require(t.devices >= 1, "trainer.devices", t.devices, "it must be >= 1")
    require(t.num_nodes >= 1, "trainer.num_nodes", t.num_nodes, "it must be >= 1")
    # Fabric's spawn launcher needs the whole run as one picklable function; dimcl's processes are started
    # the way torchrun starts them (the command again, once per device), which 'ddp' does.
    require(
        t.strategy != "ddp_spawn", "trainer.strategy", t.strategy,
        "dimcl does not spawn its processes: use trainer.strategy=ddp (the same data parallelism, each process "
        "started as the command itself) or auto",
    )
    require(
        t.checkpoint_every_n_steps >= 0, "trainer.checkpoint_every_n_steps", t.checkpoint_every_n_steps,
        "it must be >= 0 (0: checkpoint at epoch ends only)",
    )
    require(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", t.log_every_n_steps, "it must be >= 1")


def _check_optim(o: Any) -> None:
    require(o.lr > 0, "optim.lr", o.lr, "the learning rate must be > 0")
    require(o.classifier_lr > 0, "optim.classifier_lr", o.classifier_lr, "it must be > 0")
    require(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "it must be >= 0")
    require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "it must lie in [0, 1)")
    require(o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "it must be >= 0")
    require(o.min_lr >= 0, "optim.min_lr", o.min_lr, "it must be >= 0")
    require(o.warmup_start_lr >= 0, "optim.warmup_start_lr", o.warmup_start_lr, "it must be >= 0")
    require(o.eta > 0, "optim.eta", o.eta, "LARS' trust coefficient must be > 0")
    require(o.clip_grad_norm is None or o.clip_grad_norm > 0, "optim.clip_grad_norm", o.clip_grad_norm,
            "it must be > 0, or null for no clipping")
    require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas,
            "AdamW's betas are two numbers in [0, 1)")
    require(
        o.accumulate_grad_batches >= 1, "optim.accumulate_grad_batches", o.accumulate_grad_batches, "it must be >= 1"
    )


def _check_eval(e: Any) -> None:
    require(e.every >= 0, "eval.every", e.every, "it must be >= 0 (0 turns kNN evaluation off)")
    require(e.knn_k >= 1, "eval.knn_k", e.knn_k, "it must be >= 1")
    require(e.diagnose_every >= 1, "eval.diagnose_every", e.diagnose_every, "it must be >= 1")
    require(e.diagnose_images >= 2, "eval.diagnose_images", e.diagnose_images, "it must be >= 2")
    require(e.knn_temperature > 0, "eval.knn_temperature", e.knn_temperature, "it must be > 0")
    check_classes(e.classes, "eval.classes")


#: augment keys that are not per-view augmentation strengths
_VIEW_SHAPE_KEYS = ("crop_size", "crop_scale", "num_local_crops", "local_crop_size", "local_crop_scale")


def _check_augment(a: Any) -> None:
    for key in ("crop_scale", "local_crop_scale"):
        scale = getattr(a, key)
        if scale is not None:
            require(
                len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, f"augment.{key}", scale,
                "it takes [min, max] with 0 < min <= max <= 1",
            )
    require(a.crop_size is None or a.crop_size >= 1, "augment.crop_size", a.crop_size, "it must be >= 1")
    require(
        a.local_crop_size is None or a.local_crop_size >= 1, "augment.local_crop_size", a.local_crop_size,
        "it must be null (the global size x 96 / 224) or >= 1",
    )
    require(
        a.num_local_crops >= 0, "augment.num_local_crops", a.num_local_crops,
        "it must be >= 0 (0: the two global views only)",
    )
    for f in dataclasses.fields(a):
        if f.name in _VIEW_SHAPE_KEYS:
            continue
        value = getattr(a, f.name)
        values = value if isinstance(value, list) else [value]
        if value is None:
            continue
        require(len(values) in (1, 2), f"augment.{f.name}", value, "it takes a number or a list of two (per view)")
        upper = 0.5 if f.name == "hue" else (None if f.name in ("brightness", "contrast", "saturation") else 1.0)
        ok = all(v >= 0 and (upper is None or v <= upper) for v in values)
        require(ok, f"augment.{f.name}", value, f"values must lie in [0, {upper if upper is not None else 'inf'}]")
