"""Sweeps: many pretraining runs from one grid file, run one after another, resumable.

A grid file (YAML)::

    recipe: fashion_mnist/byol          # or  config: path/to/recipe.yaml (relative to this file)
    overrides: [trainer.max_epochs=50]  # applied to every cell
    grid:                               # cartesian product, in this key order
      method.name: [byol, simclr]
      dimcl.weight: [0.0, 0.1]
      seed: [0, 1, 2]
    cells:                              # explicit cells, run after the product
      - {method.name: byol, dimcl.weight: 0.05, seed: 0}
    linear: true                        # linear probe (fast protocol) after each cell; default false
    diagnose: true                      # diversity.json after each cell; default true
    diagnose_images: 1024               # the first images of the eval split the diagnostics use
    evaluations: [knn]                  # any evaluation by name (dimcl.eval.EVALUATIONS), besides the above
    device: auto                        # where the evaluations run: auto (cuda if present), cpu, cuda, ...

``recipe`` may also be a grid key or a key of an explicit cell, so one sweep can compare methods that
each have their own recipe (``grid: {recipe: [fashion_mnist/byol, fashion_mnist/simclr], seed: [0, 1]}``);
a cell's own recipe wins over the top-level one. Every cell must end up with a recipe.

Every cell is a normal run directory ``<out>/<cell name>``; the name lists the cell's own keys,
e.g. ``method.name=byol,dimcl.weight=0.1,seed=0``, so it is stable across calls and readable. A cell
whose backbone is exported and whose metrics reach ``trainer.max_epochs`` is skipped; one with a
checkpoint is resumed. ``<out>/sweep.json`` lists the cells and their status, rewritten after each.

``shard=(K, N)`` runs every N-th cell starting with the K-th, so that N processes (one per core, one per
machine, or an array job) share one grid without running a cell twice; each writes
``<out>/sweep-K-of-N.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from dimcl.config import Config, ConfigError
from dimcl.eval import EVALUATIONS, evaluate
from dimcl.experiment import experiment_differences
from dimcl.files import write_atomic
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import (
    CONFIG,
    hold_run_dir,
    reached_max_epochs,
    read_metrics,
    read_result,
    run_state,
)
from dimcl.train.loop import NonFiniteLossError, TrainingInterrupted, pretrain
from dimcl.yaml_files import read_yaml

__all__ = [
    "SweepSpec", "cell_name", "cell_overrides", "cell_recipe", "load_grid", "run_sweep", "summary_of_run",
    "write_sweep_file",
]

SWEEP_FILE = "sweep.json"
#: the grid file's keys: the cells, then each evaluation's switch and options (from EVALUATIONS), then
#: ``evaluations`` (a list of names: every stage by name, also those without a switch) and ``device``
_GRID_KEYS = (
    "recipe", "config", "overrides", "grid", "cells",
    *(key for e in EVALUATIONS.values() for key in ([e.grid_flag] if e.grid_flag else []) + list(e.grid_options)),
    "evaluations", "device",
)


@dataclass
class SweepSpec:
    """A parsed grid file: the base recipe, shared overrides, the cells and what to run after each."""

    recipe: Path | None
    overrides: list[str] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)
    #: the evaluations run after each cell, names in :data:`~dimcl.eval.EVALUATIONS` in its order (by
    #: default those whose grid switch is on by default: the diagnostics)
    evaluations: list[str] = field(default_factory=lambda: [e.name for e in EVALUATIONS.values() if e.grid_default])
    #: each evaluation's options from the grid file, e.g. ``{"analyze": {"num_images": 1024}}``
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "auto"


# ------------------------------------------------------------------------------------------ grid file


def _yaml_value(value: Any) -> str:
    """``value`` as YAML text that :func:`dimcl.config.parse_override` reads back as the same value.

    Not ``str()``: ``str(1e-05)`` is read back by PyYAML as a string, and ``str(True)`` as 'True'.
    """
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1)
    return text.removesuffix("\n...\n").strip()


def _name_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return _yaml_value(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_name_value(v) for v in value) + "]"
    return str(value)


def cell_name(cell: dict[str, Any]) -> str:
    """A readable, filesystem-safe directory name from a cell's overrides, in their order.

    ``{"method.name": "byol", "dimcl.weight": 0.1}`` -> ``method.name=byol,dimcl.weight=0.1``. Characters
    other than letters, digits and ``._,=+-`` become ``_``; a name over 120 characters is cut and
    ended with a hash of the whole, so it stays unique. The empty cell is ``default``.
    """
    if not cell:
        return "default"
    name = ",".join(f"{key}={_name_value(value)}" for key, value in cell.items())
    name = re.sub(r"[^A-Za-z0-9._,=+\-]", "_", name)
    if len(name) > 120:
        name = name[:109] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def cell_overrides(spec: SweepSpec, cell: dict[str, Any]) -> list[str]:
    """The overrides of one cell: the sweep's shared ones, then the cell's own (which win).

    A cell's ``recipe`` is not an override (it picks the base file, see :func:`cell_recipe`).
    """
    own = [f"{key}={_yaml_value(value)}" for key, value in cell.items() if key != "recipe"]
    return [*spec.overrides, *own]


def cell_recipe(spec: SweepSpec, cell: dict[str, Any]) -> Path:
    """The recipe file of one cell: its own ``recipe`` key, else the sweep's."""
    if "recipe" in cell:
        return resolve_recipe(str(cell["recipe"]))
    if spec.recipe is None:
        raise ConfigError("no recipe: give 'recipe' (or 'config') at the top of the grid file, or in every cell")
    return spec.recipe


