"""Features of a frozen backbone, extracted once and cached on disk, shared by kNN and the linear probe.

A cache file is a ``.pt`` of tensors and a fingerprint string only (read back with
``torch.load(weights_only=True)``); it is used only when its fingerprint matches the backbone's weights
and the dataset, so a retrained backbone or another subset is never scored on stale features.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dimcl.checkpoint import save_atomic
from dimcl.config import Config
from dimcl.data import labels_of, run_splits
from dimcl.eval.knn import extract_features


def feature_fingerprint(backbone: nn.Module, dataset: Dataset) -> str:
    """SHA-256 of the backbone's state (parameters and buffers: names, dtypes, shapes, bytes) and the dataset.

    The dataset enters by its length and, when they can be read without decoding images, its labels
    (which tell apart two seeded subsets of equal size).
    """
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(data.view(torch.uint8).numpy()))
    digest.update(f"len={len(dataset)}|".encode())
    labels = labels_of(dataset)
    if labels is not None:
        digest.update(memoryview(labels.numpy()))
    return digest.hexdigest()


def _load_cache(path: Path, fingerprint: str) -> tuple[Tensor, Tensor] | None:
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile):
        return None  # a truncated or foreign file is only a cache: extract again
    if not isinstance(cached, dict) or cached.get("fingerprint") != fingerprint:
        return None
    return cached["features"], cached["labels"]


def cached_features(
    backbone: nn.Module,
    dataset: Dataset,
    cache_path: str | Path | None,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """``(features (N, F) float32, labels (N,) int64)`` of ``dataset`` through ``backbone`` (eval mode).

    Read from ``cache_path`` when the file there was made from the same weights and dataset (see
    :func:`feature_fingerprint`), else extracted with :func:`~dimcl.eval.knn.extract_features` and
    written there atomically: a ``.pt`` of tensors and the fingerprint string only, read back with
    ``torch.load(weights_only=True)``. ``cache_path`` None: extracted, not cached.
    """
    if cache_path is not None:
        cache_path = Path(cache_path)
        fingerprint = feature_fingerprint(backbone, dataset)
        cached = _load_cache(cache_path, fingerprint)
        if cached is not None:
            return cached
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    features, labels = extract_features(backbone, loader, device)
    if cache_path is not None:
        save_atomic({"features": features, "labels": labels, "fingerprint": fingerprint}, cache_path)
    return features, labels


def cached_eval_features(
    backbone: nn.Module,
    cfg: Config,
    cache_dir: str | Path | None,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    datasets: tuple[Dataset, Dataset] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train features, train labels, eval features, eval labels)`` of the run's evaluation splits.

    The splits (``datasets``) default to ``run_splits(cfg).labelled()``; the
    features are cached as ``cache_dir/train.pt`` and ``cache_dir/eval.pt``, so kNN and the linear probe
    extract them once. ``cache_dir`` None: nothing is cached (a read-only run directory).
    """
    train_set, eval_set = datasets if datasets is not None else run_splits(cfg).labelled()
    common = dict(device=device, batch_size=batch_size, num_workers=cfg.data.num_workers)
    paths = (None, None) if cache_dir is None else (Path(cache_dir) / "train.pt", Path(cache_dir) / "eval.pt")
    train_features, train_labels = cached_features(backbone, train_set, paths[0], **common)
    eval_features, eval_labels = cached_features(backbone, eval_set, paths[1], **common)
    return train_features, train_labels, eval_features, eval_labels
