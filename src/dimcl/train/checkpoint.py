"""Checkpoints written atomically and read safely, and the backbone exported as safetensors."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign or unsafe to load."""


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader (or a crash at any moment) sees either the old complete file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"'{path}' is not a readable dimcl checkpoint (truncated or another format): not a PyTorch archive"
            ) from None
        raise CheckpointError(
            f"refusing to load '{path}': it holds objects other than tensors and plain data, which could run "
            f"arbitrary code ({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable dimcl checkpoint (truncated or another format): {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"'{path}' is a PyTorch file but not a dimcl checkpoint (no 'model' and 'config')")
    return state


def export_backbone(backbone: nn.Module, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the backbone's weights as safetensors, with how to rebuild it in the metadata."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"dimcl": json.dumps(metadata)})
    os.replace(tmp, path)


def load_backbone_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata written by :func:`export_backbone`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("dimcl", "{}"))
    return load_file(str(path)), meta
