"""An evaluation defined and registered here reaches everything that reads the table: its command, the
one wrapper's lock and checks, a sweep's stages and a report's columns. Nothing else is written for it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dimcl import cli
from dimcl.data import RunSplits
from dimcl.eval import EVALUATIONS, Column, Evaluation, RunToEvaluate, evaluate, register
from dimcl.eval.registry import unregister
from dimcl.report.report import build_report, compared, figures
from dimcl.run_dir import LOCK
from dimcl.sweep import load_grid
from dimcl.trained import load_trained_backbone

SEEN: dict[str, object] = {}


def _mean_norm(run: RunToEvaluate, device: str = "cpu", images: int = 8) -> dict[str, float]:
    """The mean L2 norm of the backbone's features of the first ``images`` evaluation images."""
    SEEN["locked"] = (run.run_dir / LOCK).exists()
    SEEN["num_classes"] = run.num_classes
    backbone, _ = load_trained_backbone(run.path)
    batch = torch.stack([run.labelled[1][i][0] for i in range(images)])
    with torch.no_grad():
        return {"mean_norm": float(backbone.eval()(batch).norm(dim=1).mean()), "images": images}


def _arguments(parser) -> None:
    parser.add_argument("--images", type=int, default=8)


PLUGGED = Evaluation(
    name="mean_norm", file="mean_norm.json", order=99, help="mean feature norm (a test's own evaluation)",
    description="The mean L2 norm of backbone features.", run=_mean_norm,
    columns=(Column("mean_norm", "mean feature norm", 3, compared=True),), needs_labels=False,
    add_arguments=_arguments,
)


@pytest.fixture(autouse=True)
def plugged():
    register(PLUGGED)
    yield PLUGGED
    unregister(PLUGGED.name)
    assert PLUGGED.name not in EVALUATIONS


@pytest.fixture
def run(tiny_byol_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_byol_run, copy)
    return copy


def test_the_command_runs_it_under_the_lock_and_writes_its_file(run, capsys):
    assert cli.main(["mean_norm", "--ckpt", str(run), "--images", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((run / "mean_norm.json").read_text()) and printed["images"] == 4
    assert SEEN["locked"] and not (run / LOCK).exists()  # held while it ran, released after
    assert SEEN["num_classes"] == 10
    out = run.parent / "elsewhere"
    assert evaluate("mean_norm", run / "checkpoints" / "last.ckpt", out_dir=out)["images"] == 8
    assert (out / "mean_norm.json").is_file()


def test_an_evaluation_that_needs_labels_is_refused_on_unlabelled_data(run, monkeypatch, capsys):
    monkeypatch.setitem(EVALUATIONS, "mean_norm", Evaluation(**{**PLUGGED.__dict__, "needs_labels": True}))
    monkeypatch.setattr(RunSplits, "num_classes", lambda self, dataset: None)  # as an unlabelled image folder
    assert cli.main(["mean_norm", "--ckpt", str(run)]) == 2
    assert "mean_norm needs class labels" in capsys.readouterr().err
    assert not (run / "mean_norm.json").exists()


def test_a_sweep_can_ask_for_it_and_a_report_shows_its_column(run, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"recipe": "fashion_mnist/byol", "evaluations": ["mean_norm"], "linear": True}))
    assert load_grid(grid).evaluations == ["linear", "analyze", "mean_norm"]  # the table's order
    grid.write_text(yaml.safe_dump({"recipe": "fashion_mnist/byol", "evaluations": ["mean_nrm"]}))
    with pytest.raises(ValueError, match="mean_norm"):
        load_grid(grid)

    assert ("mean_norm", "mean feature norm", 3) in figures() and "mean_norm" in compared()
    evaluate("mean_norm", run)
    report = build_report(run.parent, tmp_path / "report.md")
    assert "mean feature norm" in report


def test_a_read_only_run_directory_is_read_not_written(run, tmp_path, monkeypatch, capsys):
    wrapper = sys.modules["dimcl.eval.evaluate"]  # the module (dimcl.eval.evaluate is also the function's name)
    shutil.rmtree(run / "features", ignore_errors=True)
    before = sorted(p.name for p in run.iterdir())
    # As on a read-only mount (root passes chmod; the probe tries to create a file, as dimcl would).
    read_only = OSError(30, "Read-only file system")
    monkeypatch.setattr(wrapper, "write_probe", lambda folder: read_only if Path(folder) == run else None)
    assert cli.main(["knn", "--ckpt", str(run)]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "--out" in err, err
    out = tmp_path / "results"
    assert cli.main(["knn", "--ckpt", str(run), "--out", str(out)]) == 0
    assert "features are extracted, not cached" in capsys.readouterr().err
    assert (out / "knn.json").is_file() and sorted(p.name for p in run.iterdir()) == before
