"""provenance.jsonl: every start and resume of a run records the code and machine it ran on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import TINY_RUN

import dimcl
from dimcl.provenance import source_commit
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import read_provenance
from dimcl.train.loop import pretrain


def test_a_start_and_a_resume_each_add_a_record(tmp_path, tiny_fashion_mnist):
    overrides = [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "data.subset=32", "eval.every=0",
                 "eval.diagnose=false", "trainer.accelerator=cpu"]
    run = tmp_path / "run"
    pretrain(load_config(resolve_recipe("fashion_mnist/byol"), [*overrides, "trainer.max_epochs=1"]), run)
    pretrain(load_config(resolve_recipe("fashion_mnist/byol"), [*overrides, "trainer.max_epochs=2"]), run,
             resume=True)
    first, second = read_provenance(run)
    assert first["resumed_at_epoch"] is None and second["resumed_at_epoch"] == 1
    for record in (first, second):
        assert record["dimcl"] == dimcl.__version__ and record["device"] == "cpu" and record["threads"] >= 1
        assert record["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", record["git_commit"])


def test_the_commit_is_the_checkout_the_package_runs_from():
    found = source_commit()
    package = Path(dimcl.__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True)
    if head.returncode != 0 or package.parent.name != "src":  # an installed wheel: nothing to record
        assert found == {"commit": None, "dirty": None}
    else:
        assert found["commit"] == head.stdout.strip() and isinstance(found["dirty"], bool)
