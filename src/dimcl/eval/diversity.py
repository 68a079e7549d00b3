"""Feature-diversity diagnostics: how decorrelated, and how many-dimensional, a batch of features is.

DimCL's claim is that contrasting dimensions makes them carry different information. These figures
measure that on a feature matrix ``X`` of shape ``(N, D)`` (N samples, D dimensions), computed in
float64 on the CPU:

- ``mean_abs_correlation``: mean |Pearson correlation| over the ``D (D - 1)`` off-diagonal pairs of
  dimensions (0: decorrelated, 1: every dimension a copy of the others);
- ``effective_rank``: RankMe (Garrido et al., "RankMe: Assessing the Downstream Performance of
  Pretrained Self-Supervised Representations by Their Rank", ICML 2023), between 1 and ``min(N, D)``;
- ``collapsed_dimensions``: dimensions that hardly vary over the batch (dimensional collapse);
- ``singular_spectrum``: the normalised singular values, for plotting.

:func:`diagnose` runs a method's backbone and projector over a fixed batch; :func:`diagnose_run`
does it for a run directory and writes ``diversity.json``: the ``analyze`` evaluation (``dimcl analyze``),
whose per-epoch form is ``eval.diagnose`` during pretraining.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from dimcl.errors import ConfigError
from dimcl.eval.embedding import (
    DEFAULT_EMBEDDING_IMAGES,
    EMBEDDINGS,
    check_embedding,
    embedding_files,
    embedding_map,
)
from dimcl.eval.evaluate import evaluate
from dimcl.eval.registry import Column, Evaluation, RunToEvaluate, register
from dimcl.trained import load_trained_method

__all__ = [
    "collapsed_dimensions",
    "diagnose",
    "diagnose_run",
    "diversity_report",
    "effective_rank",
    "fixed_eval_batch",
    "mean_abs_correlation",
    "singular_spectrum",
]

#: RankMe's epsilon, added to every normalised singular value so that log(0) never occurs
RANKME_EPS = 1e-7
#: the number of evaluation images the diagnostics use by default (the first ones of the eval split)
DEFAULT_IMAGES = 1024


def _as_matrix(features: Tensor) -> Tensor:
    """``(N, D)`` float64 on the CPU; float64 because correlations of nearly collapsed dims lose float32 digits."""
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"expected a non-empty feature matrix of shape (N, D), got {tuple(features.shape)}")
    return features.detach().to("cpu", torch.float64)


def _batch_std(x: Tensor) -> Tensor:
    """Biased std of each column of ``x`` ``(N, D)``: ``(D,)``, exactly 0 for numerically constant columns.

    A column of N equal values gets a std of rounding noise (~1e-16 of its size) rather than 0.
    """
    std = x.std(dim=0, unbiased=False)
    return torch.where(std > 1e-12 * x.abs().amax(dim=0), std, 0.0)


def mean_abs_correlation(features: Tensor) -> float:
    """Mean of ``|corr(X[:, i], X[:, j])|`` over all pairs ``i != j``; ``features`` is ``(N, D)``.

    A constant dimension has no defined correlation; it counts as 0 (it shares no information with
    any other) instead of turning the mean into NaN. One dimension alone has no pairs: 0.
    """
    x = _as_matrix(features)
    n, d = x.shape
    if d < 2:
        return 0.0
    centred = x - x.mean(dim=0)
    std = _batch_std(x)  # biased, matching the 1/N below
    varying = std > 0
    standardised = torch.where(varying, centred / torch.where(varying, std, 1.0), 0.0)
    correlation = standardised.T @ standardised / n  # (D, D), exactly 0 in the rows of constant dims
    off_diagonal = correlation.abs().sum() - correlation.diagonal().abs().sum()
    return float(off_diagonal / (d * (d - 1)))


def singular_spectrum(features: Tensor) -> Tensor:
    """Singular values of ``features`` ``(N, D)``, descending, divided by their sum: ``(min(N, D),)`` float64.

    All zeros for an all-zero matrix.
    """
    singular_values = torch.linalg.svdvals(_as_matrix(features))  # already descending
    total = singular_values.sum()
    return singular_values / total if total > 0 else singular_values


def effective_rank(features: Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe of ``features`` ``(N, D)``: ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + eps``.

    ``s`` are the singular values of the matrix as given (not centred, as in RankMe). ``k`` equal
    singular values give ``k``; a rank-1 matrix gives about 1. An all-zero matrix has rank 0.
    """
    singular_values = torch.linalg.svdvals(_as_matrix(features))
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def collapsed_dimensions(features: Tensor, tol: float = 1e-4) -> int:
    """Number of dimensions of ``features`` ``(N, D)`` whose std over the batch is below ``tol * max std``.

    When every dimension is (numerically) constant, i.e. the largest std is below 1e-8, the threshold
    is the absolute 1e-8 instead, so that a fully collapsed batch counts all ``D`` dimensions.
    """
    std = _batch_std(_as_matrix(features))
    largest = float(std.max())
    threshold = tol * largest if largest >= 1e-8 else 1e-8
    return int((std < threshold).sum())


