"""Embedding maps: a 2-D picture of a run's backbone features, one point per image, coloured by class.

``dimcl analyze --embedding tsne|umap`` (:mod:`dimcl.eval.diversity`) maps the backbone features of a fixed
set of evaluation images with t-SNE (scikit-learn; PCA initialisation, a fixed ``random_state``) or UMAP
(``umap-learn``, the optional ``dimcl[umap]`` extra) and writes ``embedding_<method>.png`` and
``embedding_<method>.json`` (the figure's data: one point per image with its ``x``, ``y``, ``label`` and
``index`` in the evaluation split).

Which images: ``num_images`` of the run's evaluation split drawn with :data:`EMBEDDING_SEED`, whatever the
run's seed, from the split as a whole, before ``data.eval_subset`` (whose draw follows the run's seed). So
every run and every seed of a study maps the same images, and two maps differ by their backbones alone.
The features are L2-normalised first: the kNN evaluation compares them by cosine, and on unit vectors the
Euclidean distance the maps use orders neighbours the same way.

A map shows which images a backbone puts near each other; distances between clusters, and cluster sizes,
mean little in t-SNE and UMAP alike (see docs/eval-embedding.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from dimcl.data.subsets import seeded_subset
from dimcl.errors import ConfigError
from dimcl.eval.knn import extract_features
from dimcl.files import write_atomic

if TYPE_CHECKING:
    from dimcl.eval.registry import RunToEvaluate

__all__ = [
    "DEFAULT_EMBEDDING_IMAGES",
    "EMBEDDINGS",
    "EMBEDDING_SEED",
    "check_embedding",
    "embed",
    "embedding_files",
    "embedding_map",
    "embedding_split",
    "plot_embedding",
    ]

#: the map methods, by the name ``--embedding`` takes, with the name figures show
EMBEDDINGS = {"tsne": "t-SNE", "umap": "UMAP"}
#: images mapped by default: enough for every class of a 10-class dataset to form its clusters (200 each),
#: few enough for a t-SNE of a few seconds on a CPU
DEFAULT_EMBEDDING_IMAGES = 2000
#: fewer images make no map worth looking at (and t-SNE's perplexity must stay below the image count)
MIN_EMBEDDING_IMAGES = 10
#: draws the images and seeds the map, whatever the run's seed: every run of a study maps the same images
EMBEDDING_SEED = 2309
#: t-SNE's perplexity and UMAP's neighbours (both libraries' defaults), lowered for very few images
TSNE_PERPLEXITY = 30.0
UMAP_NEIGHBORS = 15
#: the threads a map is computed on. One: Barnes-Hut t-SNE's OpenMP threads meet at a barrier every iteration,
#: and on a 2-core CPU with any other job running two of them took 55 s for 5000 images where one took 23 s
EMBEDDING_THREADS = 1
#: a legend names at most this many classes; more get a colour bar of class numbers
LEGEND_CLASSES = 20
UMAP_MISSING = "UMAP maps need the umap-learn package: pip install 'dimcl[umap]' (or use --embedding tsne)"


def embedding_files(method: str) -> tuple[str, str]:
    """``(figure, figure data)`` file names of a map made with ``method``: ``embedding_<method>.png`` / ``.json``."""
    return f"embedding_{method}.png", f"embedding_{method}.json"


def check_embedding(method: str, num_images: int = DEFAULT_EMBEDDING_IMAGES) -> None:
    """Bad input, said before any work: too few images, an unknown ``method``, or UMAP without umap-learn."""
    if num_images < MIN_EMBEDDING_IMAGES:
        raise ConfigError(f"--embedding-images got {num_images}; a map needs at least {MIN_EMBEDDING_IMAGES} "
                          f"images (default {DEFAULT_EMBEDDING_IMAGES})")
    _check_method(method)


def _check_method(method: str) -> None:
    if method not in EMBEDDINGS:
        raise ConfigError(f"--embedding got '{method}'; it takes one of {', '.join(EMBEDDINGS)}")
    if method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError as err:
            raise ConfigError(UMAP_MISSING) from err


def embedding_split(run: RunToEvaluate) -> Dataset:
    """The run's evaluation split as a whole (before ``data.eval_subset``), with the evaluation transform."""
    if run.cfg.data.eval_subset is None:
        return run.labelled[1]
    whole = dataclasses.replace(run.splits, data=dataclasses.replace(run.splits.data, eval_subset=None))
    return whole.labelled()[1]


