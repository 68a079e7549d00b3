"""Running any evaluation of :data:`~dimcl.eval.registry.EVALUATIONS` on a run, the same way for all.

:func:`evaluate` takes the run directory's lock (an evaluation writes its result there, or a feature
cache), reads the run's config and opens its labelled splits once, refuses an unlabelled dataset for an
evaluation that needs labels, runs the evaluation and writes its result file atomically.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from dimcl.config import Config, make_config
from dimcl.data import run_splits
from dimcl.errors import ConfigError
from dimcl.eval.registry import EVALUATIONS, RunToEvaluate
from dimcl.files import check_output_folder, write_probe
from dimcl.recipes import check_names
from dimcl.run_dir import FEATURE_CACHE, hold_run_dir, load_run_config, write_result
from dimcl.trained import run_dir_of

#: what an evaluation's overrides may change: the images it scores and how, never the trained run
EVALUATION_OVERRIDES = ("data.", "eval.")


def evaluation_config(trained: Config, overrides: Sequence[str]) -> Config:
    """The run's config with ``data.*`` / ``eval.*`` overrides: the images an evaluation scores (another
    dataset, other classes) and its settings; any other key is bad input."""
    for text in overrides:
        key = text.partition("=")[0].strip()
        if "=" not in text or not key.startswith(EVALUATION_OVERRIDES):
            raise ConfigError(
                f"an evaluation takes data.* and eval.* overrides (the images it scores, e.g. data.name=cifar10 "
                f"data.root=DIR or eval.classes=[5,6,7,8,9]), got '{text}'; the trained run cannot be changed here"
            )
    cfg = make_config(trained.to_dict(), overrides)
    check_names(cfg)
    return cfg


def evaluate(
    name: str,
    path: str | Path,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    **options: Any,
) -> dict[str, Any]:
    """Run evaluation ``name`` on the run at ``path`` and write its result file into ``out_dir``.

    ``overrides`` score the backbone on other images: another labelled dataset (fed with the backbone's
    channels, input side and normalisation) or other classes. Such a result describes other images than the
    run's own, so it goes to ``out_dir``, which must then be given, and it records the overrides; the run's
    feature cache is not used.

    Args:
        name: an evaluation of :data:`~dimcl.eval.registry.EVALUATIONS` (``knn``, ``linear``, ``analyze``,
            ``finetune``, ...).
        path: a run directory, or a checkpoint / backbone file inside one.
        device: where the backbone runs.
        out_dir: the folder for the result file (default: the run directory).
        overrides: ``data.*`` / ``eval.*`` config overrides (:func:`evaluation_config`).
        **options: the evaluation's own options (``epochs=`` for ``linear``, ``labels="10%"`` for ``linear``
            and ``finetune``, ``num_images=`` for ``analyze``, ...).

    Returns:
        The result, as written to the evaluation's result file (``knn.json``, ``linear_10pct.json``, ...).

    Raises:
        ConfigError: bad input, such as an override of a key other than ``data.*`` / ``eval.*``, or
            overrides without ``out_dir``.
    """
    evaluation = EVALUATIONS[name]
    file = evaluation.result_file(options)
    run_dir = run_dir_of(path)
    if overrides and out_dir is None:
        raise ConfigError(
            f"dimcl {name} with overrides ({' '.join(overrides)}) scores other images than the run's own: give "
            f"--out FOLDER for its {file}, so the run's own result is not replaced"
        )
    target = run_dir if out_dir is None else Path(out_dir)
    if out_dir is not None:
        check_output_folder(target)
    trained = load_run_config(run_dir)
    cfg = evaluation_config(trained, overrides) if overrides else trained
    splits = run_splits(cfg, trained=trained)
    labelled = splits.labelled()
    num_classes = splits.class_count(labelled[0], name) if evaluation.needs_labels else splits.num_classes(labelled[0])
    writable = write_probe(run_dir) is None
    if target == run_dir and not writable:
        raise ConfigError(f"the run directory '{run_dir}' is read-only, so {file} cannot be written "
                          "there; give --out FOLDER for the result")
    with ExitStack() as held:
        # Everything that writes into a run directory holds its lock (a second writer is refused by name);
        # a read-only one is only read: no lock, no feature cache.
        if writable and (target == run_dir or evaluation.uses_run_dir):
            held.enter_context(hold_run_dir(run_dir))
        if not writable and evaluation.uses_run_dir:
            print(f"dimcl {name}: '{run_dir}' is read-only: features are extracted, not cached", file=sys.stderr)
        if target != run_dir:
            target.mkdir(parents=True, exist_ok=True)
            held.enter_context(hold_run_dir(target))
        cache = run_dir / FEATURE_CACHE if writable and not overrides else None
        run = RunToEvaluate(Path(path), run_dir, cfg, splits, labelled, num_classes, target, cache)
        result = evaluation.run(run, device=device, **options)
        if overrides:
            result = {**result, "overrides": list(overrides)}
        write_result(target, file, result)
    return result