def diversity_report(features: Tensor, prefix: str = "") -> dict[str, float]:
    """The scalar figures of ``features`` ``(N, D)``, keyed ``{prefix}mean_abs_corr``,
    ``{prefix}effective_rank``, ``{prefix}collapsed_dims`` and ``{prefix}num_dims``."""
    x = _as_matrix(features)
    return {
        f"{prefix}mean_abs_corr": mean_abs_correlation(x),
        f"{prefix}effective_rank": effective_rank(x),
        f"{prefix}collapsed_dims": collapsed_dimensions(x),
        f"{prefix}num_dims": x.shape[1],
    }


@torch.no_grad()
def diagnose(method: nn.Module, images: Tensor, chunk_size: int = 256) -> dict[str, float]:
    """Diversity of the backbone features ``(N, F)`` and projector outputs ``(N, D)`` of ``images``.

    ``method`` is any method of :mod:`dimcl.methods` (it has ``.backbone`` and ``.projector``). It
    runs in eval mode, so BatchNorm uses its running statistics and the figures do not depend on how
    the batch is composed; its previous mode is restored afterwards. ``images`` ``(N, C, H, W)`` are
    moved to the method's device ``chunk_size`` at a time (224 px images would not fit at once).
    Keys: ``backbone_*`` and ``projector_*`` of :func:`diversity_report`.
    """
    was_training = method.training
    method.eval()
    try:
        parameter = next(method.parameters(), None)
        device = parameter.device if parameter is not None else images.device
        features, projections = [], []
        for chunk in images.split(chunk_size):
            f = method.backbone(chunk.to(device))
            features.append(f.cpu())
            projections.append(method.projector(f).cpu())
        features, projections = torch.cat(features), torch.cat(projections)
    finally:
        method.train(was_training)
    return {**diversity_report(features, "backbone_"), **diversity_report(projections, "projector_")}


def fixed_eval_batch(dataset: Dataset, num_images: int = DEFAULT_IMAGES) -> Tensor:
    """The first ``num_images`` images of ``dataset`` (all of them if it is smaller), stacked ``(N, C, H, W)``.

    Always the same images, transformed deterministically (the eval transform), so that figures are
    comparable across epochs, seeds and runs.
    """
    count = min(num_images, len(dataset))
    if count == 0:
        raise ValueError("fixed_eval_batch(): the dataset is empty; the diagnostics need at least one image")
    return torch.stack([dataset[i][0] for i in range(count)])


def _diagnose_run(run: RunToEvaluate, device: str | torch.device = "cpu", num_images: int = DEFAULT_IMAGES,
                  embedding: str | None = None, embedding_images: int = DEFAULT_EMBEDDING_IMAGES) -> dict[str, Any]:
    if num_images < 2:
        raise ConfigError(f"--images got {num_images}; the diagnostics need at least 2 images (default "
                          f"{DEFAULT_IMAGES})")
    if embedding is not None:
        check_embedding(embedding, embedding_images)  # before any work: a missing umap-learn is said at once
    method, backbone, _ = load_trained_method(run.path)
    images = fixed_eval_batch(run.labelled[1], num_images)
    if method is not None:
        result: dict[str, Any] = diagnose(method.to(device), images)
    else:
        backbone.to(device).eval()
        with torch.no_grad():
            result = diversity_report(backbone(images.to(device)), "backbone_")
    result["num_images"] = images.shape[0]
    with torch.no_grad():
        backbone.eval()
        features = {"backbone": backbone(images.to(device))}
        if method is not None:
            method.eval()
            features["projector"] = method.projector(features["backbone"])
    plot_diagnostics(features, run.out_dir)
    if embedding is not None:
        result["embedding"] = embedding_map(backbone, run, embedding, embedding_images, device)
    return result


def _analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, dest="num_images",
                        help=f"evaluation images to analyse (default {DEFAULT_IMAGES})")
    parser.add_argument("--embedding", choices=tuple(EMBEDDINGS), default=None, metavar="METHOD",
                        help="also draw a 2-D map of the backbone features, coloured by class: tsne (scikit-learn's "
                        "t-SNE) or umap (UMAP: pip install 'dimcl[umap]'); writes embedding_<method>.png and .json "
                        "(default: no map).")
    parser.add_argument("--embedding-images", type=int, default=DEFAULT_EMBEDDING_IMAGES, dest="embedding_images",
                        help="evaluation images on the map, the same seeded draw for every run and seed "
                        f"(default {DEFAULT_EMBEDDING_IMAGES})")


