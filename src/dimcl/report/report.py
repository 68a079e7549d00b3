"""A Markdown report, with plots, of the run directories under a folder (a sweep, or any tree of runs).

Only what run directories hold is read: ``config.yaml``, ``metrics.jsonl`` and, when present, ``knn.json``,
``linear.json`` and ``diversity.json`` (and the embedding map it records, shown per group); and the folder's
``baselines.json`` (floors and ceiling, ``dimcl baselines``) when it has one. Runs are grouped by their
experiment without ``seed`` (:func:`dimcl.experiment.experiment_of`, the identity resume and sweeps use
too); a key missing from a config saved by an older dimcl counts as its default, as when a run is resumed.
For every group the report gives mean ± sample standard deviation over seeds; for every +DimCL group (λ > 0)
with a matching baseline (λ = 0, same configuration apart from ``dimcl.*``) it gives the paired difference
over seeds, ``d_s = figure(+DimCL, seed s) - figure(base, seed s)``, with the 95% confidence interval
``mean(d) ± t(0.975, n - 1) · sd(d) / sqrt(n)`` of Student's t distribution.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dimcl.baselines import ROWS as BASELINE_ROWS
from dimcl.baselines import few_label_row, read_baselines
from dimcl.errors import BadInputError
from dimcl.experiment import experiment_of
from dimcl.report.plots import embedding_markdown, plots_markdown
from dimcl.report.runs import (
    Comparison,
    Group,
    Run,
    compare_groups,
    compared,
    figures,
    first_by_seed,
    format_value,
    group_runs,
    load_runs,
)
from dimcl.report.stats import mean_std, paired_interval, t_quantile_975
from dimcl.run_dir import BASELINES

__all__ = [
    "Comparison",
    "Group",
    "Run",
    "build_report",
    "compare_groups",
    "compared",
    "figures",
    "group_runs",
    "load_runs",
    "mean_std",
    "paired_interval",
    "t_quantile_975",
]


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
    # what else sets this pair apart from the method's other pairs (e.g. trainer.max_epochs=24)
    rest = "".join(f"; {k}={format_value(c[k])}" for k in group.varying if not k.startswith("dimcl.") and k in c)
    return f"λ={format_value(c.get('dimcl.weight'))}, τ={format_value(c.get('dimcl.temperature'))}, {mode}{rest}"


def _summary_table(comparisons: list[Comparison]) -> list[str]:
    """One row per +DimCL configuration and its baseline: each compared figure as base -> +DimCL (means
    over the paired seeds) and the paired difference with its 95% interval."""
    pairs: dict[tuple[str, str], dict[str, Comparison]] = {}
    for c in comparisons:
        pairs.setdefault((c.dimcl.label, c.base.label), {})[c.figure] = c
    if not pairs:
        return []
    decimals_of = {key: decimals for key, _, decimals in figures()}
    titles = {key: title for key, title, _ in figures()}
    shown = [f for f in compared() if any(f in by_figure for by_figure in pairs.values())]
    header = ["method", "+DimCL", "seeds", *(f"{titles[f]}: base → +DimCL, Δ [95% CI]" for f in shown)]
    lines = ["## Summary: +DimCL against its baseline", "",
             "Means over the seeds both configurations have; Δ is the mean paired difference (+DimCL − base) "
             "with its 95% confidence interval (details below).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for by_figure in pairs.values():
        first = next(iter(by_figure.values()))
        cells = []
        for f in shown:
            c = by_figure.get(f)
            if c is None:
                cells.append("–")
                continue
            d = decimals_of[f]
            with_dimcl, without = first_by_seed(c.dimcl, f), first_by_seed(c.base, f)
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
        described = ", ".join(f"`{k}={format_value(v)}`" for k, v in protocol.items() if v is not None)
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
        lent = [r for r in records if "from" in r.get("supervised", {})]
        if lent:
            sources = ", ".join(f"`{s}`" for s in sorted({r["supervised"]["from"] for r in lent}))
            lines += [f"The supervised ceiling of seed(s) {_seeds_text([r.get('seed') for r in lent])} is the one "
                      f"of {sources}: the same protocol and seeds, not trained again "
                      "(`dimcl baselines --ceiling-from`).", ""]
        lines += _few_label_baselines(records)
    return lines


def _few_label_baselines(records: list[dict[str, Any]]) -> list[str]:
    """The few-label rows of one protocol's records (``dimcl baselines --labels``): the floors' linear probe
    trained on each subset, and the backbone trained on each subset alone (its own classifier)."""
    budgets: dict[str, dict[str, Any]] = {}
    for record in records:
        for tag, budget in record.get("few_labels", {}).items():
            budgets.setdefault(tag, budget)
    if not budgets:
        return []
    order = sorted(budgets, key=lambda tag: budgets[tag]["labelled_images"])
    header = " | ".join(f"{budgets[t]['labels']} labels ({budgets[t]['labelled_images']} images): top-1 (%)"
                        for t in order)
    lines = ["With few labels (`dimcl baselines --labels`; the class-balanced images of `dimcl linear --labels`): "
             "the floors' linear probe trained on the subset alone, and the backbone trained from random weights "
             "on the subset alone, scored by its own classifier (the reference of fine-tuning with those labels).",
             "", f"| reference | seeds | {header} |", "|---|---|" + "---|" * len(order)]
    def figure(record: dict[str, Any], row: str, tag: str) -> float | None:
        if row == "supervised":  # the backbone trained on the subset alone, its own classifier
            return record.get(few_label_row(tag), {}).get("head_top1")
        return record.get(row, {}).get(f"linear_{tag}_top1")

    titles = {**BASELINE_ROWS, "supervised": "supervised on the subset alone (ceiling)"}
    for row, title in titles.items():
        having = [r for r in records if any(figure(r, row, t) is not None for t in order)]
        if not having:
            continue
        cells = []
        for tag in order:
            values = [v for v in (figure(r, row, tag) for r in having) if v is not None]
            cells.append(_cell((*mean_std(values), len(values)), 2, len(having)) if values else "–")
        lines.append(f"| {title} | {_seeds_text([r.get('seed') for r in having])} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def build_report(
    sweep_dir: str | Path, out_path: str | Path | None = None, include_unfinished: bool = False,
    beside: Sequence[str | Path] = (),
) -> str:
    """Write the Markdown report of the runs under ``sweep_dir`` to ``out_path`` and return it.

    Runs that have not reached their ``trainer.max_epochs`` are left out (and named in the notes) unless
    ``include_unfinished``. The runs under each folder of ``beside`` that are arms of ``sweep_dir``'s (the same
    method, and its baseline or the same ``dimcl.*`` setting: an ablation of another temperature is left out)
    join the tables and plots as groups of their own (e.g. the 8-epoch cells next to the 24-epoch ones: the
    groups' labels say what differs, and each +DimCL group is paired with the baseline of its own
    configuration); the floors and ceiling stay ``sweep_dir``'s.

    ``out_path`` defaults to ``<sweep_dir>/report.md``; the PNG plots (``knn_top1_<method>.png``, and
    ``effective_rank_<method>.png`` when the metrics hold ``backbone_effective_rank``) go next to it, and so do
    copies of the embedding maps it shows (``embedding_<map method>_<method>_<k>.png``).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise BadInputError(f"'{sweep_dir}' is not a folder; give the folder that holds the run directories")
    out_path = Path(out_path) if out_path is not None else sweep_dir / "report.md"
    if out_path.parent.exists() and not out_path.parent.is_dir():
        raise BadInputError(f"--out '{out_path}': '{out_path.parent}' is a file, not a folder")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runs, notes = load_runs(sweep_dir, include_unfinished)
    where = f"{len(runs)} run(s) under `{sweep_dir}`"
    arms = {_arm(run) for run in runs}
    for folder in beside:
        if not Path(folder).is_dir():
            raise BadInputError(f"--beside '{folder}' is not a folder; give a folder that holds run directories")
        others, other_notes = load_runs(folder, include_unfinished)
        kept = [run for run in others if _arm(run) in arms]
        runs += kept
        notes += other_notes
        where += f" and {len(kept)} of the same arms under `{folder}`"
    groups = group_runs(runs)
    lines = [
        "# DimCL report",
        "",
        f"{where} in {len(groups)} configuration(s). Figures are the final ones "
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
    lines += _runs_table(groups)
    lines += plots_markdown(groups, out_path.parent)
    lines += embedding_markdown(groups, out_path.parent)
    lines += _notes(groups, notes)
    markdown = "\n".join(lines).rstrip() + "\n"
    out_path.write_text(markdown)
    return markdown


def _arm(run: Run) -> tuple:
    """What a run is an arm of: its method and the ``dimcl.*`` keys of its experiment
    (:func:`~dimcl.experiment.experiment_of`: with λ = 0 only λ, so every baseline of a method is one arm)."""
    experiment = experiment_of(run.config)
    return run.method, tuple(sorted((k, repr(v)) for k, v in experiment.items() if k.startswith("dimcl.")))


def _groups_table(groups: list[Group]) -> list[str]:
    """Every configuration's figures, mean ± std over its seeds (only the figures some group has)."""
    lines: list[str] = []
    shown = [(key, title, decimals) for key, title, decimals in figures() if any(g.values(key) for g in groups)]
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


def _runs_table(groups: list[Group]) -> list[str]:
    """Every run's own figures, by configuration and seed, and its training time (the sum of its epochs'
    ``epoch_time_s``: a run resumed from a checkpoint counts each epoch once)."""
    runs = [(group, run) for group in groups for run in group.runs]
    if not runs:
        return []
    shown = [(key, title, decimals) for key, title, decimals in figures() if any(key in r.figures for _, r in runs)]
    header = ["configuration", "seed", *(title for _, title, _ in shown), "training (s)"]
    lines = ["## Every run", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, run in runs:
        times = [r["epoch_time_s"] for r in run.metrics if isinstance(r.get("epoch_time_s"), int | float)]
        cells = [f"{run.figures[key]:.{decimals}f}" if key in run.figures else "–" for key, _, decimals in shown]
        cells.append(f"{sum(times):.0f}" if times else "–")
        lines.append(f"| {group.label} | {run.seed} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _paired_table(comparisons: list[Comparison], groups: list[Group]) -> list[str]:
    """+DimCL − base per figure, paired by seed, with the 95% interval."""
    lines: list[str] = []
    if comparisons:
        decimals_of = {key: decimals for key, _, decimals in figures()}
        titles = {key: title for key, title, _ in figures()}
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
