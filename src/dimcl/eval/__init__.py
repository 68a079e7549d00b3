"""Evaluation of trained backbones: kNN, linear probe (also with few labels), fine-tuning, feature-diversity
diagnostics.

:data:`EVALUATIONS` (:mod:`dimcl.eval.registry`) is the one table of what a finished run is evaluated
with; each evaluation registers itself in its own module, imported here so that the table is complete
once ``dimcl.eval`` is. :func:`evaluate` runs any of them on a run directory.
"""

from __future__ import annotations

from dimcl.eval import diversity, finetune, linear, offline  # noqa: F401  (each registers its evaluation)
from dimcl.eval.evaluate import evaluate
from dimcl.eval.knn import extract_features, weighted_knn
from dimcl.eval.registry import EVALUATIONS, Column, Evaluation, RunToEvaluate, register

__all__ = ["EVALUATIONS", "Column", "Evaluation", "RunToEvaluate", "evaluate", "extract_features", "register",
           "weighted_knn"]
