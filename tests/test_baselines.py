"""Floors and ceiling (`dimcl baselines`): raw pixels, random init, supervised; their file; the report."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_fashion_mnist

from dimcl.baselines import (
    baselines,
    has_baselines,
    pixel_features,
    protocol_of,
    read_baselines,
    write_baselines,
)
from dimcl.build import build_eval_datasets
from dimcl.cli import main
from dimcl.data.label_budget import few_label_indices, parse_label_budget
from dimcl.eval.knn import weighted_knn
from dimcl.eval.linear import FAST, train_linear_probe
from dimcl.recipes import load_config, resolve_recipe
from dimcl.report import build_report

SMALL = ["data.num_workers=0", "data.batch_size=16", "eval.knn_k=10", "trainer.progress_bar=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=160, n_test=80)


def cfg_of(data, *overrides):
    return load_config(resolve_recipe("fashion_mnist/byol"), [f"data.root={data}", *SMALL, *overrides])


def test_raw_pixels_are_the_normalised_images_scored_like_any_features(data):
    cfg = cfg_of(data, "trainer.max_epochs=1")
    bank, evaluation = build_eval_datasets(cfg)
    features, labels = pixel_features(bank)
    image, label = bank[3]
    assert features.shape == (160, 784) and torch.equal(features[3], image.flatten()) and labels[3] == label
    record = baselines(cfg, supervised=False, log=None)
    test_features, test_labels = pixel_features(evaluation)
    expected = weighted_knn(features, labels, test_features, test_labels, k=10, temperature=0.07, num_classes=10)
    assert record["raw_pixels"]["knn_top1"] == expected["top1"]
    assert record["raw_pixels"]["num_features"] == 784 and record["random_init"]["num_features"] == 256
    assert (record["bank_size"], record["eval_size"]) == (160, 80) and "supervised" not in record
    # The class bars of the fixture are visible in the pixels: the floor is far above chance (10%).
    assert record["raw_pixels"]["knn_top1"] > 60 and record["raw_pixels"]["linear_top1"] > 60


def test_random_init_depends_on_the_seed_only(data):
    a = baselines(cfg_of(data, "seed=0"), supervised=False, log=None)["random_init"]
    b = baselines(cfg_of(data, "seed=0"), supervised=False, log=None)["random_init"]
    c = baselines(cfg_of(data, "seed=1"), supervised=False, log=None)["random_init"]
    assert a == b and a != c


def test_the_supervised_ceiling_learns_the_classes(data):
    record = baselines(cfg_of(data, "trainer.max_epochs=8", "augment.crop_scale=[0.8,1.0]"), log=None)
    supervised = record["supervised"]
    assert supervised["epochs"] == 8 and supervised["steps"] == 8 * (160 // 16) and supervised["train_images"] == 160
    # Ten classes told apart by one bright bar each (crops that keep it): the trained classifier is far
    # above chance (10%; 91% on the machine this was written on, so 50 leaves a wide margin).
    assert supervised["head_top1"] > 50 and supervised["linear_top1"] > 50


def test_the_file_keeps_one_record_per_seed_and_protocol(tmp_path, data):
    cfg = cfg_of(data)
    record = {"seed": 0, "protocol": protocol_of(cfg), "raw_pixels": {"knn_top1": 1.0}}
    write_baselines(tmp_path, record)
    write_baselines(tmp_path, {**record, "seed": 1})
    write_baselines(tmp_path, {**record, "raw_pixels": {"knn_top1": 2.0}})  # replaces seed 0
    other = {**record, "protocol": {**record["protocol"], "data.eval_subset": 50}}
    write_baselines(tmp_path, other)
    records = read_baselines(tmp_path)
    assert len(records) == 3
    assert [r["raw_pixels"]["knn_top1"] for r in records if r["protocol"] == record["protocol"]] == [2.0, 1.0]


def test_each_reference_row_names_its_own_seeds(tmp_path, data):
    # The floors of seeds 0 and 1, the ceiling of seed 0 only (a supervised run not yet made for seed 1).
    protocol = protocol_of(cfg_of(data))
    write_baselines(tmp_path, {"seed": 0, "protocol": protocol, "raw_pixels": {"knn_top1": 80.0},
                               "supervised": {"knn_top1": 90.0, "linear_top1": 91.0, "head_top1": 89.0}})
    write_baselines(tmp_path, {"seed": 1, "protocol": protocol, "raw_pixels": {"knn_top1": 80.0}})
    report = build_report(tmp_path)
    assert "| raw pixels (floor) | 0, 1 | 80.00 ± 0.00 | – | – |" in report
    assert "| supervised backbone (ceiling) | 0 | 90.00 | 91.00 | 89.00 |" in report


def test_command_writes_the_file_and_the_report_shows_it(tmp_path, data, capsys):
    out = tmp_path / "sweep"
    code = main(["baselines", "-c", "fashion_mnist/byol", "-o", str(out), "--seeds", "0,1",
                 "trainer.max_epochs=1", f"data.root={data}", *SMALL])
    assert code == 0
    records = read_baselines(out)
    assert [r["seed"] for r in records] == [0, 1]
    assert json.loads((out / "baselines.json").read_text())["records"][0]["supervised"]["epochs"] == 1
    report = build_report(out)
    assert "## Floors and ceiling" in report
    pixels = [r["raw_pixels"]["knn_top1"] for r in records]
    assert pixels[0] == pixels[1]  # no subset: both seeds score the same pixels
    assert f"| raw pixels (floor) | 0, 1 | {pixels[0]:.2f} ± 0.00 |" in report
    assert "| supervised backbone (ceiling) | 0, 1 |" in report


def test_bad_input_is_a_clear_error(tmp_path, data, capsys):
    assert main(["baselines", "-c", "fashion_mnist/byol", "-o", str(tmp_path), "data.val_size=-3"]) == 2
    assert "data.val_size" in capsys.readouterr().err
    assert not (tmp_path / "baselines.json").exists()


def test_skip_existing_computes_only_the_missing_seeds(tmp_path, data, capsys, monkeypatch):
    out = tmp_path / "sweep"
    cfg = cfg_of(data, "trainer.max_epochs=1")
    protocol = protocol_of(cfg)
    # seed 0 complete, seed 1 without its supervised ceiling, seed 2 absent; one record of another protocol
    write_baselines(out, {"seed": 0, "protocol": protocol, "raw_pixels": {"knn_top1": 1.0}, "supervised": {}})
    write_baselines(out, {"seed": 1, "protocol": protocol, "raw_pixels": {"knn_top1": 1.0}})
    write_baselines(out, {"seed": 2, "protocol": {**protocol, "data.eval_subset": 50}, "supervised": {}})
    computed = []

    def fake(cfg, device="cpu", supervised=True, log=print, **few_labels):
        computed.append((cfg.seed, supervised))
        return {"seed": cfg.seed, "protocol": protocol_of(cfg), "raw_pixels": {"knn_top1": 2.0}, "supervised": {}}

    monkeypatch.setattr("dimcl.baselines.baselines", fake)
    args = ["baselines", "-c", "fashion_mnist/byol", "-o", str(out), "--seeds", "0,1,2", "trainer.max_epochs=1",
            f"data.root={data}", *SMALL]
    assert main([*args, "--skip-existing"]) == 0
    assert computed == [(1, True), (2, True)]
    assert "seed 0: already in" in capsys.readouterr().out
    assert main([*args, "--skip-existing"]) == 0 and len(computed) == 2  # all there now: nothing to do
    assert main([*args, "--skip-existing", "--no-supervised"]) == 0 and len(computed) == 2
    assert main(args) == 0 and computed[2:] == [(0, True), (1, True), (2, True)]  # without it: every seed again
    assert [r["raw_pixels"]["knn_top1"] for r in read_baselines(out) if r["protocol"] == protocol] == [2.0] * 3


def test_few_label_floors_and_the_reference_trained_on_the_subset_alone(tmp_path, data, capsys):
    cfg = cfg_of(data, "trainer.max_epochs=1")
    out = tmp_path / "sweep"
    code = main(["baselines", "-c", "fashion_mnist/byol", "-o", str(out), "--labels", "50%,20", "--labels-steps", "3",
                 "trainer.max_epochs=1", f"data.root={data}", *SMALL])
    assert code == 0
    (record,) = read_baselines(out)
    assert record["few_labels"] == {
        "50pct": {"labels": "50%", "labelled_images": 80, "labels_seed": 2024},
        "20img": {"labels": "20", "labelled_images": 20, "labels_seed": 2024},
    }
    # The floor's probe is the fast probe of `dimcl linear --labels` on the subset's rows of the pixels.
    bank, evaluation = build_eval_datasets(cfg)
    features, labels = pixel_features(bank)
    rows = torch.as_tensor(few_label_indices(bank, parse_label_budget("20")))
    expected = train_linear_probe(features[rows], labels[rows], *pixel_features(evaluation), 10, epochs=100, seed=0,
                                  **FAST)
    assert record["raw_pixels"]["linear_20img_top1"] == expected["top1"]
    assert {"linear_50pct_top1", "linear_20img_top1"} <= record["random_init"].keys()
    # The reference trained on 20 images alone: one batch of 20 per epoch, 3 steps; on 80: batches of 80.
    few = record["supervised_20img"]
    assert (few["train_images"], few["batch_size"], few["epochs"], few["steps"]) == (20, 20, 3, 3)
    assert record["supervised_50pct"]["train_images"] == 80 and 0 <= few["head_top1"] <= 100
    assert has_baselines(out, cfg, labels=["50%", "20"]) and not has_baselines(out, cfg, labels=["10%"])
    report = build_report(out)
    assert "| reference | seeds | 20 labels (20 images): top-1 (%) | 50% labels (80 images): top-1 (%) |" in report
    assert f"| raw pixels (floor) | 0 | {expected['top1']:.2f} |" in report
    assert f"| supervised on the subset alone (ceiling) | 0 | {few['head_top1']:.2f} |" in report
    with pytest.raises(SystemExit) as refused:  # a usage error: argparse's exit status 2
        main(["baselines", "-c", "fashion_mnist/byol", "-o", str(out), "--labels", "0%"])
    assert refused.value.code == 2
    assert "--labels" in capsys.readouterr().err


def test_an_unseen_class_protocol_is_its_own_and_has_no_classifier_score_on_the_unseen_classes(data):
    every = cfg_of(data, "trainer.max_epochs=1")
    unseen = cfg_of(data, "trainer.max_epochs=1", "data.classes=[0,1,2,3,4]", "eval.classes=[5,6,7,8,9]")
    # the classes join the protocol only when set: records made on every class keep theirs
    assert "data.classes" not in protocol_of(every) and "eval.classes" not in protocol_of(every)
    assert protocol_of(unseen) == {**protocol_of(every), "data.classes": [0, 1, 2, 3, 4],
                                   "eval.classes": [5, 6, 7, 8, 9]}
    record = baselines(unseen, log=None)
    # trained on classes 0-4, its classifier has nothing to say about 5-9: only its features are scored
    assert "head_top1" not in record["supervised"] and 0 <= record["supervised"]["knn_top1"] <= 100
    assert record["supervised"]["train_images"] == 80  # the fixture's 160 training images, 16 of each class
    seen = baselines(cfg_of(data, "trainer.max_epochs=1", "data.classes=[0,1,2,3,4]"), log=None)
    assert "head_top1" in seen["supervised"]


def test_a_folder_of_the_same_protocol_lends_its_supervised_ceiling(tmp_path, data, capsys, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["-c", "fashion_mnist/byol", "--seeds", "0,1", "trainer.max_epochs=1", f"data.root={data}", *SMALL]
    cfg = cfg_of(data, "trainer.max_epochs=1")
    protocol = protocol_of(cfg)
    for seed, top1 in ((0, 91.0), (1, 92.0)):
        write_baselines(first, {"seed": seed, "protocol": protocol, "supervised": {"knn_top1": top1, "epochs": 1}})

    def no_training(*args, **kwargs):
        raise AssertionError("the ceiling is lent, not trained again")

    monkeypatch.setattr("dimcl.baselines.train_supervised", no_training)
    assert main(["baselines", "-o", str(second), "--ceiling-from", str(first), "--labels", "20",
                 "--labels-steps", "2", *args]) == 0
    records = read_baselines(second)
    lent = str(first / "baselines.json")
    assert [r["supervised"] for r in records] == [{"knn_top1": 91.0, "epochs": 1, "from": lent},
                                                  {"knn_top1": 92.0, "epochs": 1, "from": lent}]
    # the floors and the few-label reference are computed here: only the full ceiling is lent
    assert all(r["supervised_20img"]["steps"] == 2 and "knn_top1" in r["raw_pixels"] for r in records)
    # lent on again, the row still names where it was trained
    assert main(["baselines", "-o", str(tmp_path / "third"), "--ceiling-from", str(second), *args]) == 0
    assert read_baselines(tmp_path / "third")[0]["supervised"]["from"] == lent
    report = build_report(second)
    assert f"The supervised ceiling of seed(s) 0, 1 is the one of `{lent}`" in report
    assert "| supervised backbone (ceiling) | 0, 1 | 91.50 ± 0.71 |" in report
    capsys.readouterr()
    # another protocol (2 epochs) has no ceiling there: refused before anything is computed
    assert main(["baselines", "-o", str(tmp_path / "fourth"), "--ceiling-from", str(first), *args,
                 "trainer.max_epochs=2"]) == 2
    assert "holds no supervised ceiling of seed 0" in capsys.readouterr().err
    assert not (tmp_path / "fourth" / "baselines.json").exists()
    assert main(["baselines", "-o", str(tmp_path / "fifth"), "--ceiling-from", str(first), "--no-supervised",
                 *args]) == 2
    assert "--no-supervised" in capsys.readouterr().err
