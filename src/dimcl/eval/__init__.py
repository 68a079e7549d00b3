"""Evaluation of frozen backbones: kNN, linear probe, feature-diversity diagnostics."""

from dimcl.eval.knn import extract_features, weighted_knn

__all__ = ["extract_features", "weighted_knn"]
