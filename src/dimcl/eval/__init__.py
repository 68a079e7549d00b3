"""Evaluation of frozen backbones: kNN, linear probe, feature-diversity diagnostics.

:data:`EVALUATIONS` is the one table of what a finished run is evaluated with: the ``dimcl`` command,
the file it writes into the run directory, and the figures of that file that sweeps and reports show.
"""

from __future__ import annotations

from dataclasses import dataclass

from dimcl.eval.knn import extract_features, weighted_knn
from dimcl.run_dir import DIVERSITY, KNN, LINEAR


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run: ``dimcl <command> --ckpt RUN`` writes ``<run>/<file>``."""

    command: str
    file: str
    #: the keys of ``file`` that a report's tables show, the first one also in ``sweep.json``
    figures: tuple[str, ...]


EVALUATIONS: dict[str, Evaluation] = {
    e.command: e
    for e in (
        Evaluation("knn", KNN, ("knn_top1",)),
        Evaluation("linear", LINEAR, ("linear_top1",)),
        Evaluation(
            "analyze",
            DIVERSITY,
            (
                "backbone_effective_rank", "backbone_mean_abs_corr", "backbone_collapsed_dims",
                "projector_effective_rank", "projector_mean_abs_corr", "projector_collapsed_dims",
            ),
        ),
    )
}

__all__ = ["EVALUATIONS", "Evaluation", "extract_features", "weighted_knn"]
