"""Floors and a ceiling for a protocol: what a learned representation has to beat, and what labels reach.

For the evaluation protocol of a config (its kNN bank and evaluation images, ``eval.knn_*``, the fast
linear probe of ``dimcl linear``), four rows, each scored by kNN and the linear probe exactly as a
pretrained backbone is:

- ``raw_pixels``: the normalised images themselves, flattened (``C·H·W`` features);
- ``random_init``: the config's backbone with random weights (seeded by ``seed``), never trained;
- ``supervised``: the same backbone trained with labels for the same epochs on the same images
  (:mod:`dimcl.train.supervised`), its features scored like the others, plus its own classifier's
  top-1 on the evaluation images (``head_top1``) when they are of the classes it was trained on (not on
  the unseen classes of ``eval.classes``, which its classifier has no outputs for).

With few labels (``labels``, e.g. ``("1%", "10%")``: the class-balanced subsets of
:mod:`dimcl.data.label_budget`, the same images ``dimcl linear --labels`` and ``dimcl finetune --labels`` use),
the floors also get the fast linear probe trained on the subset alone (``linear_<tag>_top1``), and a
``supervised_<tag>`` row is the backbone trained from random weights on the subset alone: the supervised
recipe (learning rate 0.1 per 256 images, one warm-up epoch, cosine, momentum 0.9, weight decay 5e-4) on the
fine-tuning's images and augmentations (crop of scale 0.08-1, flip), for :data:`FEW_LABELS` ``["steps"]``
optimizer steps of batch :data:`FEW_LABELS` ``["batch_size"]`` whatever the subset's size (1% of
Fashion-MNIST: 75 epochs; 10%: 7), scored by its own classifier. It is what the labels reach without
pretraining, the reference of ``finetune_<tag>``.

``dimcl baselines`` writes them to ``baselines.json`` in a run or sweep folder (one record per seed and
protocol, replaced when computed again); ``dimcl report`` and ``dimcl demo`` show them. The supervised
ceiling depends on the protocol and the seed alone, so a folder of the same protocol can lend it
(:func:`ceiling_of`, ``dimcl baselines --ceiling-from``) instead of training it again: the row keeps the
path of the record it came from (``"from"``).
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
from dimcl.data.label_budget import LABELS_SEED, few_label_indices, parse_label_budget
from dimcl.eval.classifier import labelled_only
from dimcl.eval.diversity import diversity_report
from dimcl.eval.knn import extract_features
from dimcl.eval.linear import FAST, accuracy, augmented_train_set, train_linear_probe
from dimcl.eval.offline import knn_of_features
from dimcl.experiment import PROTOCOL_KEYS, protocol_of
from dimcl.files import write_atomic
from dimcl.run_dir import BASELINES
from dimcl.train.supervised import fit_supervised, train_supervised

__all__ = [
    "PROTOCOL_KEYS", "baselines", "ceiling_of", "pixel_features", "protocol_of", "read_baselines", "write_baselines",
]

#: the rows, in table order, with the words a table shows for them
ROWS = {
    "raw_pixels": "raw pixels (floor)",
    "random_init": "random-init backbone (floor)",
    "supervised": "supervised backbone (ceiling)",
}
#: the supervised reference trained on a few-label subset alone (see the module docstring)
FEW_LABELS = {"steps": 300, "batch_size": 128}


def few_label_row(tag: str) -> str:
    """The record key of the supervised reference trained on the ``tag`` subset alone: ``supervised_10pct``."""
    return f"supervised_{tag}"


@torch.no_grad()
def pixel_features(dataset: Dataset, batch_size: int = 1024, num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """``(features (N, C·H·W) float32, labels (N,))``: each transformed image flattened."""
    features, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        features.append(images.flatten(1).float())
        labels.append(torch.as_tensor(targets).long())
    return torch.cat(features), torch.cat(labels)


def _scores(
    features: tuple[Tensor, Tensor, Tensor, Tensor], cfg: Config, num_classes: int,
    subsets: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """kNN and the fast linear probe (``dimcl linear``'s defaults) of one set of features, and their
    diversity on the first ``eval.diagnose_images`` evaluation images (the batch the run diagnostics use);
    with ``subsets`` (tag: indices of the bank), the probe trained on each subset's rows alone as well."""
    knn = knn_of_features(*features, cfg, num_classes)
    linear = train_linear_probe(*features, num_classes, epochs=100, seed=0, **FAST)
    diversity = diversity_report(features[2][: cfg.eval.diagnose_images])
    scores = {
        "knn_top1": knn["knn_top1"], "knn_top5": knn["knn_top5"],
        "linear_top1": linear["top1"], "linear_top5": linear["top5"], "num_features": int(features[0].shape[1]),
        "effective_rank": diversity["effective_rank"], "mean_abs_corr": diversity["mean_abs_corr"],
    }
    for tag, indices in (subsets or {}).items():
        rows = torch.as_tensor(indices)
        few = train_linear_probe(features[0][rows], features[1][rows], *features[2:], num_classes,
                                 epochs=100, seed=0, **FAST)
        scores[f"linear_{tag}_top1"], scores[f"linear_{tag}_top5"] = few["top1"], few["top5"]
    return scores


def _few_label_supervised(
    cfg: Config, splits: Any, indices: list[int], eval_set: Dataset, num_classes: int, steps: int,
    device: Any, log: Callable[[str], None],
) -> dict[str, Any]:
    """The ``supervised_<tag>`` row: trained on ``indices`` of the labelled training split alone, scored by
    its own classifier on ``eval_set``."""
    batch_size = min(FEW_LABELS["batch_size"], len(indices))
    dataset = labelled_only(augmented_train_set(splits, indices))
    epochs = max(1, round(steps / (len(dataset) // batch_size)))
    backbone, head, trained = fit_supervised(cfg, dataset, num_classes, epochs=epochs, batch_size=batch_size,
                                             device=device, log=log, name=f"supervised on {len(indices)} labels")
    loader = DataLoader(eval_set, batch_size=512, num_workers=cfg.data.num_workers)
    features, labels = extract_features(backbone, loader, device)
    with torch.no_grad():
        top1, top5 = accuracy(head(features.to(device)), labels.to(device))
    return {"head_top1": top1, "head_top5": top5, **trained}


def _backbone_features(backbone: nn.Module, datasets: tuple[Dataset, Dataset], cfg: Config, device: Any) -> tuple:
    loaders = [DataLoader(d, batch_size=512, num_workers=cfg.data.num_workers) for d in datasets]
    return (*extract_features(backbone, loaders[0], device), *extract_features(backbone, loaders[1], device))


def baselines(
    cfg: Config,
    device: str | torch.device = "cpu",
    supervised: bool = True,
    log: Callable[[str], None] | None = print,
    labels: tuple[str, ...] | list[str] = (),
    labels_steps: int = FEW_LABELS["steps"],
    ceiling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The rows of the module docstring for ``cfg``'s protocol and seed, as one record; ``labels`` (e.g.
    ``("1%", "10%")``) adds the few-label figures, their ``supervised_<tag>`` rows trained for
    ``labels_steps`` steps (unless not ``supervised``). ``ceiling``: the ``supervised`` row of an earlier
    record of the same seed and protocol (:func:`ceiling_of`), taken as it is instead of trained again."""
    say = log or (lambda _: None)
    if labels_steps < 1:
        raise ConfigError(f"--labels-steps got {labels_steps}; the few-label reference trains at least 1 step")
    budgets = [parse_label_budget(text) for text in labels]
    splits = run_splits(cfg)
    datasets = splits.labelled()
    num_classes = splits.class_count(datasets[0], "baselines")
    subsets = {budget.tag: few_label_indices(datasets[0], budget) for budget in budgets}
    record: dict[str, Any] = {
        "seed": cfg.seed, "protocol": protocol_of(cfg),
        "bank_size": len(datasets[0]), "eval_size": len(datasets[1]),
    }
    if budgets:
        record["few_labels"] = {
            budget.tag: {"labels": budget.text, "labelled_images": len(subsets[budget.tag]), "labels_seed": LABELS_SEED}
            for budget in budgets
        }
    say(f"raw pixels: kNN and linear probe on {len(datasets[0])} / {len(datasets[1])} images")
    pixels = (*pixel_features(datasets[0]), *pixel_features(datasets[1]))
    record["raw_pixels"] = _scores(pixels, cfg, num_classes, subsets)

    say("random-init backbone")
    torch.manual_seed(cfg.seed)
    backbone = build_backbone_from_config(cfg).to(device)
    record["random_init"] = _scores(_backbone_features(backbone, datasets, cfg, device), cfg, num_classes, subsets)

    if supervised:
        if ceiling is not None:
            say(f"supervised backbone: the ceiling of {ceiling.get('from', 'an earlier record')}")
            record["supervised"] = dict(ceiling)
        else:
            record["supervised"] = _supervised_ceiling(cfg, datasets, num_classes, device, say)
        for tag, indices in subsets.items():
            say(f"supervised backbone on the {len(indices)} images of {record['few_labels'][tag]['labels']} of "
                f"the labels, {labels_steps} steps")
            record[few_label_row(tag)] = _few_label_supervised(
                cfg, splits, indices, datasets[1], num_classes, labels_steps, device, say)
    return record


def _supervised_ceiling(
    cfg: Config, datasets: tuple[Dataset, Dataset], num_classes: int, device: str | torch.device,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The ``supervised`` row: the backbone trained with labels for the config's epochs, its features scored,
    and its own classifier's top-1 when the evaluation classes are ones it was trained on."""
    say(f"supervised backbone: {cfg.trainer.max_epochs} epochs with labels")
    backbone, head, trained = train_supervised(cfg, device, log=say)
    features = _backbone_features(backbone, datasets, cfg, device)
    row = {**_scores(features, cfg, num_classes), **trained}
    if cfg.eval.classes is None or cfg.data.classes is None or set(cfg.eval.classes) <= set(cfg.data.classes):
        with torch.no_grad():
            predictions = head(features[2].to(device)).argmax(1).cpu()
        row["head_top1"] = 100.0 * int((predictions == features[3]).sum()) / len(predictions)
    return row


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


def ceiling_of(folder: str | Path, cfg: Config) -> dict[str, Any]:
    """The supervised row of ``folder/baselines.json``'s record of ``cfg``'s seed and protocol, with the path it
    came from as ``"from"`` (kept when the row was itself lent by another folder); a
    :class:`~dimcl.config.ConfigError` naming what is missing when there is none."""
    path = Path(folder) / BASELINES
    protocol = protocol_of(cfg)
    for r in read_baselines(folder):
        if r.get("seed") == cfg.seed and r.get("protocol") == protocol and "supervised" in r:
            return {**r["supervised"], "from": r["supervised"].get("from", str(path))}
    raise ConfigError(f"'{path}' holds no supervised ceiling of seed {cfg.seed} for this protocol "
                      f"({json.dumps(protocol, sort_keys=True)}); compute it there, or leave out --ceiling-from")


def has_baselines(
    folder: str | Path, cfg: Config, supervised: bool = True, labels: tuple[str, ...] | list[str] = ()
) -> bool:
    """Whether ``folder/baselines.json`` holds the record of ``cfg``'s seed and protocol (with its supervised
    ceiling when ``supervised``, and the figures of every budget of ``labels``), i.e. whether
    :func:`baselines` would only recompute it."""
    protocol = protocol_of(cfg)
    tags = [parse_label_budget(text).tag for text in labels]

    def complete(r: dict[str, Any]) -> bool:
        wanted = ["supervised", *(few_label_row(t) for t in tags)] if supervised else []
        return all(row in r for row in wanted) and all(t in r.get("few_labels", {}) for t in tags)

    return any(r.get("seed") == cfg.seed and r.get("protocol") == protocol and complete(r)
               for r in read_baselines(folder))


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
