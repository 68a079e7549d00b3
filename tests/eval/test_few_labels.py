"""Few labels and fine-tuning: class-balanced label subsets, ``dimcl linear --labels``, ``dimcl finetune``."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from dimcl.cli import main
from dimcl.data import labels_of, run_splits
from dimcl.data.label_budget import LABELS_SEED, class_balanced_indices, few_label_indices, parse_label_budget
from dimcl.errors import ConfigError
from dimcl.eval import EVALUATIONS, evaluate
from dimcl.eval.finetune import finetune
from dimcl.eval.linear import augmented_linear_eval
from dimcl.eval.registry import RunToEvaluate
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import load_run_config
from dimcl.trained import load_trained_backbone
from tests.conftest import TINY_RUN


def test_a_budget_is_a_percentage_or_a_count():
    assert parse_label_budget("1%").percent == 1 and parse_label_budget("1%").tag == "1pct"
    assert parse_label_budget(" 12.5% ").tag == "12_5pct"
    assert parse_label_budget("600").count == 600 and parse_label_budget("600").tag == "600img"
    assert parse_label_budget("10%").images_of(60_000) == 6_000
    for bad in ("0%", "101%", "-3", "0", "ten", "5%%", ""):
        with pytest.raises(ConfigError, match="--labels"):
            parse_label_budget(bad)
    with pytest.raises(ConfigError, match="asks for 700 labelled images and the split has 600"):
        parse_label_budget("700").images_of(600)


def test_every_class_gets_the_same_count_and_the_remainder_goes_to_the_lowest_classes():
    labels = torch.arange(1000) % 7  # 7 classes of 142-143 images, interleaved
    labels[::13] = -1  # unlabelled images are never drawn
    indices = class_balanced_indices(labels, 100)
    assert indices == sorted(set(indices)) and len(indices) == 100
    counts = torch.bincount(labels[indices], minlength=7).tolist()
    assert counts == [15, 15, 14, 14, 14, 14, 14]  # 100 = 7 * 14 + 2
    assert (labels[indices] >= 0).all()
    # reproducible, and the draw is the subset seed's: another seed draws other images of the same counts
    assert class_balanced_indices(labels, 100) == indices
    other = class_balanced_indices(labels, 100, seed=LABELS_SEED + 1)
    assert other != indices and torch.bincount(labels[other], minlength=7).tolist() == counts
    with pytest.raises(ConfigError, match="fewer than one per class"):
        class_balanced_indices(labels, 6)
    with pytest.raises(ConfigError, match="images of class 0"):
        class_balanced_indices(torch.tensor([0, 1, 1, 1, 1, 1]), 4)


def test_the_subset_is_the_same_for_every_seed_of_the_pretraining(tiny_fashion_mnist):
    subsets = []
    for seed in (0, 1, 7):
        cfg = load_config(resolve_recipe("fashion_mnist/byol"), [f"data.root={tiny_fashion_mnist}", f"seed={seed}"])
        train = run_splits(cfg).labelled()[0]
        subsets.append(few_label_indices(train, parse_label_budget("20%")))
    assert subsets[0] == subsets[1] == subsets[2] and len(subsets[0]) == round(0.2 * 96)
    assert torch.bincount(labels_of(train)[subsets[0]], minlength=10).min() >= 1


@pytest.fixture
def run(tiny_byol_run, tmp_path):
    copied = tmp_path / "run"
    shutil.copytree(tiny_byol_run, copied)
    return copied


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_linear_with_labels_writes_its_own_file_with_the_budget(run, capsys):
    assert main(["linear", "--ckpt", str(run), "--labels", "10%"]) == 0
    result = json.loads((run / "linear_10pct.json").read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert not (run / "linear.json").exists()  # the all-label probe is another file
    assert (result["labels"], result["labels_seed"], result["labelled_images"]) == ("10%", LABELS_SEED, 10)
    assert result["train_size"] == 10 and result["labels_fraction"] == pytest.approx(10 / 96)
    assert 0 <= result["linear_10pct_top1"] <= 100
    # the sweep stage and report columns of the same budget read the same file
    assert EVALUATIONS["linear_10pct"].file == "linear_10pct.json"
    assert EVALUATIONS["linear_10pct"].columns[0].key == "linear_10pct_top1"
    # all the labels: the same probe as before the option existed
    full = evaluate("linear", run)
    assert full["labels"] == "all" and full["train_size"] == 96 and "linear_top1" in full


def test_the_few_label_probe_trains_on_the_subset_only(run, monkeypatch):
    seen = {}
    import dimcl.eval.linear as linear

    def spy(train_feats, train_labels, *args, **kwargs):
        seen["labels"] = train_labels.clone()
        return {"top1": 1.0, "top5": 2.0, "train_top1": 3.0}

    monkeypatch.setattr(linear, "train_linear_probe", spy)
    evaluate("linear", run, labels="20%")
    train = run_splits(load_run_config(run)).labelled()[0]
    expected = labels_of(train)[few_label_indices(train, parse_label_budget("20%"))]
    assert torch.equal(seen["labels"], expected)


def _run_to_evaluate(run_dir):
    cfg = load_run_config(run_dir)
    splits = run_splits(cfg)
    labelled = splits.labelled()
    return RunToEvaluate(run_dir, run_dir, cfg, splits, labelled, 10, run_dir, None)


def test_fine_tuning_changes_the_backbone_and_the_augmented_probe_never_does(run):
    backbone, _ = load_trained_backbone(run)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    # the augmented linear probe: the backbone frozen, its BatchNorm statistics included
    augmented_linear_eval(backbone, load_run_config(run), epochs=1, batch_size=16)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    # fine-tuning: every trainable tensor moves
    head, result = finetune(backbone, _run_to_evaluate(run), epochs=2, batch_size=16)
    moved = [k for k, v in backbone.state_dict().items() if v.is_floating_point() and not torch.equal(before[k], v)]
    assert len(moved) == sum(1 for v in before.values() if v.is_floating_point())
    assert result["steps"] == 2 * (96 // 16) and result["train_images"] == 96
    assert head.weight.abs().sum() > 0 and 0 <= result["top1"] <= 100


def test_dimcl_finetune_with_labels_leaves_the_run_as_it_was(run, capsys):
    files = {p.name: _digest(p) for p in run.rglob("*") if p.is_file()}
    assert main(["finetune", "--ckpt", str(run), "--labels", "20%", "--epochs", "1", "--batch-size", "8"]) == 0
    result = json.loads((run / "finetune_20pct.json").read_text())
    assert (result["labelled_images"], result["epochs"], result["steps"]) == (19, 1, 19 // 8)
    assert {"finetune_20pct_top1", "backbone_lr", "head_lr", "train_time_s"} <= set(result)
    after = {p.name: _digest(p) for p in run.rglob("*") if p.is_file() and p.name != "finetune_20pct.json"}
    assert after == files  # weights, checkpoint, metrics: untouched
    # too few labels for one batch is bad input, named
    assert main(["finetune", "--ckpt", str(run), "--labels", "10%"]) == 2
    assert "needs at least one batch of 128 labelled images, and has 10" in capsys.readouterr().err


def test_a_few_label_stage_in_a_sweep_and_its_columns_in_a_report(tiny_fashion_mnist, tmp_path):
    from dimcl.report import build_report
    from dimcl.sweep import run_sweep

    grid = tmp_path / "grid.yaml"
    overrides = [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1", "eval.every=1",
                 "eval.diagnose=false"]
    grid.write_text(json.dumps({
        "recipe": "fashion_mnist/simsiam", "overrides": overrides,
        "grid": {"dimcl.weight": [0.0, 0.1]}, "linear_10pct": True, "diagnose": False,
    }))
    results = run_sweep(grid, tmp_path / "sweep", log=None)
    for cell in results:
        assert (tmp_path / "sweep" / cell["name"] / "linear_10pct.json").is_file()
    report = build_report(tmp_path / "sweep")
    assert "10% labels: linear top-1 (%)" in report
