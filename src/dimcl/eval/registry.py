"""The one table of evaluations: what a finished run is evaluated with, and everything the rest of dimcl
needs to know of each.

An evaluation registers itself next to its definition (``register(Evaluation(...))`` in its own module);
the ``dimcl`` command (one subcommand each), sweeps (a post-training stage each), reports (their columns,
which of them are compared with paired intervals) and the docs read this table instead of naming the
evaluations. Running one goes through :func:`dimcl.eval.evaluate.evaluate`, which does what every
evaluation needs alike: the run directory's lock, loading the run's config and splits, the label check,
and writing the result file.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from dimcl.config import Config
    from dimcl.data import RunSplits


@dataclass(frozen=True)
class Column:
    """A figure of an evaluation's result file that reports show."""

    key: str
    title: str
    decimals: int
    #: compared between +DimCL and its baseline with a paired interval
    compared: bool = False
    #: also recorded per epoch in ``metrics.jsonl`` (the report falls back to the last epoch's value)
    per_epoch: bool = False


@dataclass
class RunToEvaluate:
    """What :func:`~dimcl.eval.evaluate.evaluate` hands an evaluation: the run, read once."""

    #: what the user gave: a run directory, or a checkpoint / backbone file inside one
    path: Path
    run_dir: Path
    cfg: Config
    splits: RunSplits
    #: (labelled training images, evaluation images) with the evaluation transform
    labelled: tuple[Dataset, Dataset]
    #: None when the training split has no labels
    num_classes: int | None
    #: where the result file and any other output go (the run directory unless ``--out``)
    out_dir: Path
    #: the feature cache (``<run>/features``); None when the run directory is read-only
    cache_dir: Path | None


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: ``dimcl <name> --ckpt RUN`` writes ``<out>/<file>``."""

    name: str
    file: str
    #: where it stands in the table (and so in reports, sweeps and ``dimcl --help``): lowest first
    order: int
    #: one line for ``dimcl --help`` and a paragraph for ``dimcl <name> --help``
    help: str
    description: str
    #: ``run(run, device=..., **options) -> result``: the options are the ones ``add_arguments`` adds
    run: Callable[..., dict[str, Any]]
    #: the figures of ``file`` that reports show, in table order; the first is the headline (``sweep.json``)
    columns: tuple[Column, ...]
    needs_labels: bool = True
    #: it writes into the run directory besides ``--out`` (a feature cache)
    uses_run_dir: bool = False
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    #: sweeps: the grid file's switch for this stage (``linear: true``) and its default, and grid keys
    #: passed on as options (``{"diagnose_images": "num_images"}``)
    grid_flag: str | None = None
    grid_default: bool = False
    grid_options: dict[str, str] = field(default_factory=dict)
    #: grid keys of ``grid_options`` that take one of these words instead of a positive int
    #: (``{"embedding": ("tsne", "umap")}``)
    grid_choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the other files it writes beside its result file (plots): dimcl's own when a run starts over
    outputs: tuple[str, ...] = ()
    #: a ``dimcl <name>`` command of its own; False for a variant reached through another's options (the
    #: 1% linear probe is ``dimcl linear --labels 1%``), which is still a sweep stage and report columns
    command: bool = True
    #: the result file for the given options when they change it (``--labels 10%`` -> ``linear_10pct.json``);
    #: such files match :attr:`file_pattern`
    file_for: Callable[[dict[str, Any]], str] | None = None

    @property
    def figures(self) -> tuple[str, ...]:
        return tuple(column.key for column in self.columns)

    def result_file(self, options: dict[str, Any]) -> str:
        """The file a run with ``options`` writes: :attr:`file`, unless ``file_for`` names another."""
        return self.file_for(options) if self.file_for is not None else self.file

    @property
    def file_pattern(self) -> str:
        """A glob of every result file this evaluation may write (``linear*.json``)."""
        stem, dot, suffix = self.file.rpartition(".")
        return f"{stem}*{dot}{suffix}" if self.file_for is not None else self.file


#: every evaluation, by ``order``: the order of the report's columns
EVALUATIONS: dict[str, Evaluation] = {}


def register(evaluation: Evaluation) -> Evaluation:
    """Add ``evaluation`` to :data:`EVALUATIONS` (a name registered twice is a bug)."""
    if evaluation.name in EVALUATIONS:
        raise RuntimeError(f"evaluation '{evaluation.name}' is registered twice")
    ordered = sorted([*EVALUATIONS.values(), evaluation], key=lambda e: e.order)
    EVALUATIONS.clear()
    EVALUATIONS.update((e.name, e) for e in ordered)
    return evaluation


def labels_variant(evaluation: Evaluation, labels: str, tag: str, order: int) -> Evaluation:
    """``evaluation`` with ``labels`` (its ``--labels`` option, e.g. ``"10%"``) fixed, as a table entry of its
    own: ``<name>_<tag>`` writes ``<name>_<tag>.json`` (the file ``dimcl <name> --labels <labels>`` writes)
    with the figures ``<name>_<tag>_*``, a sweep stage (``<name>_<tag>: true``) and report columns, reached on
    the command line through ``dimcl <name> --labels``."""
    name = f"{evaluation.name}_{tag}"
    columns = tuple(
        replace(c, key=name + c.key.removeprefix(evaluation.name), title=f"{labels} labels: {c.title}", per_epoch=False)
        for c in evaluation.columns
    )
    return replace(
        evaluation, name=name, file=f"{name}.json", order=order, columns=columns, command=False, file_for=None,
        run=partial(evaluation.run, labels=labels), grid_flag=name, grid_default=False,
        help=f"{evaluation.help}, with {labels} of the labels", grid_options={},
    )


def unregister(name: str) -> None:
    """Remove an evaluation (for tests that register one of their own)."""
    del EVALUATIONS[name]


def columns() -> tuple[Column, ...]:
    """Every evaluation's columns, in table order."""
    return tuple(column for evaluation in EVALUATIONS.values() for column in evaluation.columns)
