"""The run directories a report reads, grouped into experiments over seeds and compared (+DimCL against its
baseline, paired by seed); the report's columns come from :data:`~dimcl.eval.EVALUATIONS`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dimcl.errors import BadInputError
from dimcl.eval import EVALUATIONS
from dimcl.eval.registry import columns as evaluation_columns
from dimcl.experiment import experiment_of, flatten_with_defaults
from dimcl.report.stats import mean_std, paired_interval
from dimcl.run_dir import CONFIG, METRICS, reached_max_epochs, read_metrics, read_result
from dimcl.yaml_files import read_yaml


def figures() -> tuple[tuple[str, str, int], ...]:
    """(key, column title, decimals) of the figures reported per group, in table order: every evaluation's
    columns (read from :data:`~dimcl.eval.EVALUATIONS` when a report is made, so a registered one shows)."""
    return tuple((c.key, c.title, c.decimals) for c in evaluation_columns())


def compared() -> tuple[str, ...]:
    """The figures compared between +DimCL and its baseline, with paired intervals."""
    return tuple(c.key for c in evaluation_columns() if c.compared)


def _per_epoch() -> tuple[str, ...]:
    """The figures also recorded per epoch (a run without the evaluation's file shows its last epoch's)."""
    return tuple(c.key for c in evaluation_columns() if c.per_epoch)


def _flatten(mapping: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys with lists made tuples, so values are hashable; the keys a config saved by an older dimcl
    lacks at their defaults (:func:`dimcl.experiment.flatten_with_defaults`), so its runs group with newer ones."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in flatten_with_defaults(mapping).items()}


@dataclass
class Run:
    """One run directory: its flattened config, per-epoch metrics and final figures."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    figures: dict[str, float]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def method(self) -> str:
        return str(self.config.get("method.name", "?"))

    @property
    def dimcl_weight(self) -> float:
        return float(self.config.get("dimcl.weight", 0.0))


