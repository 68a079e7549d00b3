"""Checkpoints written atomically and read safely, and the backbone exported as safetensors."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from dimcl.errors import BadInputError
from dimcl.files import failed_write, temporary_sibling, write_atomic


class CheckpointError(BadInputError):
    """A checkpoint that is missing, truncated, foreign or unsafe to load."""


class _WriteErrors:
    """A file's ``write`` that keeps the ``OSError`` it raised (torch.save replaces it with its own error)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()


def _os_error_behind(err: BaseException) -> OSError | None:
    """The first OSError in ``err``'s chain of causes and contexts, if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader (or a crash at any moment) sees either the old complete file or the new one.
    A failing write (full disk, I/O error) raises :class:`~dimcl.files.WriteFailedError` naming ``path``.
    """
    path = Path(path)
    with failed_write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_sibling(path)
        try:
            with os.fdopen(fd, "wb") as f:
                sink = _WriteErrors(f)
                try:
                    torch.save(state, sink)
                except RuntimeError as err:
                    # torch turns a failed write into "unexpected pos ..."; report the write's own error,
                    # recorded by the sink or left as the context of torch's error
                    cause = sink.error or _os_error_behind(err)
                    if cause is not None:
                        raise cause from None
                    raise
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # a full disk gets its space back
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
    # Serialized in memory (the backbone alone is small) so that the write is one atomic file replacement.
    write_atomic(path, save_safetensors(tensors, metadata={"dimcl": json.dumps(metadata)}))


def load_backbone_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata written by :func:`export_backbone`; a damaged, forged or foreign file
    is a :class:`CheckpointError` naming it (the safetensors reader checks the header against the file's
    size, so a forged header length costs nothing)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta_text = (f.metadata() or {}).get("dimcl", "{}")
        tensors = load_file(str(path))
    except Exception as err:  # the reader raises its own error type, OSError or ValueError on a damaged file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({reason}); it is truncated, damaged or not one "
            "dimcl wrote. Export it again from its run (dimcl export --format safetensors)."
        ) from None
    try:
        meta = json.loads(meta_text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}': its dimcl metadata is not a JSON mapping; export it again from its run")
    return tensors, meta


def load_weights(module: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """``module.load_state_dict(tensors)``, with weights of another architecture or shape a
    :class:`CheckpointError` naming ``source`` instead of PyTorch's traceback. Weights that are not floating
    point where the model's are (int8 would be cast silently) or that are not finite are refused too."""
    expected = module.state_dict()
    for name, tensor in tensors.items():
        if name in expected and expected[name].is_floating_point():
            if not tensor.is_floating_point():
                raise CheckpointError(f"'{source}': '{name}' is {tensor.dtype}, not floating point like the model's")
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"'{source}': '{name}' holds NaN or infinite values; it is not a trained model")
    try:
        module.load_state_dict(tensors)
    except RuntimeError as err:
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:4] if line.strip())
        raise CheckpointError(
            f"'{source}' holds weights that do not fit the model its config describes ({detail}); it belongs to "
            "another run or was changed"
        ) from None
