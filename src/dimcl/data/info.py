"""What the library knows about a dataset before opening it: one :class:`DatasetInfo` per registry entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

#: The three splits every dataset serves (see :mod:`dimcl.data.datasets`).
SPLITS = ("pretrain", "train", "eval")

#: ``read(info, root, parts, transform, download) -> Dataset``: the images of ``parts`` (names of the
#: reader's own file groups, e.g. ``("train", "unlabeled")``) concatenated in that order, each item
#: ``(transform(image), label)`` with label -1 where the image has none.
Reader = Callable[["DatasetInfo", Path, tuple[str, ...], Callable[[Any], Any] | None, bool], Dataset]


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: everything the rest of the library needs to know about a dataset.

    ``pretrain_parts``, ``train_parts`` and ``eval_parts`` name the reader's parts each split of
    :data:`SPLITS` concatenates, in order. The pretraining split must start with the parts of the labelled
    training split (checked here), so that the ``data.val_size`` hold-out, drawn by index from the training
    split, applies to the pretraining split unchanged.
    """

    name: str
    image_size: int  # side of the (square) images the recipes train on
    in_channels: int  # 1 (grayscale) or 3 (RGB)
    num_classes: int | None  # None when it depends on the data (image folders)
    mean: tuple[float, ...]  # per-channel normalisation constants, one per input channel
    std: tuple[float, ...]
    default_root: str | None  # where the files are looked for when no root is given
    reader: Reader | None = None  # opens the files (None: a description only, as in tests)
    variable_size: bool = False  # images come in varying sizes: the loader resizes them to one size
    pretrain_parts: tuple[str, ...] = ("train",)  # what self-supervised training sees
    train_parts: tuple[str, ...] = ("train",)  # the labelled training split: kNN bank, linear probe
    eval_parts: tuple[str, ...] = ("test",)  # the evaluation split

    def __post_init__(self) -> None:
        if self.pretrain_parts[: len(self.train_parts)] != self.train_parts:
            raise ValueError(
                f"dataset {self.name}: the pretraining split {self.pretrain_parts} must start with the labelled "
                f"training split {self.train_parts} (data.val_size holds out training images by their index)"
            )

    def parts_of(self, split: str) -> tuple[str, ...]:
        """The reader's parts that make up ``split`` (one of :data:`SPLITS`), in order."""
        return {"pretrain": self.pretrain_parts, "train": self.train_parts, "eval": self.eval_parts}[split]
