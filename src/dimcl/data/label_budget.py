"""Few labels: a class-balanced subset of a labelled split, for ``--labels 1%``, ``--labels 10%`` or
``--labels N`` (N labelled images in all).

The subset is drawn with a seed of its own (:data:`LABELS_SEED` unless asked otherwise), never the run's
seed, so every run and every seed of a study probes, fine-tunes and trains its supervised reference on the
same labelled images. Every class gets ``N // C`` images; the ``N % C`` left over go one each to the
classes of lowest index. Within a class the images are a seeded random draw, returned in index order.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from dimcl.data.subsets import labels_of
from dimcl.errors import ConfigError

#: the few-label subsets are drawn with this seed, whatever the run's seed
LABELS_SEED = 2024


@dataclass(frozen=True)
class LabelBudget:
    """How many labelled images an evaluation may use: a percentage of the split, or a count."""

    #: what the user wrote: "1%", "10%", "600"
    text: str
    percent: float | None = None
    count: int | None = None

    @property
    def tag(self) -> str:
        """The budget in file and figure names: ``1pct``, ``12.5pct``, ``600img``."""
        if self.percent is not None:
            return f"{self.percent:g}pct".replace(".", "_")
        return f"{self.count}img"

    def images_of(self, available: int) -> int:
        """The number of labelled images of a split of ``available`` ones (a percentage rounds to the nearest)."""
        wanted = self.count if self.count is not None else round(available * self.percent / 100)
        if wanted > available:
            raise ConfigError(f"--labels {self.text} asks for {wanted} labelled images and the split has {available}")
        return wanted


def parse_label_budget(text: str) -> LabelBudget:
    """``"1%"``, ``"10%"``, ``"0.5%"`` or ``"600"`` as a :class:`LabelBudget`; anything else is bad input."""
    cleaned = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", cleaned)
    if match and 0 < float(match[1]) <= 100:
        return LabelBudget(cleaned, percent=float(match[1]))
    if re.fullmatch(r"\d+", cleaned) and int(cleaned) > 0:
        return LabelBudget(cleaned, count=int(cleaned))
    raise ConfigError(
        f"--labels '{text}' is neither a percentage in (0, 100] such as 1% or 10% nor a positive count of "
        "labelled images such as 600"
    )


def class_balanced_indices(labels: Tensor, count: int, seed: int = LABELS_SEED) -> list[int]:
    """Sorted indices of ``count`` labelled items of ``labels`` (``(N,)`` int, -1 unlabelled), class-balanced
    as the module docstring says; the same ``labels``, ``count`` and ``seed`` give the same indices."""
    classes = torch.unique(labels[labels >= 0]).tolist()
    if not classes:
        raise ConfigError("a few-label subset needs class labels, and this split has none")
    per_class, extra = divmod(count, len(classes))
    if per_class == 0:
        raise ConfigError(
            f"--labels asks for {count} labelled images, fewer than one per class for the split's {len(classes)} "
            "classes"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for rank, label in enumerate(classes):  # classes in index order: the draw does not depend on dict order
        members = torch.nonzero(labels == label).flatten()
        wanted = per_class + (1 if rank < extra else 0)
        if wanted > len(members):
            raise ConfigError(
                f"--labels asks for {wanted} images of class {label}, and the split has {len(members)} of it; "
                "ask for fewer labels"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:wanted]])
    return torch.cat(chosen).sort().values.tolist()


def few_label_indices(dataset: Dataset, budget: LabelBudget, seed: int = LABELS_SEED) -> list[int]:
    """Indices into ``dataset`` of its class-balanced subset of ``budget`` (of its labelled items)."""
    labels = labels_of(dataset)
    if labels is None:
        raise ConfigError("--labels needs a split whose labels can be read, and this one has none")
    labelled = int((labels >= 0).sum())
    return class_balanced_indices(labels, budget.images_of(labelled), seed)


def few_label_subset(dataset: Dataset, budget: LabelBudget, seed: int = LABELS_SEED) -> Subset:
    """``dataset`` cut to its class-balanced subset of ``budget`` (:func:`few_label_indices`)."""
    return Subset(dataset, few_label_indices(dataset, budget, seed))


def budget_record(budget: LabelBudget | None, used: int, available: int, seed: int = LABELS_SEED) -> dict:
    """What a result records of its labels: the budget asked for, the images used, their fraction and seed."""
    if budget is None:
        return {"labels": "all", "labels_fraction": 1.0, "labelled_images": used}
    return {
        "labels": budget.text, "labels_fraction": used / available if available else math.nan,
        "labelled_images": used, "labels_seed": seed,
    }
