"""Floors and a ceiling for a protocol: what a learned representation has to beat, and what labels reach.

For the evaluation protocol of a config (its kNN bank and evaluation images, ``eval.knn_*``, the fast
linear probe of ``dimcl linear``), four rows, each scored by kNN and the linear probe exactly as a
pretrained backbone is:

- ``raw_pixels``: the normalised images themselves, flattened (``C·H·W`` features);
- ``random_init``: the config's backbone with random weights (seeded by ``seed``), never trained;
- ``supervised``: the same backbone trained with labels for the same epochs on the same images
  (:mod:`dimcl.train.supervised`), its features scored like the others, plus its own classifier's
  top-1 on the evaluation images (``head_top1``).

``dimcl baselines`` writes them to ``baselines.json`` in a run or sweep folder (one record per seed and
protocol, replaced when computed again); ``dimcl report`` and ``dimcl demo`` show them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from dimcl.build import build_backbone_from_config
from dimcl.config import Config, ConfigError
from dimcl.data import run_splits
from dimcl.eval.diversity import diversity_report
from dimcl.eval.knn import extract_features
from dimcl.eval.linear import FAST, train_linear_probe
from dimcl.eval.offline import knn_of_features
from dimcl.experiment import PROTOCOL_KEYS, protocol_of
from dimcl.files import write_atomic
from dimcl.run_dir import BASELINES
from dimcl.train.supervised import train_supervised

__all__ = ["PROTOCOL_KEYS", "baselines", "pixel_features", "protocol_of", "read_baselines", "write_baselines"]

#: the rows, in table order, with the words a table shows for them
ROWS = {
    "raw_pixels": "raw pixels (floor)",
    "random_init": "random-init backbone (floor)",
    "supervised": "supervised backbone (ceiling)",
}


@torch.no_grad()
def pixel_features(dataset: Dataset, batch_size: int = 1024, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """``(features (N, C·H·W) float32, labels (N,))``: each transformed image flattened."""
    features, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        features.append(images.flatten(1).float())
        labels.append(torch.as_tensor(targets).long())
    return torch.cat(features), torch.cat(labels)


def _scores(features: tuple[Tensor, Tensor, Tensor, Tensor], cfg: Config, num_classes: int) -> dict[str, Any]:
    """kNN and the fast linear probe (``dimcl linear``'s defaults) of one set of features, and their
    diversity on the first ``eval.diagnose_images`` evaluation images (the batch the run diagnostics use)."""
    knn = knn_of_features(*features, cfg, num_classes)
    linear = train_linear_probe(*features, num_classes, epochs=100, seed=0, **FAST)
    diversity = diversity_report(features[2][: cfg.eval.diagnose_images])
    return {
        "knn_top1": knn["knn_top1"], "knn_top5": knn["knn_top5"],
        "linear_top1": linear["top1"], "linear_top5": linear["top5"], "num_features": int(features[0].shape[1]),
        "effective_rank": diversity["effective_rank"], "mean_abs_corr": diversity["mean_abs_corr"],
    }


def _backbone_features(backbone: nn.Module, datasets: tuple[Dataset, Dataset], cfg: Config, device: Any) -> tuple:
    loaders = [DataLoader(d, batch_size=512, num_workers=cfg.data.num_workers) for d in datasets]
    return (*extract_features(backbone, loaders[0], device), *extract_features(backbone, loaders[1], device))


def baselines(
    cfg: Config,
    device: str | torch.device = "cpu",
    supervised: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """The rows of the module docstring for ``cfg``'s protocol and seed, as one record."""
    say = log or (lambda _: None)
    splits = run_splits(cfg)
    datasets = splits.labelled()
    num_classes = splits.class_count(datasets[0], "baselines")
    record: dict[str, Any] = {
        "seed": cfg.seed, "protocol": protocol_of(cfg),
        "bank_size": len(datasets[0]), "eval_size": len(datasets[1]),
    }
    say(f"raw pixels: kNN and linear probe on {len(datasets[0])} / {len(datasets[1])} images")
    pixels = (*pixel_features(datasets[0]), *pixel_features(datasets[1]))
    record["raw_pixels"] = _scores(pixels, cfg, num_classes)

    say("random-init backbone")
    torch.manual_seed(cfg.seed)
    backbone = build_backbone_from_config(cfg).to(device)
    record["random_init"] = _scores(_backbone_features(backbone, datasets, cfg, device), cfg, num_classes)

    if supervised:
        say(f"supervised backbone: {cfg.trainer.max_epochs} epochs with labels")
        backbone, head, trained = train_supervised(cfg, device, log=say)
        features = _backbone_features(backbone, datasets, cfg, device)
        with torch.no_grad():
            predictions = head(features[2].to(device)).argmax(1).cpu()
        head_top1 = 100.0 * int((predictions == features[3]).sum()) / len(predictions)
        record["supervised"] = {**_scores(features, cfg, num_classes), "head_top1": head_top1, **trained}
    return record


def read_baselines(folder: str | Path) -> list[dict[str, Any]]:
    """The records of ``folder/baselines.json`` (empty when there is none)."""
    path = Path(folder) / BASELINES
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"'{path}' is not valid JSON ({err}); delete it and run `dimcl baselines` again") from None
    return list(data.get("records", [])) if isinstance(data, dict) else []


def has_baselines(folder: str | Path, cfg: Config, supervised: bool = True) -> bool:
    """Whether ``folder/baselines.json`` holds the record of ``cfg``'s seed and protocol (with its supervised
    ceiling when ``supervised``), i.e. whether :func:`baselines` would only recompute it."""
    protocol = protocol_of(cfg)
    return any(
        r.get("seed") == cfg.seed and r.get("protocol") == protocol and (not supervised or "supervised" in r)
        for r in read_baselines(folder)
    )


def write_baselines(folder: str | Path, record: dict[str, Any]) -> Path:
    """Add ``record`` to ``folder/baselines.json``, replacing one of the same seed and protocol."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kept = [
        r for r in read_baselines(folder)
        if not (r.get("seed") == record["seed"] and r.get("protocol") == record["protocol"])
    ]
    records = sorted([*kept, record], key=lambda r: (json.dumps(r.get("protocol"), sort_keys=True), r.get("seed")))
    path = folder / BASELINES
    write_atomic(path, (json.dumps({"records": records}, indent=2) + "\n").encode())
    return path