_diversity_column = partial(Column, per_epoch=True)
ANALYZE = register(Evaluation(
    name="analyze",
    file="diversity.json",
    order=30,
    help="feature-diversity diagnostics of a run",
    description="Mean |correlation| between dimensions, effective rank (RankMe), collapsed dimensions and the "
    "singular-value spectrum of backbone features and projector outputs on a fixed evaluation batch; writes "
    "diversity.json and PNG plots. --embedding tsne|umap adds a 2-D map of the backbone features of a fixed, "
    "seeded set of evaluation images (docs/eval-embedding.md).",
    run=_diagnose_run,
    columns=(
        _diversity_column("backbone_effective_rank", "backbone eff. rank", 1, compared=True),
        _diversity_column("backbone_mean_abs_corr", "backbone mean abs corr", 3),
        _diversity_column("backbone_collapsed_dims", "backbone collapsed dims", 1),
        _diversity_column("projector_effective_rank", "projector eff. rank", 1),
        _diversity_column("projector_mean_abs_corr", "projector mean abs corr", 3),
        _diversity_column("projector_collapsed_dims", "projector collapsed dims", 1),
    ),
    needs_labels=False,
    add_arguments=_analyze_arguments,
    grid_flag="diagnose",
    grid_default=True,
    grid_options={"diagnose_images": "num_images", "embedding": "embedding", "embedding_images": "embedding_images"},
    grid_choices={"embedding": tuple(EMBEDDINGS)},
    # plot_diagnostics' figures (of the backbone and, with a checkpoint, the projector) and the maps
    outputs=("spectrum.png", "correlation_backbone.png", "correlation_projector.png",
             *(file for method in EMBEDDINGS for file in embedding_files(method))),
))


def diagnose_run(
    path: str | Path,
    num_images: int = DEFAULT_IMAGES,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    embedding: str | None = None,
    embedding_images: int = DEFAULT_EMBEDDING_IMAGES,
) -> dict[str, Any]:
    """:func:`diagnose` of a run's final model on the first ``num_images`` images of its eval split
    (``dimcl analyze``; :func:`dimcl.eval.evaluate.evaluate` with ``"analyze"``).

    Writes ``diversity.json`` and the plots to ``out_dir`` (default: the run directory) and returns the
    figures. Only ``backbone_*`` figures when the run kept no checkpoint (the projector is not exported).
    ``embedding`` (``"tsne"`` or ``"umap"``) also maps the backbone features of ``embedding_images``
    evaluation images (:func:`dimcl.eval.embedding.embedding_map`); the result's ``embedding`` says what was made.
    """
    return evaluate(ANALYZE.name, path, device=device, out_dir=out_dir, num_images=num_images, embedding=embedding,
                    embedding_images=embedding_images)


def plot_diagnostics(features: dict[str, Tensor], out_dir: str | Path, max_dims: int = 64) -> list[Path]:
    """``spectrum.png`` (normalised singular values, log scale, one curve per feature set) and
    ``correlation_<name>.png`` (|correlation| between the first ``max_dims`` dimensions) into ``out_dir``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    written = []
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    for name, x in features.items():
        spectrum = singular_spectrum(x).clamp_min(1e-12)
        ax.semilogy(range(1, len(spectrum) + 1), spectrum.tolist(), label=f"{name} (rank {effective_rank(x):.1f})")
    ax.set(xlabel="index", ylabel="normalised singular value", title="Singular-value spectrum")
    ax.legend(fontsize=8)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(out_dir / "spectrum.png"))
    written.append(out_dir / "spectrum.png")
    for name, x in features.items():
        x = _as_matrix(x)[:, :max_dims]
        centred = x - x.mean(dim=0)
        std = _batch_std(x)
        corr = (centred.T @ centred / x.shape[0]) / (std[:, None] * std[None, :]).clamp_min(1e-12)
        fig = Figure(figsize=(5, 4.4))
        ax = fig.add_subplot()
        image = ax.imshow(corr.abs().numpy(), vmin=0, vmax=1, cmap="viridis")
        fig.colorbar(image, ax=ax, label="|correlation|")
        ax.set(title=f"{name}: |correlation| of the first {x.shape[1]} dimensions", xlabel="dimension",
               ylabel="dimension")
        fig.tight_layout()
        path = out_dir / f"correlation_{name}.png"
        FigureCanvasAgg(fig).print_png(str(path))
        written.append(path)
    return written