def _expand(grid: dict[str, list[Any]], explicit: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` (first key slowest), then ``explicit``; repeats dropped."""
    cells: list[dict[str, Any]] = []
    if grid:
        keys = list(grid)
        cells = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    cells += [dict(cell) for cell in explicit]
    # First occurrence kept; a hashable key with the same equality as the dicts (1 == 1.0, key order
    # ignored), so that the de-duplication is linear in the number of cells (a list scan was quadratic).
    unique: dict[Any, dict[str, Any]] = {}
    for cell in cells:
        unique.setdefault(_frozen(cell), cell)
    return list(unique.values())


def _frozen(value: Any) -> Any:
    """``value`` as a hashable that compares equal exactly when the values do (dicts, lists, scalars)."""
    if isinstance(value, dict):
        return frozenset((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return (type(value) is tuple, tuple(_frozen(v) for v in value))
    return value


def load_grid(grid_file: str | Path) -> SweepSpec:
    """Read and check a grid file (see the module docstring); errors name the bad entry."""
    path = Path(grid_file)
    if not path.is_file():
        raise ConfigError(f"grid file '{path}' does not exist")
    data = read_yaml(path, f"grid file '{path}'") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"grid file '{path}' must hold a mapping ({', '.join(_GRID_KEYS)})")
    unknown = sorted(set(data) - set(_GRID_KEYS))
    if unknown:
        raise ConfigError(f"grid file '{path}': unknown key(s) {', '.join(unknown)}; accepted: {', '.join(_GRID_KEYS)}")
    if "recipe" in data and "config" in data:
        raise ConfigError(f"grid file '{path}' gives both 'recipe' and 'config'; give one")

    recipe = None
    if data.get("recipe") is not None:
        recipe = resolve_recipe(str(data["recipe"]))
    elif data.get("config") is not None:
        config = Path(str(data["config"]))
        # A relative path is read next to the grid file, so a sweep folder can be moved as a whole.
        recipe = resolve_recipe(str(path.parent / config if (path.parent / config).is_file() else config))

    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"grid file '{path}': 'overrides' must be a list of key=value strings, got {overrides!r}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"grid file '{path}': 'grid' must map config keys to lists of values, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"grid file '{path}': grid key '{key}' must have a non-empty list of values, got {values!r} "
                f"(write {key}: [{values!r}] for a single value)"
            )
    explicit = data.get("cells") or []
    if not isinstance(explicit, list) or not all(isinstance(c, dict) for c in explicit):
        raise ConfigError(f"grid file '{path}': 'cells' must be a list of mappings of config keys, got {explicit!r}")

    spec = SweepSpec(recipe, list(overrides), _expand(grid, explicit))
    _read_stages(path, data, spec)
    return spec


def _read_stages(path: Path, data: dict[str, Any], spec: SweepSpec) -> None:
    """The grid file's evaluations after each cell: the switches, the options, ``evaluations`` and ``device``."""
    def bad(key: str, value: Any, accepted: str) -> ConfigError:
        return ConfigError(f"grid file '{path}': '{key}' got {value!r}; it takes {accepted}")

    chosen = set(spec.evaluations)
    for e in EVALUATIONS.values():
        if e.grid_flag in data:
            if not isinstance(data[e.grid_flag], bool):
                raise bad(e.grid_flag, data[e.grid_flag], "bool")
            (chosen.add if data[e.grid_flag] else chosen.discard)(e.name)
        for key, option in e.grid_options.items():
            if key in data:
                value, choices = data[key], e.grid_choices.get(key)
                if choices is not None:
                    if value not in choices:
                        raise bad(key, value, f"one of {', '.join(choices)}")
                elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise bad(key, value, "a positive int")
                spec.options.setdefault(e.name, {})[option] = value
    names = data.get("evaluations", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n in EVALUATIONS for n in names):
        raise bad("evaluations", names, f"a list of evaluation names ({', '.join(EVALUATIONS)})")
    chosen.update(names)
    spec.evaluations = [name for name in EVALUATIONS if name in chosen]
    if "device" in data:
        if not isinstance(data["device"], str):
            raise bad("device", data["device"], "str")
        spec.device = data["device"]


# ------------------------------------------------------------------------------------------- running


def _check_same_experiment(name: str, cfg: Config, run_dir: Path) -> None:
    """A finished run is only reused for its own cell: refuse one made with other settings."""
    saved = read_yaml(run_dir / CONFIG, f"'{run_dir / CONFIG}'") if (run_dir / CONFIG).is_file() else None
    if saved is None:
        return
    # More epochs in the grid continue the run (the loop allows it); fewer would be another schedule.
    diffs = experiment_differences(saved, cfg.to_dict(), epochs="may_grow")
    if diffs:
        listed = "; ".join(f"{k}: {old!r} in the run, {new!r} in the grid" for k, old, new in diffs)
        raise ConfigError(
            f"sweep cell '{name}': '{run_dir}' holds a run of another configuration ({listed}). Move it away, "
            "or give the sweep another output directory."
        )


def _cell_state(spec: SweepSpec, cfg: Config, run_dir: Path) -> str:
    """:func:`run_state`, except that a cell whose records are complete counts as finished without its
    weights: its metrics reach ``max_epochs`` and it holds every evaluation the grid asks for. That is a
    finished cell committed by another machine (records travel with the repository, weights do not); a
    study resumed on a new machine must not train it again."""
    state = run_state(run_dir, cfg.trainer.max_epochs)
    if state == "new" and reached_max_epochs(read_metrics(run_dir), cfg.trainer.max_epochs):
        if all((run_dir / EVALUATIONS[name].file).is_file() for name in spec.evaluations):
            return "finished"
    return state


def _eval_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _is_main_process() -> bool:
    # Under torchrun every rank walks the same cells (pretrain synchronises them); only rank 0 writes.
    return int(os.environ.get("RANK", "0")) == 0


def summary_of_run(run_dir: Path) -> dict[str, Any]:
    """The headline figures of a run directory, for ``sweep.json``: each evaluation's first column, from
    its result file, else (a per-epoch figure) from the last epoch that has it."""
    out: dict[str, Any] = {}
    records = read_metrics(run_dir)
    if records:
        out["epochs_done"] = records[-1]["epoch"]
    for evaluation in EVALUATIONS.values():
        headline = evaluation.columns[0]
        saved = read_result(run_dir, evaluation.file) or {}
        per_epoch = [r[headline.key] for r in records if headline.key in r] if headline.per_epoch else []
        if headline.key in saved:
            out[headline.key] = saved[headline.key]
        elif per_epoch:
            out[headline.key] = per_epoch[-1]
    return out


def write_sweep_file(
    out_dir: Path, grid_file: Path, cells: list[dict[str, Any]], shard: tuple[int, int] | None
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = SWEEP_FILE if shard is None else SWEEP_FILE.replace(".json", f"-{shard[0]}-of-{shard[1]}.json")
    # a reader never sees half a file, and a failed write leaves the previous one
    write_atomic(out_dir / name, (json.dumps({"grid_file": str(grid_file), "shard": shard, "cells": cells}, indent=2)
                                  + "\n").encode())


def _plan_cells(spec: SweepSpec, shard: tuple[int, int] | None) -> list[tuple[str, Config, dict[str, Any]]]:
    """``(name, config, cell)`` of every cell (of this shard), each config built and checked."""
    planned: list[tuple[str, Config, dict[str, Any]]] = []
    names: dict[str, dict[str, Any]] = {}
    for cell in spec.cells or [{}]:
        name = cell_name(cell)
        if name in names:
            raise ConfigError(f"sweep cells {names[name]!r} and {cell!r} get the same directory name '{name}'")
        names[name] = cell
        try:
            cfg = load_config(cell_recipe(spec, cell), cell_overrides(spec, cell))
        except ConfigError as err:
            raise ConfigError(f"sweep cell '{name}': {err}") from None
        planned.append((name, cfg, cell))
    if shard is not None:
        k, n = shard
        planned = planned[k - 1 :: n]
    return planned


def _train_cell(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    result: dict[str, Any],
    where: str,
    say: Callable[[str], None],
    write_status: Callable[[], None],
) -> bool:
    """Pretrain one cell, keeping ``result`` and the sweep file up to date; False when its loss diverged
    (the cell failed, the sweep goes on). Any other error stops the sweep."""
    say(f"{where}: {'resuming' if resume else 'training'}")
    result["status"] = "running"
    write_status()
    try:
        # "auto" for a cell without a checkpoint: a start the sweep's own earlier process left (killed before its
        # first checkpoint) is started over, its files replaced; a cell folder holding other files is refused
        pretrain(cfg, run_dir, resume=True if resume else "auto")
    except NonFiniteLossError as err:
        result.update(status="failed", error=str(err))
        say(f"{where}: failed: {err}")
        return False
    except (TrainingInterrupted, KeyboardInterrupt) as err:
        result.update(status="interrupted", error=str(err) or type(err).__name__)
        raise
    except BaseException as err:
        result.update(status="failed", error=str(err) or type(err).__name__)
        raise
    finally:
        write_status()
    result["status"] = "resumed" if resume else "trained"
    return True


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> ``(2, 4)``; None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ConfigError(f"--shard '{text}' is not K/N with 1 <= K <= N, e.g. --shard 1/2 and --shard 2/2")
    return int(match[1]), int(match[2])


def run_sweep(
    grid_file: str | Path,
    out_dir: str | Path,
    dry_run: bool = False,
    log: Callable[[str], None] | None = print,
    shard: tuple[int, int] | None = None,
    only: str | None = None,
) -> list[dict[str, Any]]:
    """Run every cell of ``grid_file`` into ``out_dir/<cell name>``; returns one dict per cell.

    All cells' configs are built and checked first, so a typo fails before anything trains. Each cell
    dict has ``name``, ``overrides`` (the cell's own keys), ``run_dir``, ``status`` and, when known,
    ``knn_top1``, ``linear_top1``, ``backbone_effective_rank``, ``epochs_done``. Status: ``trained``,
    ``resumed``, ``skipped`` (already finished), ``failed`` (with ``error``; a non-finite loss fails
    only its cell, any other error stops the sweep), ``interrupted``; with ``dry_run`` nothing runs or
    is written and the status says what would happen: ``would train``, ``would resume``, ``skipped``.
    ``only``: run just the cell of that name (a launcher's job, see :mod:`dimcl.sweep_launch`); it writes
    no sweep file, the launcher keeps it.
    """
    grid_file, out_dir = Path(grid_file), Path(out_dir)
    spec = load_grid(grid_file)
    say = log or (lambda _: None)
    planned = _plan_cells(spec, shard)
    if only is not None:
        planned = [p for p in planned if p[0] == only]
        if not planned:
            raise ConfigError(f"sweep: no cell named '{only}' in {grid_file}")
    states, results = [], []
    for name, cfg, cell in planned:
        run_dir = out_dir / name
        state = _cell_state(spec, cfg, run_dir)
        if state != "new":
            _check_same_experiment(name, cfg, run_dir)
        states.append(state)
        status = {"finished": "skipped", "interrupted": "would resume", "new": "would train"}[state]
        results.append({"name": name, "overrides": cell, "run_dir": str(run_dir), "status": status})
    if dry_run:
        for index, result in enumerate(results, 1):
            say(f"[{index}/{len(results)}] {result['name']}: {result['status']}")
        return results

    main = _is_main_process()
    writes_status = main and only is None
    device = _eval_device(spec.device)

    def write_status() -> None:
        if writes_status:
            write_sweep_file(out_dir, grid_file, results, shard)

    for index, ((name, cfg, _), state, result) in enumerate(zip(planned, states, results, strict=True), 1):
        run_dir = out_dir / name
        trains = state != "finished"
        where = f"[{index}/{len(results)}] {name}"
        if not trains:
            say(f"{where}: finished already, skipped")
        elif not _train_cell(cfg, run_dir, state == "interrupted", result, where, say, write_status):
            continue
        if main:
            # After a (re)training the old evaluations describe another backbone: redo them.
            with hold_run_dir(run_dir):  # they write into the cell's run directory, as pretrain does
                for stage in spec.evaluations:
                    if trains or not (run_dir / EVALUATIONS[stage].file).is_file():
                        evaluate(stage, run_dir, device=device, **spec.options.get(stage, {}))
            result.update(summary_of_run(run_dir))
            write_status()
    return results
