"""Getting the trained backbone out: as a ready module (:func:`load_backbone`), or as a file for another library.

``dimcl export --ckpt RUN --format FORMAT --out FILE`` writes one of :data:`EXPORT_FORMATS`:

- ``safetensors``: dimcl's own file (what a run writes as ``backbone.safetensors``): the weights plus the
  metadata that rebuilds the module, so that :func:`load_backbone` reads it anywhere, without the run.
- ``torchvision``: the state dict of the torchvision model the backbone is (``resnet18`` / ``resnet50``:
  ``torchvision.models.resnet*`` with ``fc = nn.Identity()`` and, for the CIFAR stem, ``conv1`` a 3x3
  stride-1 conv and ``maxpool = nn.Identity()``; ``vit_tiny`` / ``vit_small``: ``VisionTransformer`` with
  ``heads = nn.Identity()``). Loads with ``model.load_state_dict(torch.load(FILE, weights_only=True))``.
- ``timm``: the state dict of a ``timm/<model>`` backbone, for
  ``timm.create_model(<model>, pretrained=False, **metadata["timm_kwargs"])``.

The torchvision and timm files are plain state dicts: ``.safetensors`` when FILE ends so, else a
``torch.save`` file (``.pth``). Either way the metadata is printed by the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save as save_safetensors
from torch import nn

from dimcl.build import backbone_metadata, describe_backbone
from dimcl.checkpoint import CheckpointError, export_backbone, load_backbone_weights, load_weights, save_atomic
from dimcl.config import ConfigError
from dimcl.files import write_atomic
from dimcl.models import TIMM_PREFIX, build_backbone
from dimcl.trained import load_trained_backbone

__all__ = ["EXPORT_FORMATS", "export", "load_backbone"]

EXPORT_FORMATS = ("safetensors", "torchvision", "timm")
"""The formats of :func:`export` and ``dimcl export --format``."""

#: dimcl backbones that are torchvision models with the classifier removed
TORCHVISION_BACKBONES = ("resnet18", "resnet50", "vit_tiny", "vit_small")


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained backbone of a run, ready to use, and its metadata; ``dimcl.load_backbone`` is this function.

    Args:
        path: a run directory, a checkpoint inside one (``checkpoints/last.ckpt``: the weights of that
            moment), or a ``.safetensors`` file written by a run or by ``dimcl export --format safetensors``
            (readable without its run).

    Returns:
        ``(backbone, meta)``. The module is on the CPU in eval mode and maps
        ``(B, meta["in_channels"], meta["image_size"], meta["image_size"])`` images, normalised per channel
        with ``meta["mean"]`` / ``meta["std"]``, to ``(B, meta["num_features"])`` features. The metadata
        also names the architecture (``backbone``, ``stem``, ``patch_size``), the ``dataset``, the
        ``method`` and ``dimcl_weight`` it was trained with.

    Raises:
        CheckpointError: the path holds no backbone dimcl wrote, or a damaged one (exit 2 from the CLI).

    Example:
        ```python
        import dimcl

        backbone, meta = dimcl.load_backbone("runs/byol_dimcl")
        features = backbone(images)  # (B, meta["num_features"])
        ```
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        tensors, meta = load_backbone_weights(path)
        if not {"backbone", "in_channels", "image_size", "dataset"} <= set(meta):
            raise CheckpointError(
                f"'{path}' is a safetensors file without dimcl's metadata, so the module it belongs to is unknown; "
                "give a run directory, its checkpoint, or a file written by a run or by dimcl export --format "
                "safetensors"
            )
        backbone = build_backbone(
            meta["backbone"], in_channels=meta["in_channels"], image_size=meta["image_size"],
            cifar_stem=meta.get("cifar_stem"), patch_size=meta.get("patch_size"),
        )
        load_weights(backbone, tensors, path)
        meta = {**describe_backbone(backbone, meta["dataset"]), **meta}  # files from before those keys
    else:
        backbone, cfg = load_trained_backbone(path)
        meta = backbone_metadata(cfg, backbone)
    return backbone.eval(), meta


def _write_state_dict(backbone: nn.Module, out: Path, meta: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    if out.suffix == ".safetensors":
        write_atomic(out, save_safetensors(tensors, metadata={"dimcl": json.dumps(meta)}))
    else:
        save_atomic(tensors, out)


def export(path: str | Path, fmt: str, out: str | Path) -> dict[str, Any]:
    """Write the backbone of the run at ``path`` to ``out`` as ``fmt`` (``dimcl export``).

    The file is replaced atomically (a failed write leaves no torn file).

    Args:
        path: what :func:`load_backbone` reads: a run directory, its checkpoint or a ``.safetensors`` file.
        fmt: one of ``EXPORT_FORMATS``: ``safetensors`` (any backbone), ``torchvision`` (the ResNets and
            ViTs) or ``timm`` (``timm/<model>`` backbones).
        out: the file to write; ``.safetensors`` for that format, else ``.safetensors`` or a ``torch.save``
            file.

    Returns:
        The backbone's metadata, as :func:`load_backbone` returns it.

    Raises:
        ConfigError: an unknown format, one the backbone has no form in, or an ``out`` of the wrong kind.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format '{fmt}' is not one of {', '.join(EXPORT_FORMATS)}")
    backbone, meta = load_backbone(path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = meta["backbone"]
    if fmt == "safetensors":
        if out.suffix != ".safetensors":
            raise ConfigError(f"--format safetensors writes a .safetensors file; --out '{out}' ends otherwise")
        export_backbone(backbone, out, meta)
    elif fmt == "torchvision":
        if name not in TORCHVISION_BACKBONES:
            raise ConfigError(
                f"backbone '{name}' is not a torchvision model, so it has no --format torchvision; that format "
                f"takes {', '.join(TORCHVISION_BACKBONES)}"
                + (" (a timm backbone exports with --format timm)" if name.startswith(TIMM_PREFIX) else "")
                + "; --format safetensors takes every backbone (read it with dimcl.load_backbone)"
            )
        _write_state_dict(backbone, out, meta)
    else:
        if not name.startswith(TIMM_PREFIX):
            raise ConfigError(
                f"backbone '{name}' is not a timm model, so it has no --format timm; that format takes "
                f"{TIMM_PREFIX}<model> backbones"
                + (" (this one exports with --format torchvision)" if name in TORCHVISION_BACKBONES else "")
                + "; --format safetensors takes every backbone (read it with dimcl.load_backbone)"
            )
        _write_state_dict(backbone, out, meta)
    return meta
