"""The `dimcl` command, run for real as a subprocess (and through its main() where a process start adds nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN

from dimcl import cli

DIMCL = str(Path(sys.executable).with_name("dimcl"))


def dimcl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DIMCL, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [[], ["pretrain"], ["knn"], ["list"], ["demo"]])
def test_help(command):
    proc = dimcl(*command, "--help")
    assert proc.returncode == 0 and "usage: dimcl" in proc.stdout


def test_list_shows_methods_backbones_datasets_and_recipes():
    proc = dimcl("list")
    assert proc.returncode == 0
    for word in ("byol", "barlow_twins", "small_cnn", "vit_small", "fashion_mnist", "imagefolder", "cifar10/vicreg"):
        assert word in proc.stdout


# Bad input (exit 2, one paragraph, nothing written): tests/test_reliability.py, 33 cases.


def test_an_internal_value_error_is_a_bug_in_dimcl_not_bad_input(tiny_fashion_mnist, tmp_path, monkeypatch, capsys):
    # Planted where no user input is checked: BYOL's forward during `dimcl pretrain`. Before errors were
    # classified where they are detected, this exited 2 with one line, like a mistyped key.
    from dimcl.methods.byol import BYOL
    from dimcl.version import __version__

    def broken_forward(self, views):
        raise ValueError("planted internal error")

    monkeypatch.setattr(BYOL, "forward", broken_forward)
    code = cli.main(["pretrain", "-c", "fashion_mnist/byol", "-o", str(tmp_path / "run"), *TINY_RUN,
                     f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback (most recent call last)" in err and "ValueError: planted internal error" in err
    assert "in broken_forward" in err  # the traceback reaches the frame that raised
    assert f"internal error: this is a bug in dimcl {__version__}" in err
    assert "error: planted" not in err  # not reported as the user's mistake


def test_a_worker_raised_error_reads_as_its_own_message():
    from dimcl.data import BadImageError
    from dimcl.errors import message_of

    # What PyTorch's ExceptionWrapper.reraise builds from a worker's exception.
    wrapped = BadImageError(
        "Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise BadImageError(...)\n'
        f"{BadImageError.__module__}.BadImageError: cannot read image 'a.jpg' (OSError: Truncated File Read); "
        "remove it\n"
    )
    assert message_of(wrapped) == "cannot read image 'a.jpg' (OSError: Truncated File Read); remove it"
    assert message_of(BadImageError("cannot read image 'b.jpg'")) == "cannot read image 'b.jpg'"


def test_pretrain_then_knn(tiny_fashion_mnist, tmp_path):
    run = tmp_path / "run"
    proc = dimcl("pretrain", "-c", "fashion_mnist/byol", "-o", str(run), *TINY_RUN, f"data.root={tiny_fashion_mnist}",
                 "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1" in proc.stdout and "knn top-1" in proc.stdout
    proc = dimcl("knn", "--ckpt", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert 0 <= result["knn_top1"] <= 100 and result["k"] == 10
    assert json.loads((run / "knn.json").read_text()) == result
    # the same backbone through its checkpoint gives the same figure
    proc = dimcl("knn", "--ckpt", str(run / "checkpoints" / "last.ckpt"))
    assert json.loads(proc.stdout)["knn_top1"] == result["knn_top1"]


def test_demo_runs_end_to_end_on_tiny_data(tiny_fashion_mnist, tmp_path):
    from dimcl.demo import run_demo

    out = tmp_path / "demo"
    result = run_demo(out, [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "data.subset=null",
                            "data.eval_subset=null", "trainer.max_epochs=1"])
    assert set(result["runs"]) == {"byol", "byol_dimcl"}
    assert "loss_dimcl" in result["runs"]["byol_dimcl"]["records"][0]
    assert "loss_dimcl" not in result["runs"]["byol"]["records"][0]
    for name in ("summary.md", "summary.json", "curves.png", "baselines.json", "byol/backbone.safetensors",
                 "byol_dimcl/backbone.safetensors", "byol/linear.json"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    rows = [line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["backbone", "raw pixels (floor)", "random-init backbone (floor)", "BYOL", "BYOL + DimCL",
                    "supervised backbone (ceiling)"]
    pixels = result["references"]["raw_pixels"]["knn_top1"]
    assert f"raw pixels' kNN top-1 ({pixels:.2f})" in summary  # the verdict names the floor either way
    assert all(f"]({arm}/embedding_tsne.png)" in summary and (out / arm / "embedding_tsne.png").is_file()
               for arm in ("byol", "byol_dimcl"))  # each arm's t-SNE map, shown
    again = run_demo(out, [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "data.subset=null",
                           "data.eval_subset=null", "trainer.max_epochs=1"])
    assert again["runs"]["byol"]["records"] == result["runs"]["byol"]["records"]  # finished runs are reused


def test_sweep_takes_the_grid_as_argument_or_option_but_once(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("recipe: fashion_mnist/byol\ngrid:\n  seed: [0, 1]\n")
    proc = dimcl("sweep", str(grid), "--out", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 0 and "[2/2] seed=1: would train" in proc.stdout, proc.stderr
    # The other spellings through the command's main() in this process (a process start costs seconds).
    assert cli.main(["sweep", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "[2/2] seed=1: would train" in capsys.readouterr().out
    for args in ([], [str(grid), "--grid", str(grid)]):
        assert cli.main(["sweep", *args, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert "give the grid file once" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
