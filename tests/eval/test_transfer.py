"""Other classes (data.classes / eval.classes) and other datasets (data.* overrides of an evaluation)."""

from __future__ import annotations

import json

import pytest
import torch

from dimcl.cli import main
from dimcl.data import labels_of, run_splits
from dimcl.recipes import load_config, resolve_recipe
from tests.data.test_datasets import write_cifar10, write_png


def test_the_unseen_class_splits_are_disjoint_from_the_pretraining_classes(tiny_fashion_mnist):
    cfg = load_config(resolve_recipe("fashion_mnist/byol"), [
        f"data.root={tiny_fashion_mnist}", "data.classes=[0,1,2,3,4]", "eval.classes=[5,6,7,8,9]"])
    splits = run_splits(cfg)
    pretrain = labels_of(splits.pretrain())
    bank, scored = (labels_of(d) for d in splits.labelled())
    assert set(pretrain.tolist()) == {0, 1, 2, 3, 4} and len(pretrain) == int((labels_of(
        run_splits(load_config(resolve_recipe("fashion_mnist/byol"), [f"data.root={tiny_fashion_mnist}"]))
        .pretrain()) < 5).sum())
    assert set(bank.tolist()) == set(scored.tolist()) == {5, 6, 7, 8, 9}
    # without eval.classes the evaluations use the pretraining classes
    cfg.eval.classes = None
    assert set(labels_of(run_splits(cfg).labelled()[1]).tolist()) <= {0, 1, 2, 3, 4}


def _image_folder(root):
    for split, count in (("train", 6), ("val", 3)):
        for label, color in enumerate(((250, 10, 10), (10, 250, 10))):
            for i in range(count):
                write_png(root / split / f"class{label}" / f"{i}.png", (color[0], color[1] - i, 20), size=(40, 36))
    return root


@pytest.mark.parametrize("target", ["cifar10", "imagefolder"])
def test_a_grayscale_backbone_is_scored_on_rgb_datasets_of_another_format(tiny_byol_run, tmp_path, capsys, target):
    root = tmp_path / target
    if target == "cifar10":
        write_cifar10(root)
    else:
        _image_folder(root)
    out = tmp_path / "out"
    assert main(["knn", "--ckpt", str(tiny_byol_run), "--out", str(out), f"data.name={target}", f"data.root={root}",
                 "data.val_size=0", "eval.knn_k=3"]) == 0
    result = json.loads((out / "knn.json").read_text())
    assert result["overrides"][0] == f"data.name={target}" and result["eval_size"] == (3 if target == "cifar10" else 6)
    capsys.readouterr()
    # without --out the run's own knn.json would be replaced: refused; a key of the trained run: refused
    assert main(["knn", "--ckpt", str(tiny_byol_run), f"data.name={target}", f"data.root={root}"]) == 2
    assert "give --out FOLDER" in capsys.readouterr().err
    assert main(["knn", "--ckpt", str(tiny_byol_run), "--out", str(out), "method.name=simclr"]) == 2
    assert "data.* and eval.* overrides" in capsys.readouterr().err


def test_the_images_are_fed_as_the_backbone_was_trained(tiny_byol_run, tmp_path):
    from dimcl.eval.evaluate import evaluation_config
    from dimcl.run_dir import load_run_config

    write_cifar10(tmp_path / "cifar")
    trained = load_run_config(tiny_byol_run)
    cfg = evaluation_config(trained, ["data.name=cifar10", f"data.root={tmp_path / 'cifar'}"])
    image, _ = run_splits(cfg, trained=trained).labelled()[1][0]
    assert image.shape == (1, 28, 28)  # the backbone's channels and side, not CIFAR's (3, 32, 32)
    assert torch.isfinite(image).all()
