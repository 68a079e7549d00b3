"""The report's per-epoch plots: one PNG per method and figure, a line per configuration (mean over seeds,
a band of ± one std)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from dimcl.report.runs import Group, format_value
from dimcl.report.stats import mean_std

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


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
        detail = group.label.removeprefix(f"method.name={format_value(group.method)}, ")
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


def plots_markdown(groups: list[Group], folder: Path) -> list[str]:
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
