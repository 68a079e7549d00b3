"""The report's plots: per epoch, one PNG per method and figure, a line per configuration (mean over seeds,
a band of ± one std); and each configuration's embedding map (``dimcl analyze --embedding``)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dimcl.eval.diversity import ANALYZE
from dimcl.eval.embedding import EMBEDDINGS
from dimcl.report.runs import Group, Run, format_value
from dimcl.report.stats import mean_std
from dimcl.run_dir import read_result

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


def _first_map(group: Group, method: str) -> tuple[Run, dict[str, Any]] | None:
    """The group's first run, in seed order, whose analyze result records a map made with ``method`` whose
    figure is there; with that record. A map the last ``dimcl analyze`` did not make is not the run's."""
    for run in group.runs:
        made = (read_result(run.path, ANALYZE.file) or {}).get("embedding")
        if isinstance(made, dict) and made.get("method") == method and (run.path / str(made.get("figure"))).is_file():
            return run, made
    return None


def embedding_markdown(groups: list[Group], folder: Path) -> list[str]:
    """Per method and map method, each configuration's map side by side (base first), the first seed's that has
    one, copied into ``folder`` (``embedding_<map method>_<method>_<k>.png``); their Markdown."""
    lines: list[str] = []
    for method in sorted({g.method for g in groups}):
        of_method = [g for g in groups if g.method == method]
        for kind, title in EMBEDDINGS.items():
            found = [_first_map(g, kind) for g in of_method]
            if not any(found):
                continue
            header, cells = [], []
            for k, (group, first) in enumerate(zip(of_method, found, strict=True), 1):
                detail = group.label.removeprefix(f"method.name={format_value(group.method)}, ")
                header.append(("base" if group.dimcl_weight == 0 else "+DimCL") + f" ({detail})")
                if first is None:
                    cells.append("–")
                    continue
                run, made = first
                name = f"embedding_{kind}_{_safe(method)}_{k}.png"
                shutil.copyfile(run.path / made["figure"], folder / name)
                cells.append(f"![{method}, {header[-1]}]({name})<br>seed {run.seed}, {made.get('images')} images")
            lines += [f"### {method}: {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      "| " + " | ".join(cells) + " |", ""]
    if not lines:
        return []
    return ["## Embedding maps", "",
            "Each configuration's 2-D map of its backbone features (`dimcl analyze --embedding`), from the first seed "
            "that has one: the same seeded evaluation images in every run, a point per image coloured by its class. "
            "Which images lie together is what a map shows; distances between clusters and their sizes mean little "
            "(docs/eval-embedding.md).", "", *lines]
