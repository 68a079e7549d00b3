"""A Markdown report, with plots, of the run directories under a folder (a sweep, or any tree of runs).

Only what run directories hold is read: ``config.yaml``, ``metrics.jsonl`` and, when present,
``knn.json``, ``linear.json`` and ``diversity.json``; and the folder's ``baselines.json`` (floors and
ceiling, ``dimcl baselines``) when it has one. Runs are grouped by their experiment without ``seed``
(:func:`dimcl.experiment.experiment_of`, the identity resume and sweeps use too); a key missing from
a config saved by an older dimcl counts as its default, as when a run is resumed. For every group
the report gives mean ± sample standard deviation over seeds; for every +DimCL group (λ > 0) with a
matching baseline (λ = 0, same configuration apart from ``dimcl.*``) it gives the paired difference
over seeds, ``d_s = figure(+DimCL, seed s) - figure(base, seed s)``, with the 95% confidence interval
``mean(d) ± t(0.975, n - 1) · sd(d) / sqrt(n)`` of Student's t distribution.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dimcl.baselines import ROWS as BASELINE_ROWS
from dimcl.baselines import read_baselines
from dimcl.errors import BadInputError
from dimcl.eval import EVALUATIONS
from dimcl.experiment import experiment_of, flatten_with_defaults
from dimcl.run_dir import BASELINES, CONFIG, METRICS, reached_max_epochs, read_metrics, read_result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Comparison",
    "Group",
    "Run",
    "build_report",
    "compare_groups",
    "group_runs",
    "load_runs",
    "mean_std",
    "paired_interval",
    "t_quantile_975",
]

#: (key, column title, decimals) of the figures reported per group, in table order
FIGURES = (
    ("knn_top1", "kNN top-1 (%)", 2),
    ("linear_top1", "linear top-1 (%)", 2),
    ("backbone_effective_rank", "backbone eff. rank", 1),
    ("backbone_mean_abs_corr", "backbone mean abs corr", 3),
    ("backbone_collapsed_dims", "backbone collapsed dims", 1),
    ("projector_effective_rank", "projector eff. rank", 1),
    ("projector_mean_abs_corr", "projector mean abs corr", 3),
    ("projector_collapsed_dims", "projector collapsed dims", 1),
)
#: the figures compared between +DimCL and its baseline
COMPARED = ("knn_top1", "linear_top1", "backbone_effective_rank")
_DIVERSITY_KEYS = EVALUATIONS["analyze"].figures

# t(0.975, dof) for dof = 1..30: two-sided 95% quantiles of Student's t distribution.
_T_975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
    2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
    2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
    2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)
_Z_975 = 1.959963984540054


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (the 95% two-sided multiplier).

    Tabulated for 1..30; above, the Cornish-Fisher expansion around the normal quantile ``z``
    (Abramowitz & Stegun 26.7.5), within 1e-7 of the exact value for dof > 30.
    """
    if dof < 1:
        raise ValueError(f"t_quantile_975(): need at least 1 degree of freedom, got {dof}")
    if dof <= len(_T_975):
        return _T_975[dof - 1]
    z, n = _Z_975, float(dof)
    return (
        z
        + (z**3 + z) / (4 * n)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * n**4)
    )


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (divisor n - 1) of ``values``; the std is None for one value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std(): no values")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def paired_interval(differences: list[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean of paired differences and its 95% t interval ``mean ± t(0.975, n-1) sd / sqrt(n)``; None if n = 1."""
    mean, sd = mean_std(differences)
    if sd is None:
        return mean, None
    half = t_quantile_975(len(differences) - 1) * sd / math.sqrt(len(differences))
    return mean, (mean - half, mean + half)