def _final_figures(run_dir: Path, metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Final kNN (``knn.json`` over the last epoch's), linear and diversity figures (``diversity.json``
    over the last epoch's per-epoch diagnostics)."""
    figures: dict[str, float] = {}
    for record in metrics:  # the last epoch that has each key
        figures.update({k: record[k] for k in _per_epoch() if k in record})
    for evaluation in EVALUATIONS.values():  # a finished run's own evaluation wins over its per-epoch figure
        saved = read_result(run_dir, evaluation.file) or {}
        figures.update({k: saved[k] for k in evaluation.figures if k in saved})
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}


def _unfinished(config: dict[str, Any], metrics: list[dict[str, Any]]) -> str | None:
    """``"epoch k of n"`` when the metrics stop before the (flattened) config's ``trainer.max_epochs``, else
    None. Read from the text records alone: a committed run keeps its metrics and config, not its weights."""
    planned = config.get("trainer.max_epochs")
    if not isinstance(planned, int) or reached_max_epochs(metrics, planned):
        return None
    return f"epoch {metrics[-1]['epoch'] if metrics else 0} of {planned}"


def _non_numeric_figure(metrics: list[dict[str, Any]]) -> str | None:
    """Where a figure the report reads per epoch is not a number (``"epoch 2 has knn_top1='high'"``), else None."""
    for record in metrics:
        for key in _per_epoch():
            value = record.get(key)
            if key in record and (isinstance(value, bool) or not isinstance(value, int | float)):
                return f"epoch {record['epoch']} has {key}={value!r}"
    return None


def load_runs(root: str | Path, include_unfinished: bool = False) -> tuple[list[Run], list[str]]:
    """Every run directory under ``root`` (at any depth; one with a ``config.yaml``), in path order.

    A run whose metrics stop before its ``trainer.max_epochs`` (still training, or stopped) is left out
    unless ``include_unfinished``: its last epoch's figures are not the ones its budget promises.
    Returns ``(runs, notes)``: the notes name directories left out (config unreadable, no metrics,
    unfinished) and unfinished runs kept.
    """
    runs, notes = [], []
    for config_path in sorted(Path(root).rglob(CONFIG)):
        run_dir = config_path.parent
        try:
            config = read_yaml(config_path, CONFIG)
        except BadInputError as err:
            notes.append(f"`{run_dir}` skipped: {err}")
            continue
        if not isinstance(config, dict):
            notes.append(f"`{run_dir}` skipped: its {CONFIG} is not a mapping")
            continue
        if not (run_dir / METRICS).is_file():
            notes.append(f"`{run_dir}` skipped: it has a {CONFIG} but no {METRICS} (not a run, or not one epoch yet)")
            continue
        try:
            metrics = read_metrics(run_dir)
        except BadInputError as err:
            notes.append(f"`{run_dir}` skipped: {err}")
            continue
        odd = _non_numeric_figure(metrics)
        if odd:
            notes.append(f"`{run_dir}` skipped: its {METRICS} {odd}, not a number")
            continue
        config = _flatten(config)
        unfinished = _unfinished(config, metrics)
        if unfinished and not include_unfinished:
            notes.append(f"`{run_dir}` left out: unfinished ({unfinished}; `--include-unfinished` shows it)")
            continue
        if unfinished:
            notes.append(f"`{run_dir}` is unfinished ({unfinished}): its figures are its last epoch's")
        runs.append(Run(run_dir, config, metrics, _final_figures(run_dir, metrics)))
    return runs, notes


@dataclass
class Group:
    """Runs of the same experiment apart from the seed (:func:`dimcl.experiment.experiment_of`)."""

    config: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    label: str = ""
    #: the keys (other than the method's name and λ) in which the groups of its method differ
    varying: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return str(self.config.get("method.name", "?"))

    @property
    def dimcl_weight(self) -> float:
        return float(self.config.get("dimcl.weight", 0.0))

    def values(self, figure: str) -> list[float]:
        return [run.figures[figure] for run in self.runs if figure in run.figures]

    def summary(self, figure: str) -> tuple[float, float | None, int] | None:
        """``(mean, sample std or None, n)`` of a figure over the group's runs; None if no run has it."""
        values = self.values(figure)
        if not values:
            return None
        mean, std = mean_std(values)
        return mean, std, len(values)


def format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _seed_order(seed: Any) -> tuple:
    # Numeric seeds in numeric order (2 before 10); anything else after them, by its text.
    is_number = isinstance(seed, int | float) and not isinstance(seed, bool)
    return (0, seed, "") if is_number else (1, 0, repr(seed))


def group_runs(runs: list[Run]) -> list[Group]:
    """Group by configuration minus seed; labels show ``method.name``, ``dimcl.weight`` and the keys in
    which the groups of the same method differ (the method's recipe differences go without saying).

    Groups are ordered by method, then λ; runs in a group by seed.
    """
    by_key: dict[tuple, Group] = {}
    for run in runs:
        config = experiment_of(run.config, across_seeds=True)
        key = tuple(sorted((k, repr(v)) for k, v in config.items()))
        if key not in by_key:
            by_key[key] = Group(config)
        by_key[key].runs.append(run)
    groups = list(by_key.values())
    for method in {g.method for g in groups}:
        of_method = [g for g in groups if g.method == method]
        keys = sorted({k for g in of_method for k in g.config} - {"method.name", "dimcl.weight"})
        # Among the groups that have the key: baselines have no dimcl.temperature to differ in.
        varying = [k for k in keys if len({repr(g.config[k]) for g in of_method if k in g.config}) > 1]
        for group in of_method:
            group.varying = tuple(varying)
            group.runs.sort(key=lambda r: (_seed_order(r.seed), str(r.path)))
            group.label = ", ".join(
                f"{k}={format_value(group.config[k])}"
                for k in ["method.name", "dimcl.weight", *varying]
                if k in group.config
            )
    groups.sort(key=lambda g: (g.method, g.dimcl_weight, g.label))
    return groups


@dataclass
class Comparison:
    """+DimCL minus its baseline for one figure, paired by seed."""

    method: str
    dimcl: Group
    base: Group
    figure: str
    seeds: list[Any]
    differences: list[float]
    mean: float
    interval: tuple[float, float] | None  # None with a single pair


def first_by_seed(group: Group, figure: str) -> dict[str, Run]:
    out: dict[str, Run] = {}
    for run in group.runs:  # sorted by seed, then path: the first of duplicate seeds wins
        if figure in run.figures:
            out.setdefault(repr(run.seed), run)
    return out


def compare_groups(groups: list[Group], figures: tuple[str, ...] | None = None) -> list[Comparison]:
    """Every +DimCL group (λ > 0) against the baseline group (λ = 0) whose config equals it apart from
    ``dimcl.*``; runs are paired by equal seed, unpaired seeds left out. ``figures``: default :func:`compared`."""
    figures = compared() if figures is None else figures
    comparisons = []
    for dimcl in groups:
        if dimcl.dimcl_weight <= 0:
            continue
        rest = {k: v for k, v in dimcl.config.items() if not k.startswith("dimcl.")}
        for base in groups:
            if base.dimcl_weight != 0 or {k: v for k, v in base.config.items() if not k.startswith("dimcl.")} != rest:
                continue
            for figure in figures:
                with_dimcl, without = first_by_seed(dimcl, figure), first_by_seed(base, figure)
                seeds = [s for s in with_dimcl if s in without]
                if not seeds:
                    continue
                differences = [with_dimcl[s].figures[figure] - without[s].figures[figure] for s in seeds]
                mean, interval = paired_interval(differences)
                comparisons.append(Comparison(
                    dimcl.method, dimcl, base, figure, [with_dimcl[s].seed for s in seeds], differences, mean,
                    interval,
                ))
    return comparisons
