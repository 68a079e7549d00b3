"""The bundled recipes, ``dimcl/configs/<dataset>/<method>.yaml`` inside the package, found by name or path.

They ship as package data, so a wheel, an sdist and an editable install all find them next to this file.
"""

from __future__ import annotations

import os
from pathlib import Path

from dimcl.config import ConfigError


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
    import difflib

    close = difflib.get_close_matches(name_or_path, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor a bundled recipe; recipes are named <dataset>/<method> "
        f"({', '.join(known[:6])}{', ...' if len(known) > 6 else ''}; `dimcl list` shows all).{hint}"
    )