# ---------------------------------------------------------------------------------------- run dirs


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
        figures.update({k: record[k] for k in ("knn_top1", *_DIVERSITY_KEYS) if k in record})
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
            config = yaml.safe_load(config_path.read_text())
        except (OSError, yaml.YAMLError) as err:
            notes.append(f"`{run_dir}` skipped: its {CONFIG} is unreadable ({type(err).__name__})")
            continue
        if not isinstance(config, dict):
            notes.append(f"`{run_dir}` skipped: its {CONFIG} is not a mapping")
            continue
        if not (run_dir / METRICS).is_file():
            notes.append(f"`{run_dir}` skipped: it has a {CONFIG} but no {METRICS} (not a run, or not one epoch yet)")
            continue
        metrics, config = read_metrics(run_dir), _flatten(config)
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


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
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
            group.runs.sort(key=lambda r: (_seed_order(r.seed), str(r.path)))
            group.label = ", ".join(
                f"{k}={_format_value(group.config[k])}"
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


def _first_by_seed(group: Group, figure: str) -> dict[str, Run]:
    out: dict[str, Run] = {}
    for run in group.runs:  # sorted by seed, then path: the first of duplicate seeds wins
        if figure in run.figures:
            out.setdefault(repr(run.seed), run)
    return out


def compare_groups(groups: list[Group], figures: tuple[str, ...] = COMPARED) -> list[Comparison]:
    """Every +DimCL group (λ > 0) against the baseline group (λ = 0) whose config equals it apart from
    ``dimcl.*``; runs are paired by equal seed, unpaired seeds left out."""
    comparisons = []
    for dimcl in groups:
        if dimcl.dimcl_weight <= 0:
            continue
        rest = {k: v for k, v in dimcl.config.items() if not k.startswith("dimcl.")}
        for base in groups:
            if base.dimcl_weight != 0 or {k: v for k, v in base.config.items() if not k.startswith("dimcl.")} != rest:
                continue
            for figure in figures:
                with_dimcl, without = _first_by_seed(dimcl, figure), _first_by_seed(base, figure)
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


# ------------------------------------------------------------------------------------------- plots


def _epoch_curve(group: Group, key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std (0 for one run) over the group's runs of a per-epoch metric."""
    per_epoch: dict[int, list[float]] = {}
    for run in group.runs:
        for record in run.metrics:
            if key in record:
                per_epoch.setdefault(int(record["epoch"]), []).append(float(record[key]))
    epochs = sorted(per_epoch)
    stats = [mean_std(per_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [s or 0.0 for _, s in stats]


def _epoch_figure(groups: list[Group], key: str, ylabel: str, title: str) -> Figure | None:
    """One line per group (dashed: baseline, solid: +DimCL), a band of ± std over seeds, the legend under
    the axes so that it never hides a line; None if no group has the figure per epoch."""
    # The object-oriented API with the Agg canvas: no pyplot, no global backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = [(g, *_epoch_curve(g, key)) for g in groups]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    # The axes keep their height; each legend entry adds a line of small text (~0.2 in) below them.
    figure = Figure(figsize=(6.4, 3.6 + 0.2 * len(curves)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for group, epochs, means, stds in curves:
        style = "--" if group.dimcl_weight == 0 else "-"
        # The title names the method; the legend says the rest of the group's label.
        detail = group.label.removeprefix(f"method.name={_format_value(group.method)}, ")
        label = ("base" if group.dimcl_weight == 0 else "+DimCL") + f" ({detail}; n={len(group.runs)})"
        (line,) = axes.plot(epochs, means, style, marker="o" if len(epochs) < 20 else None, label=label)
        if any(stds):
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", fontsize="small")
    return figure


def _plot(groups: list[Group], key: str, ylabel: str, title: str, path: Path) -> bool:
    """Write the per-epoch figure of ``key`` to ``path``; False (and no file) if there is no data."""
    figure = _epoch_figure(groups, key, ylabel, title)
    if figure is None:
        return False
    figure.savefig(path, dpi=120)
    return True


# ------------------------------------------------------------------------------------------ report


def _cell(summary: tuple[float, float | None, int] | None, decimals: int, runs: int) -> str:
    if summary is None:
        return "–"
    mean, std, n = summary
    text = f"{mean:.{decimals}f}" if std is None else f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return text if n == runs else f"{text} (n={n})"


def _seeds_text(seeds: list[Any]) -> str:
    return ", ".join(str(s) for s in seeds)


def _dimcl_label(group: Group) -> str:
    c = group.config
    mode = "InfoNCE" if c.get("dimcl.hardness_aware", True) else "uniform"
    return f"λ={_format_value(c.get('dimcl.weight'))}, τ={_format_value(c.get('dimcl.temperature'))}, {mode}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _summary_table(comparisons: list[Comparison]) -> list[str]:
    """One row per +DimCL configuration and its baseline: each compared figure as base -> +DimCL (means
    over the paired seeds) and the paired difference with its 95% interval."""
    pairs: dict[tuple[str, str], dict[str, Comparison]] = {}
    for c in comparisons:
        pairs.setdefault((c.dimcl.label, c.base.label), {})[c.figure] = c
    if not pairs:
        return []
    decimals_of = {key: decimals for key, _, decimals in FIGURES}
    titles = {key: title for key, title, _ in FIGURES}
    figures = [f for f in COMPARED if any(f in by_figure for by_figure in pairs.values())]
    header = ["method", "+DimCL", "seeds", *(f"{titles[f]}: base → +DimCL, Δ [95% CI]" for f in figures)]
    lines = ["## Summary: +DimCL against its baseline", "",
             "Means over the seeds both configurations have; Δ is the mean paired difference (+DimCL − base) "
             "with its 95% confidence interval (details below).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for by_figure in pairs.values():
        first = next(iter(by_figure.values()))
        cells = []
        for f in figures:
            c = by_figure.get(f)
            if c is None:
                cells.append("–")
                continue
            d = decimals_of[f]
            with_dimcl, without = _first_by_seed(c.dimcl, f), _first_by_seed(c.base, f)
            keys = [k for k in with_dimcl if k in without]
            base_mean = sum(without[k].figures[f] for k in keys) / len(keys)
            dimcl_mean = sum(with_dimcl[k].figures[f] for k in keys) / len(keys)
            interval = "" if c.interval is None else f" [{c.interval[0]:+.{d}f}, {c.interval[1]:+.{d}f}]"
            cells.append(f"{base_mean:.{d}f} → {dimcl_mean:.{d}f}, {c.mean:+.{d}f}{interval}")
        lines.append(f"| {first.method} | {_dimcl_label(first.dimcl)} | {_seeds_text(first.seeds)} | "
                     + " | ".join(cells) + " |")
    return [*lines, ""]


def _baselines_table(folder: Path) -> list[str]:
    """The floors and the ceiling of ``folder/baselines.json`` (``dimcl baselines``): one table per protocol,
    mean ± std over the seeds computed."""
    by_protocol: dict[str, list[dict[str, Any]]] = {}
    for record in read_baselines(folder):
        by_protocol.setdefault(json.dumps(record.get("protocol"), sort_keys=True), []).append(record)
    if not by_protocol:
        return []
    lines = ["## Floors and ceiling", "",
             "What the same evaluation gives without self-supervised learning (`dimcl baselines`, "
             f"`{BASELINES}`): the raw pixels, the backbone with random weights, and the backbone trained with "
             "labels for the same epochs on the same images. A learned representation is worth its training "
             "when it beats the floors.", ""]
    for text, records in by_protocol.items():
        protocol = json.loads(text)
        described = ", ".join(f"`{k}={_format_value(v)}`" for k, v in protocol.items() if v is not None)
        sizes = f"kNN bank / evaluation images: {records[0].get('bank_size')} / {records[0].get('eval_size')}"
        lines += [f"Protocol: {described}; {sizes}.", "",
                  "| reference | seeds | kNN top-1 (%) | linear top-1 (%) | its own classifier top-1 (%) |",
                  "|---|---|---|---|---|"]
        for row, title in BASELINE_ROWS.items():
            having = [r for r in records if row in r]  # its own seeds: a ceiling may not be run for all
            if not having:
                continue
            present, seeds = [r[row] for r in having], _seeds_text([r.get("seed") for r in having])
            cells = []
            for key in ("knn_top1", "linear_top1", "head_top1"):
                values = [p[key] for p in present if key in p]
                cells.append(_cell((*mean_std(values), len(values)), 2, len(present)) if values else "–")
            lines.append(f"| {title} | {seeds} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def build_report(
    sweep_dir: str | Path, out_path: str | Path | None = None, include_unfinished: bool = False
) -> str:
    """Write the Markdown report of the runs under ``sweep_dir`` to ``out_path`` and return it.

    Runs that have not reached their ``trainer.max_epochs`` are left out (and named in the notes) unless
    ``include_unfinished``.

    ``out_path`` defaults to ``<sweep_dir>/report.md``; the PNG plots (``knn_top1_<method>.png``, and
    ``effective_rank_<method>.png`` when the metrics hold ``backbone_effective_rank``) go next to it.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise BadInputError(f"'{sweep_dir}' is not a folder; give the folder that holds the run directories")
    out_path = Path(out_path) if out_path is not None else sweep_dir / "report.md"
    if out_path.parent.exists() and not out_path.parent.is_dir():
        raise BadInputError(f"--out '{out_path}': '{out_path.parent}' is a file, not a folder")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runs, notes = load_runs(sweep_dir, include_unfinished)
    groups = group_runs(runs)
    lines = [
        "# DimCL report",
        "",
        f"{len(runs)} run(s) under `{sweep_dir}` in {len(groups)} configuration(s). Figures are the final ones "
        "(offline kNN / linear / diagnostics files when present, else the last epoch's metrics), as mean ± "
        "sample std over seeds; `(n=k)`: only k runs have the figure.",
        "",
    ]
    if not runs:
        lines.append("No run directories (folders with a config.yaml) were found.")

    comparisons = compare_groups(groups)
    lines += _baselines_table(sweep_dir)
    lines += _summary_table(comparisons)
    lines += _groups_table(groups)
    lines += _paired_table(comparisons, groups)
    lines += _plots(groups, out_path.parent)
    lines += _notes(groups, notes)
    markdown = "\n".join(lines).rstrip() + "\n"
    out_path.write_text(markdown)
    return markdown


def _groups_table(groups: list[Group]) -> list[str]:
    """Every configuration's figures, mean ± std over its seeds (only the figures some group has)."""
    lines: list[str] = []
    shown = [(key, title, decimals) for key, title, decimals in FIGURES if any(g.values(key) for g in groups)]
    if groups:
        lines += ["## Results per configuration", ""]
        header = ["configuration", "runs", "seeds", "epochs", *(title for _, title, _ in shown)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for group in groups:
            epochs = sorted({run.metrics[-1]["epoch"] for run in group.runs if run.metrics})
            row = [
                group.label, str(len(group.runs)), _seeds_text([r.seed for r in group.runs]),
                ", ".join(str(e) for e in epochs) or "–",
                *(_cell(group.summary(key), decimals, len(group.runs)) for key, _, decimals in shown),
            ]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def _paired_table(comparisons: list[Comparison], groups: list[Group]) -> list[str]:
    """+DimCL − base per figure, paired by seed, with the 95% interval."""
    lines: list[str] = []
    if comparisons:
        decimals_of = {key: decimals for key, _, decimals in FIGURES}
        titles = {key: title for key, title, _ in FIGURES}
        lines += [
            "## +DimCL − base, paired by seed",
            "",
            "Differences of runs with the same seed and the same configuration apart from `dimcl.*`; 95% "
            "confidence interval `mean ± t(0.975, n−1) · sd / √n` over the n pairs.",
            "",
            "| method | +DimCL | base | figure | pairs (seeds) | Δ mean | 95% CI |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            d = decimals_of[c.figure]
            interval = "n=1, no interval" if c.interval is None else f"[{c.interval[0]:+.{d}f}, {c.interval[1]:+.{d}f}]"
            lines.append(
                f"| {c.method} | {_dimcl_label(c.dimcl)} | {c.base.label} | {titles[c.figure]} | "
                f"{len(c.seeds)} ({_seeds_text(c.seeds)}) | {c.mean:+.{d}f} | {interval} |"
            )
        lines.append("")
    elif groups:
        lines += ["No +DimCL configuration has a baseline (dimcl.weight=0) run with the same seed to pair with.", ""]
    return lines


def _plots(groups: list[Group], folder: Path) -> list[str]:
    """kNN and effective rank per epoch, a PNG per method and figure in ``folder``; their Markdown."""
    plots = []
    for method in sorted({g.method for g in groups}):
        of_method = [g for g in groups if g.method == method]
        for key, ylabel, stem in (
            ("knn_top1", "kNN top-1 (%)", "knn_top1"),
            ("backbone_effective_rank", "backbone effective rank", "effective_rank"),
        ):
            name = f"{stem}_{_safe(method)}.png"
            if _plot(of_method, key, ylabel, f"{method}: {ylabel} per epoch", folder / name):
                plots.append(f"![{method}: {ylabel}]({name})")
    return ["## Per epoch", "", *(f"{p}\n" for p in plots)] if plots else []


def _notes(groups: list[Group], notes: list[str]) -> list[str]:
    """Directories left out, and seeds run twice in one configuration."""
    duplicates = [
        f"`{g.label}` has several runs with seed {s}: the first by path is paired"
        for g in groups
        for s in sorted({repr(r.seed) for r in g.runs})
        if sum(repr(r.seed) == s for r in g.runs) > 1
    ]
    if notes or duplicates:
        return ["## Notes", "", *(f"- {n}" for n in [*notes, *duplicates]), ""]
    return []
