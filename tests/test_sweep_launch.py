"""Cluster sweeps through submitit, tested with its local executor (real subprocesses, one per cell)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from conftest import TINY_RUN

from dimcl.config import ConfigError
from dimcl.run_dir import BACKBONE, read_metrics
from dimcl.sweep import run_sweep
from dimcl.sweep_launch import CellJob, LaunchOptions, launch_sweep

pytestmark = pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="pip install 'dimcl[submitit]'")


def _grid(tmp_path, root):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "recipe": "fashion_mnist/byol",
        "overrides": [*TINY_RUN, f"data.root={root}", "trainer.max_epochs=1", "trainer.tensorboard=false"],
        "grid": {"dimcl.weight": [0.0, 0.1]},
        "diagnose_images": 16,
        "device": "cpu",
    }, sort_keys=False))
    return path


def test_local_launcher_runs_one_job_per_cell_then_skips_them(tmp_path, tiny_fashion_mnist):
    grid, out = _grid(tmp_path, tiny_fashion_mnist), tmp_path / "sweep"
    results = launch_sweep(grid, out, LaunchOptions("local", parallel=2, cpus=1, gpus=0), log=None)
    assert [r["status"] for r in results] == ["trained", "trained"], results
    job_ids = {r["job_id"] for r in results}
    assert len(job_ids) == 2  # two jobs, two processes
    for result in results:
        run = out / result["name"]
        assert (run / BACKBONE).is_file() and (run / "diversity.json").is_file()
        assert result["knn_top1"] == read_metrics(run)[-1]["knn_top1"]
        assert (out / "submitit" / result["job_id"]).is_dir()  # the job's own stdout / stderr
    assert json.loads((out / "sweep.json").read_text())["cells"] == results

    again = launch_sweep(grid, out, LaunchOptions("local", cpus=1, gpus=0), log=None)
    assert [r["status"] for r in again] == ["skipped", "skipped"] and all("job_id" not in r for r in again)
    # the same folder read without a launcher: every cell finished
    assert [r["status"] for r in run_sweep(grid, out, dry_run=True, log=None)] == ["skipped", "skipped"]


def test_a_job_requeued_by_submitit_is_the_same_cell():
    job = CellJob("grid.yaml", "out", "dimcl.weight=0.1")
    again = job.checkpoint()
    assert again.function == job  # submitit resubmits it; the cell resumes from its own checkpoint


def test_bad_launch_options_and_a_bad_grid_fail_before_any_job(tmp_path, tiny_fashion_mnist):
    with pytest.raises(ConfigError, match="--launcher must be one of local, slurm"):
        LaunchOptions("kubernetes")
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump({"recipe": "fashion_mnist/byol", "grid": {"optim.lr": [-1.0]}}))
    with pytest.raises(ConfigError, match="optim.lr"):
        launch_sweep(grid, tmp_path / "out", LaunchOptions("local"), log=None)
    assert not (tmp_path / "out" / "submitit").exists()
