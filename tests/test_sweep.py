"""Sweeps: grid files, cell names, and a tiny sweep that is run, skipped and resumed."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import TINY_RUN

from dimcl.config import ConfigError, parse_override
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import BACKBONE, CHECKPOINT, METRICS, read_metrics
from dimcl.sweep import SweepSpec, cell_name, cell_overrides, cell_recipe, load_grid, parse_shard, run_sweep


def write_grid(path, **content):
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def test_cell_names_are_readable_stable_and_safe():
    cell = {"method.name": "byol", "dimcl.weight": 0.1, "seed": 0}
    assert cell_name(cell) == "method.name=byol,dimcl.weight=0.1,seed=0"
    assert cell_name({"dimcl.hardness_aware": False, "dimcl.weight": 1e-05}) == (
        "dimcl.hardness_aware=false,dimcl.weight=1e-05"
    )
    assert cell_name({"data.root": "/data/my set", "augment.crop_scale": [0.2, 1.0]}) == (
        "data.root=_data_my_set,augment.crop_scale=_0.2,1.0_"
    )
    assert cell_name({}) == "default"
    long = cell_name({f"method.option_{i}": i for i in range(30)})
    assert len(long) == 120 and long == cell_name({f"method.option_{i}": i for i in range(30)})


def test_cell_overrides_read_back_as_the_same_values():
    cell = {"dimcl.weight": 1e-05, "dimcl.hardness_aware": True, "method.name": "byol", "data.root": "32",
            "augment.crop_scale": [0.2, 1.0], "data.subset": None}
    spec = SweepSpec(recipe=None, overrides=["trainer.max_epochs=3"])
    overrides = cell_overrides(spec, cell)
    assert overrides[0] == "trainer.max_epochs=3"
    assert dict(parse_override(o) for o in overrides[1:]) == cell


def test_grid_file_errors_name_the_entry(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*gird"):
        load_grid(write_grid(tmp_path / "a.yaml", recipe="fashion_mnist/byol", gird={"seed": [0]}))
    with pytest.raises(ConfigError, match="grid key 'seed'.*non-empty list"):
        load_grid(write_grid(tmp_path / "b.yaml", recipe="fashion_mnist/byol", grid={"seed": 0}))
    with pytest.raises(ConfigError, match="both 'recipe' and 'config'"):
        load_grid(write_grid(tmp_path / "c.yaml", recipe="fashion_mnist/byol", config="x.yaml"))
    # A relative config path is read next to the grid file.
    shutil.copy(resolve_recipe("fashion_mnist/byol"), tmp_path / "recipe.yaml")
    spec = load_grid(write_grid(tmp_path / "d.yaml", config="recipe.yaml", grid={"seed": [0, 1]},
                                cells=[{"seed": 1}, {"seed": 2}]))
    assert spec.recipe == tmp_path / "recipe.yaml"
    assert spec.cells == [{"seed": 0}, {"seed": 1}, {"seed": 2}]  # the repeated cell runs once


def test_a_typo_fails_before_anything_is_written(tmp_path, tiny_fashion_mnist):
    grid = write_grid(tmp_path / "grid.yaml", recipe="fashion_mnist/byol",
                      overrides=[f"data.root={tiny_fashion_mnist}"],
                      grid={"dimcl.weight": [0.0, 0.1]}, cells=[{"dimcl.wieght": 0.2}])
    with pytest.raises(ConfigError, match="sweep cell 'dimcl.wieght=0.2'.*dimcl.wieght"):
        run_sweep(grid, tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()


def test_sweep_runs_skips_and_resumes(tmp_path, tiny_fashion_mnist):
    grid = write_grid(
        tmp_path / "grid.yaml",
        recipe="fashion_mnist/byol",
        overrides=[*TINY_RUN, f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1"],
        grid={"dimcl.weight": [0.0], "seed": [0]},
        cells=[{"dimcl.weight": 0.1, "dimcl.hardness_aware": False, "seed": 0}],
        linear=True,
        diagnose_images=16,
        device="cpu",
    )
    out = tmp_path / "sweep"
    names = ["dimcl.weight=0.0,seed=0", "dimcl.weight=0.1,dimcl.hardness_aware=false,seed=0"]

    planned = run_sweep(grid, out, dry_run=True, log=None)
    assert [c["name"] for c in planned] == names and {c["status"] for c in planned} == {"would train"}
    assert not out.exists()

    first = run_sweep(grid, out, log=None)
    assert [c["name"] for c in first] == names and [c["status"] for c in first] == ["trained"] * 2
    for cell in first:
        run = out / cell["name"]
        assert (run / BACKBONE).is_file() and (run / "linear.json").is_file() and (run / "diversity.json").is_file()
        assert cell["knn_top1"] == read_metrics(run)[-1]["knn_top1"]
        assert cell["linear_top1"] == json.loads((run / "linear.json").read_text())["linear_top1"]
        assert json.loads((run / "diversity.json").read_text())["num_images"] == 16
    assert json.loads((out / "sweep.json").read_text())["cells"] == first

    stamps = {name: (out / name / BACKBONE).stat().st_mtime_ns for name in names}
    second = run_sweep(grid, out, log=None)
    assert [c["status"] for c in second] == ["skipped"] * 2
    assert {name: (out / name / BACKBONE).stat().st_mtime_ns for name in names} == stamps
    assert [c["knn_top1"] for c in second] == [c["knn_top1"] for c in first]

    # Interrupt the second cell after its checkpoint: no exported backbone, the metrics line lost.
    interrupted = out / names[1]
    (interrupted / BACKBONE).unlink()
    lines = (interrupted / METRICS).read_text().splitlines(keepends=True)
    (interrupted / METRICS).write_text("".join(lines[:-1]))
    assert run_sweep(grid, out, dry_run=True, log=None)[1]["status"] == "would resume"
    third = run_sweep(grid, out, log=None)
    assert [c["status"] for c in third] == ["skipped", "resumed"]
    assert (interrupted / BACKBONE).is_file() and [r["epoch"] for r in read_metrics(interrupted)] == [1]
    assert (interrupted / CHECKPOINT).is_file()

    # A fresh clone of a study holds a finished cell's records, not its weights: it stays finished.
    records_only = out / names[0]
    (records_only / BACKBONE).unlink()
    shutil.rmtree(records_only / CHECKPOINT.parent)
    assert run_sweep(grid, out, dry_run=True, log=None)[0]["status"] == "skipped"
    fourth = run_sweep(grid, out, log=None)
    assert fourth[0]["status"] == "skipped" and fourth[0]["knn_top1"] == first[0]["knn_top1"]
    assert not (records_only / BACKBONE).exists()
    # Without an evaluation the grid asks for (and no weights to run it on), the cell is trained again.
    (records_only / "linear.json").unlink()
    assert run_sweep(grid, out, dry_run=True, log=None)[0]["status"] == "would train"

    # A finished run is not reused for a cell with other settings.
    other = write_grid(tmp_path / "other.yaml", recipe="fashion_mnist/byol",
                       overrides=[*TINY_RUN, f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1",
                                  "optim.lr=0.5"],
                       cells=[{"dimcl.weight": 0.0, "seed": 0}])
    with pytest.raises(ConfigError, match="optim.lr"):
        run_sweep(other, out, log=None)


def test_recipe_can_vary_per_cell(tmp_path, tiny_fashion_mnist):
    grid = write_grid(tmp_path / "grid.yaml", overrides=[f"data.root={tiny_fashion_mnist}"],
                      grid={"recipe": ["fashion_mnist/byol", "fashion_mnist/simclr"], "seed": [0]},
                      cells=[{"recipe": "fashion_mnist/vicreg", "dimcl.weight": 0.0, "seed": 1}])
    spec = load_grid(grid)
    configs = [load_config(cell_recipe(spec, cell), cell_overrides(spec, cell)) for cell in spec.cells]
    assert [(c.method.name, c.seed, c.dimcl.weight) for c in configs] == [
        ("byol", 0, 0.1), ("simclr", 0, 0.1), ("vicreg", 1, 0.0)]
    # The recipe's own settings come with it (SimCLR's learning rate is not BYOL's), and it is no override.
    assert configs[1].optim.lr != configs[0].optim.lr
    assert not any(o.startswith("recipe=") for c in spec.cells for o in cell_overrides(spec, c))
    names = [c["name"] for c in run_sweep(grid, tmp_path / "out", dry_run=True, log=None)]
    assert names[0] == "recipe=fashion_mnist_byol,seed=0"

    no_recipe = write_grid(tmp_path / "none.yaml", grid={"seed": [0]})
    with pytest.raises(ConfigError, match="no recipe"):
        run_sweep(no_recipe, tmp_path / "out2", dry_run=True, log=None)


def test_shards_split_the_cells_without_overlap(tmp_path, tiny_fashion_mnist):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"recipe: fashion_mnist/byol\noverrides: [data.root={tiny_fashion_mnist}]\n"
        "grid:\n  seed: [0, 1, 2]\n  dimcl.weight: [0.0, 0.1]\n"
    )
    every = [c["name"] for c in run_sweep(grid, tmp_path / "out", dry_run=True, log=None)]
    shards = [[c["name"] for c in run_sweep(grid, tmp_path / "out", dry_run=True, log=None, shard=(k, 4))]
              for k in (1, 2, 3, 4)]
    assert shards[0] == [every[0], every[4]] and shards[3] == [every[3]]
    assert sorted(sum(shards, [])) == sorted(every)
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