def _class_names(dataset: Dataset) -> list[str] | None:
    """The class names a dataset carries (``.classes``, through ``Subset`` and ``ConcatDataset``), else None."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if isinstance(dataset, ConcatDataset):
        dataset = dataset.datasets[0]
    names = getattr(dataset, "classes", None)
    return list(names) if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names) else None


def embed(features: Tensor, method: str, seed: int = EMBEDDING_SEED) -> tuple[np.ndarray, dict[str, Any]]:
    """2-D coordinates ``(N, 2)`` of ``features`` ``(N, F)`` (L2-normalised first) and the map's settings.

    t-SNE: scikit-learn's Barnes-Hut t-SNE, PCA initialisation, ``random_state=seed``, perplexity
    :data:`TSNE_PERPLEXITY` (at most ``(N - 1) / 3``), its default 1000 iterations. UMAP: ``n_neighbors``
    :data:`UMAP_NEIGHBORS` (at most ``N - 1``), ``random_state=seed``. Both run on :data:`EMBEDDING_THREADS`.
    """
    from threadpoolctl import threadpool_limits

    _check_method(method)
    x = nn.functional.normalize(features.double(), dim=1).numpy()
    n = x.shape[0]
    with threadpool_limits(limits=EMBEDDING_THREADS):
        if method == "tsne":
            from sklearn.manifold import TSNE

            settings: dict[str, Any] = {"perplexity": min(TSNE_PERPLEXITY, (n - 1) / 3), "init": "pca"}
            points = TSNE(n_components=2, random_state=seed, **settings).fit_transform(x)
        else:
            import umap

            settings = {"n_neighbors": min(UMAP_NEIGHBORS, n - 1)}
            points = umap.UMAP(n_components=2, random_state=seed, **settings).fit_transform(x)
    return np.asarray(points, dtype=np.float64), settings


def plot_embedding(points: np.ndarray, labels: np.ndarray, class_names: list[str] | None, title: str,
                   path: str | Path) -> None:
    """A scatter of ``points`` ``(N, 2)`` coloured by ``labels`` ``(N,)`` (-1: unlabelled, grey), with a legend
    of the class names (numbers without them; a colour bar beyond :data:`LEGEND_CLASSES` classes)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    classes = sorted(int(c) for c in np.unique(labels) if c >= 0)
    count = max(classes, default=-1) + 1
    palette = colormaps["tab10" if count <= 10 else "tab20" if count <= 20 else "turbo"]
    colours = palette(np.arange(count) % palette.N) if count <= 20 else palette(np.linspace(0, 1, max(count, 1)))
    figure = Figure(figsize=(7.2, 5.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    unlabelled = labels < 0
    size = min(20.0, max(2.0, 8000 / max(len(labels), 1)))  # 4 for the default 2000 images
    if unlabelled.any():
        axes.scatter(points[unlabelled, 0], points[unlabelled, 1], s=size, color="0.6", alpha=0.6, linewidths=0,
                     label="unlabelled")
    if count <= LEGEND_CLASSES:
        for c in classes:
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            mine = labels == c
            axes.scatter(points[mine, 0], points[mine, 1], s=size, color=colours[c], alpha=0.7, linewidths=0,
                         label=f"{name} ({int(mine.sum())})")
        figure.legend(loc="outside right upper", fontsize="small", markerscale=3, frameon=False)
    else:
        labelled = ~unlabelled
        cmap = ListedColormap(colours)
        shown = axes.scatter(points[labelled, 0], points[labelled, 1], s=size, c=labels[labelled], cmap=cmap,
                             norm=BoundaryNorm(np.arange(count + 1) - 0.5, count), alpha=0.7, linewidths=0)
        figure.colorbar(shown, ax=axes, label="class")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize="medium")
    figure.savefig(path, dpi=120)


def embedding_map(
    backbone: nn.Module,
    run: RunToEvaluate,
    method: str,
    num_images: int = DEFAULT_EMBEDDING_IMAGES,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The map of ``backbone``'s features (the backbone on ``device``, put in eval mode) of ``num_images``
    images of ``run``'s evaluation split (:func:`embedding_split`; all of them if it is smaller), written to
    ``run.out_dir`` as :func:`embedding_files`; returns what was made (method, images, seed, files, time)."""
    check_embedding(method, num_images)
    started = time.perf_counter()
    split = embedding_split(run)
    chosen = seeded_subset(split, min(num_images, len(split)), EMBEDDING_SEED)
    loader = DataLoader(chosen, batch_size=512, num_workers=run.cfg.data.num_workers)
    with torch.no_grad():
        features, labels = extract_features(backbone, loader, device)
    points, settings = embed(features, method)
    class_names = _class_names(split)
    cfg = run.cfg
    title = (f"{EMBEDDINGS[method]} of backbone features, {len(chosen)} evaluation images\n"
             f"{cfg.method.name}, dimcl.weight={cfg.dimcl.weight:g}, seed {cfg.seed}")
    figure_file, data_file = embedding_files(method)
    plot_embedding(points, labels.numpy(), class_names, title, run.out_dir / figure_file)
    data = {
        "method": method, "images": len(chosen), "seed": EMBEDDING_SEED, "features": "backbone, L2-normalised",
        "split": "evaluation split before data.eval_subset", **settings, "class_names": class_names,
        "points": [{"x": round(float(x), 5), "y": round(float(y), 5), "label": int(label), "index": int(index)}
                   for (x, y), label, index in zip(points, labels.tolist(), chosen.indices, strict=True)],
    }
    write_atomic(run.out_dir / data_file, (json.dumps(data) + "\n").encode())
    return {"method": method, "images": len(chosen), "seed": EMBEDDING_SEED, "figure": figure_file,
            "data": data_file, "time_s": round(time.perf_counter() - started, 2)}
