"""A trained run read back: its backbone, or its whole method, rebuilt from its config and saved weights.

The backbone comes from ``backbone.safetensors`` once exported, else from the last checkpoint; the whole
method (projector and predictor too) only from the checkpoint. See :mod:`dimcl.run_dir` for the layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dimcl.build import build_backbone_from_config, build_method_from_config
from dimcl.checkpoint import CheckpointError, load_backbone_weights, load_checkpoint, load_weights
from dimcl.config import Config, ConfigError
from dimcl.run_dir import BACKBONE, BACKBONE_PREFIX, CHECKPOINT, METHOD_PREFIX, load_run_config, weights_under


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory, a checkpoint file, or a backbone file inside one."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    raise ConfigError(f"--ckpt '{path}' does not exist; give a run directory or a checkpoint file inside one")


def load_trained_backbone(path: str | Path) -> tuple[nn.Module, Config]:
    """The backbone of a run: from ``backbone.safetensors`` when exported, else from the last checkpoint."""
    run = run_dir_of(path)
    cfg = load_run_config(run)
    backbone = build_backbone_from_config(cfg)
    given = Path(path)
    weights_file = given if given.is_file() and given.suffix == ".safetensors" else run / BACKBONE
    if weights_file.is_file() and not (given.is_file() and given.suffix == ".ckpt"):
        source = weights_file
        tensors, _ = load_backbone_weights(weights_file)
    else:
        source = given if given.is_file() and given.suffix == ".ckpt" else run / CHECKPOINT
        state = load_checkpoint(source)
        tensors = weights_under(state["model"], BACKBONE_PREFIX)
        if not tensors:
            raise CheckpointError(f"'{source}' holds no backbone weights (no keys under '{BACKBONE_PREFIX}')")
    load_weights(backbone, tensors, source)
    return backbone, cfg


def load_trained_method(path: str | Path) -> tuple[nn.Module | None, nn.Module, Any]:
    """``(method or None, backbone, config)`` of a run directory, for diagnostics.

    The projector is only saved in ``checkpoints/last.ckpt``: with it, the whole method is rebuilt
    and its weights loaded (the method's backbone is then the run's last backbone). Without it (only
    ``backbone.safetensors`` kept), the method is None and only the backbone is returned.
    """
    run = run_dir_of(path)
    ckpt = run / CHECKPOINT
    if not ckpt.is_file():
        backbone, cfg = load_trained_backbone(run)
        return None, backbone, cfg
    cfg = load_run_config(run)
    state = load_checkpoint(ckpt)
    method = build_method_from_config(cfg, gather_distributed=False)
    load_weights(method, weights_under(state["model"], METHOD_PREFIX), ckpt)
    return method, method.backbone, cfg
