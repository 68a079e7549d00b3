"""Recipes: a YAML file (bundled or yours) plus ``key=value`` overrides, to a :class:`~dimcl.config.Config`
checked against everything dimcl can build.

:mod:`dimcl.config` checks keys, types and ranges; here the names (method, backbone, dataset) and the
method's own options are checked against the registries, so that a typo fails before any data is read.
The bundled recipes, ``dimcl/configs/<dataset>/<method>.yaml``, ship as package data: a wheel, an sdist
and an editable install all find them next to this file.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

from dimcl.config import NO_MATCH, Config, ConfigError, coerce_value, make_config, read_recipe_file, require, type_name
from dimcl.data import DATASETS
from dimcl.methods import METHODS, method_options
from dimcl.models import BACKBONES, TIMM_PREFIX, check_backbone_name
from dimcl.names import did_you_mean


def recipes_dir() -> Path:
    """``$DIMCL_CONFIGS`` if set, else the package's own ``configs/`` folder."""
    env = os.environ.get("DIMCL_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parent / "configs"


def list_recipes() -> list[str]:
    root = recipes_dir()
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    """A path to a YAML file, or a recipe name such as ``cifar10/byol``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = recipes_dir() / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if candidate.is_file():
        return candidate
    known = list_recipes()
    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor a bundled recipe; recipes are named <dataset>/<method> "
        f"({', '.join(known[:6])}{', ...' if len(known) > 6 else ''}; `dimcl list` shows all)."
        + did_you_mean(name_or_path, known)
    )


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- the YAML recipe at ``path`` <- ``key=value`` overrides, every key and name checked."""
    cfg = make_config(read_recipe_file(path) if path is not None else None, overrides)
    check_names(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. a run's config.yaml), checked as above."""
    cfg = make_config(data)
    check_names(cfg)
    return cfg


def check_names(cfg: Config) -> None:
    """Method, backbone and dataset against their registries; the method's options against what it takes."""
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
                f"{did_you_mean(name, registry)}"
            )
    _check_method_options(cfg)
    width = {**method_options(cfg.method.name), **cfg.method.options}.get("proj_output_dim")
    require(
        not cfg.dimcl.enabled or not isinstance(width, int) or width >= 2, "method.proj_output_dim", width,
        "DimCL contrasts the projector's output dimensions with one another and needs at least 2 of them "
        "(or dimcl.weight=0 for the plain method)",
    )
    require(
        cfg.augment.num_local_crops == 0 or METHODS[cfg.method.name].multi_crop,
        "augment.num_local_crops", cfg.augment.num_local_crops,
        f"method '{cfg.method.name}' has no multi-crop form (solo-learn computes it on the two global views only); "
        f"multi-crop is for {', '.join(name for name, cls in METHODS.items() if cls.multi_crop)}. Set it to 0",
    )
    if DATASETS[cfg.data.name].in_channels == 1:
        for name in ("saturation", "hue", "grayscale_prob"):
            value = getattr(cfg.augment, name)
            require(
                value is None or all(v == 0 for v in (value if isinstance(value, list) else [value])),
                f"augment.{name}", value,
                f"dataset '{cfg.data.name}' has one channel, where {name} means nothing; leave it unset",
            )


def _check_method_options(cfg: Config) -> None:
    """Each ``method.<option>`` is one the method takes, of its default's type (and > 0 for numbers, >= 0
    for those the method class names in ``nonnegative_options``)."""
    accepted = method_options(cfg.method.name)
    nonnegative = METHODS[cfg.method.name].nonnegative_options
    for option, value in cfg.method.options.items():
        if option not in accepted:
            raise ConfigError(
                f"config key 'method.{option}' is not an option of method '{cfg.method.name}'; its options are: "
                f"{', '.join(accepted)}.{did_you_mean(option, accepted)} (Switching methods? Start from that "
                "method's own recipe, e.g. -c <dataset>/<method>; `dimcl list` shows them.)"
            )
        default = accepted[option]
        hint = type(default) if default is not None else typing.Any
        converted = coerce_value(value, hint)
        require(converted is not NO_MATCH, f"method.{option}", value, f"it takes {type_name(hint)}")
        if isinstance(converted, int | float) and not isinstance(converted, bool):
            if option in nonnegative:
                require(converted >= 0, f"method.{option}", value, "it must be >= 0")
            else:
                require(converted > 0, f"method.{option}", value, "it must be > 0")
        cfg.method.options[option] = converted
