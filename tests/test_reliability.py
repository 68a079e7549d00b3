"""No lost work, no raw tracebacks: bad input, kills, corrupt images, NaNs and unsafe checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, write_fashion_mnist
from PIL import Image

from dimcl.config import load_config
from dimcl.data import BadImageError, build_dataset
from dimcl.recipes import resolve_recipe
from dimcl.run_dir import TIMING_KEYS, read_metrics
from dimcl.train.checkpoint import CheckpointError, load_checkpoint
from dimcl.train.loop import NonFiniteLossError, Pretrainer, pretrain

DIMCL = str(Path(sys.executable).with_name("dimcl"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_fashion_mnist, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished")
    pretrain(load_config(resolve_recipe("fashion_mnist/byol"),
                         [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1", "eval.every=0"]), run)
    return run


def bad_input_cases(root: Path, finished: Path, scratch: Path) -> list[tuple[str, list[str], str]]:
    """(name, arguments after `dimcl`, text the message must contain)."""
    empty = scratch / "empty"
    empty.mkdir()
    a_file = scratch / "a_file"
    a_file.write_text("not a folder\n")
    bad_yaml = scratch / "bad.yaml"
    bad_yaml.write_text("trainer: [unclosed\n")
    no_val = scratch / "no_val" / "train" / "cat"
    no_val.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(no_val / "a.png")
    truncated = scratch / "truncated"
    (truncated / "checkpoints").mkdir(parents=True)
    (truncated / "config.yaml").write_bytes((finished / "config.yaml").read_bytes())
    ckpt = (finished / "checkpoints" / "last.ckpt").read_bytes()
    (truncated / "checkpoints" / "last.ckpt").write_bytes(ckpt[: len(ckpt) // 2])
    out = str(scratch / "out")
    pre = ["pretrain", "-c", "fashion_mnist/byol", "-o", out, f"data.root={root}", *TINY_RUN]
    resume = ["pretrain", "-c", "fashion_mnist/byol", "-o", str(finished), "--resume", f"data.root={root}", *TINY_RUN,
              "trainer.max_epochs=1", "eval.every=0"]
    return [
        ("unknown key", [*pre, "trainer.max_epoch=1"], "trainer.max_epoch"),
        ("unknown section", [*pre, "trainr.max_epochs=1"], "trainr"),
        ("zero epochs", [*pre, "trainer.max_epochs=0"], "trainer.max_epochs"),
        ("negative epochs", [*pre, "trainer.max_epochs=-3"], "-3"),
        ("epochs not a number", [*pre, "trainer.max_epochs=ten"], "ten"),
        ("weight above 1", [*pre, "dimcl.weight=1.5"], "1.5"),
        ("negative weight", [*pre, "dimcl.weight=-0.1"], "-0.1"),
        ("zero temperature", [*pre, "dimcl.temperature=0"], "dimcl.temperature"),
        ("bool not a bool", [*pre, "dimcl.hardness_aware=maybe"], "maybe"),
        ("unknown method", [*pre, "method.name=byl"], "Did you mean 'byol'"),
        ("unknown backbone", [*pre, "backbone.name=resnet19"], "resnet19"),
        ("unknown dataset", [*pre, "data.name=mnist"], "mnist"),
        ("batch of one", [*pre, "data.batch_size=1"], "data.batch_size"),
        ("zero lr", [*pre, "optim.lr=0"], "optim.lr"),
        ("negative lr", [*pre, "optim.lr=-1"], "optim.lr"),
        ("unknown optimizer", [*pre, "optim.name=adam"], "adam"),
        ("zero width", [*pre, "method.proj_hidden_dim=0"], "proj_hidden_dim"),
        ("option of another method", [*pre, "method.queue_size=10"], "queue_size"),
        ("bad precision", [*pre, "trainer.precision=64"], "64"),
        ("zero subset", [*pre, "data.subset=0"], "data.subset"),
        ("subset larger than the data", [*pre, "data.subset=100000"], "100000"),
        ("bad crop scale", [*pre, "augment.crop_scale=[0.9,0.1]"], "crop_scale"),
        ("bad on_bad_image", [*pre, "data.on_bad_image=ignore"], "ignore"),
        ("missing data root", [*pre, "data.root=/nonexistent/fmnist"], "/nonexistent/fmnist"),
        ("empty data root", [*pre, f"data.root={empty}"], str(empty)),
        ("evaluation split missing", ["pretrain", "-o", out, "data.name=imagefolder", f"data.root={no_val.parents[1]}",
                                      "backbone.name=small_cnn", "augment.crop_size=8", "data.batch_size=2"], "val"),
        ("unknown recipe", ["pretrain", "-c", "fashion_mnist/byl", "-o", out], "fashion_mnist/byl"),
        ("bad yaml", ["pretrain", "-c", str(bad_yaml), "-o", out], str(bad_yaml)),
        ("out is a file", ["pretrain", "-c", "fashion_mnist/byol", "-o", str(a_file)], str(a_file)),
        ("resume without checkpoint", [*pre, "--resume"], "last.ckpt"),
        ("resume another config", [*resume, "dimcl.weight=0.2"], "dimcl.weight"),
        ("resume a truncated checkpoint", ["pretrain", "-c", "fashion_mnist/byol", "-o", str(truncated), "--resume",
                                           f"data.root={root}", *TINY_RUN], "truncated"),
        ("knn of nothing", ["knn", "--ckpt", "/nonexistent/run"], "/nonexistent/run"),
    ]


def test_bad_inputs_exit_2_with_a_clear_message_and_touch_nothing(tiny_fashion_mnist, finished_run, tmp_path):
    cases = bad_input_cases(tiny_fashion_mnist, finished_run, tmp_path)
    assert len(cases) >= 25
    guard = tmp_path / "out" / "notes.txt"
    guard.parent.mkdir()
    guard.write_text("the user's own file\n")
    before = {"out": snapshot(tmp_path / "out"), "finished": snapshot(finished_run)}

    def run(case):
        name, args, needle = case
        proc = subprocess.run([DIMCL, *args], capture_output=True, text=True, timeout=300)
        return name, needle, proc

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, cases))
    for name, needle, proc in results:
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        assert needle in proc.stderr, f"{name}: {needle!r} not in {proc.stderr!r}"
        assert "Traceback" not in proc.stderr, f"{name}: {proc.stderr[-2000:]}"
        assert proc.stderr.count("\n") <= 2, f"{name}: not one paragraph: {proc.stderr!r}"
    assert snapshot(tmp_path / "out") == before["out"]
    assert snapshot(finished_run) == before["finished"]


@pytest.fixture(scope="module")
def longer_fashion_mnist(tmp_path_factory) -> Path:
    """Epochs of 40 steps, long enough (about a second) to interrupt one reliably from outside."""
    return write_fashion_mnist(tmp_path_factory.mktemp("longer"), n_train=640, n_test=32)


def _args(root: Path, run: Path, *extra: str) -> list[str]:
    return [DIMCL, "pretrain", "-c", "fashion_mnist/byol", "-o", str(run), f"data.root={root}", *TINY_RUN,
            "trainer.max_epochs=3", "eval.every=0", *extra]


def test_sigkill_then_resume_matches_an_uninterrupted_run(longer_fashion_mnist, tmp_path):
    tiny_fashion_mnist = longer_fashion_mnist
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = subprocess.Popen(_args(tiny_fashion_mnist, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not read_metrics(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(_args(tiny_fashion_mnist, full), check=True, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    done = len(read_metrics(killed))
    assert 1 <= done < 3, "the kill should land after the first checkpoint and before the end"
    resumed = subprocess.run([*_args(tiny_fashion_mnist, killed), "--resume"], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    strip = TIMING_KEYS
    got = [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(killed)]
    want = [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(full)]
    assert got == want
    a, b = load_checkpoint(killed / "checkpoints" / "last.ckpt"), load_checkpoint(full / "checkpoints" / "last.ckpt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_sigterm_saves_mid_epoch_and_resume_matches(longer_fashion_mnist, tmp_path):
    tiny_fashion_mnist = longer_fashion_mnist
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    slow: list[str] = []
    proc = subprocess.Popen(_args(tiny_fashion_mnist, stopped, *slow), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not read_metrics(stopped) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    subprocess.run(_args(tiny_fashion_mnist, full, *slow), check=True, capture_output=True, timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    resumed = subprocess.run([*_args(tiny_fashion_mnist, stopped, *slow), "--resume"], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    strip = TIMING_KEYS
    got = [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(stopped)]
    want = [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(full)]
    assert got == want


def test_mid_epoch_checkpoints_resume_exactly(tiny_fashion_mnist, tmp_path, monkeypatch):
    import dimcl.train.loop as loop

    cfg = load_config(resolve_recipe("fashion_mnist/byol"), [*TINY_RUN, f"data.root={tiny_fashion_mnist}",
                                                             "eval.every=0", "trainer.checkpoint_every_n_steps=2"])
    full = pretrain(cfg, tmp_path / "full")
    calls = {"n": 0}
    original = loop.set_learning_rate

    def stop_in_second_epoch(optimizer, factor):
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 2, after the mid-epoch checkpoint at step 8
            raise KeyboardInterrupt
        original(optimizer, factor)

    monkeypatch.setattr(loop, "set_learning_rate", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "part")
    monkeypatch.setattr(loop, "set_learning_rate", original)
    state = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.ckpt")
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 2 and state["global_step"] == 8
    resumed = pretrain(cfg, tmp_path / "part", resume=True)
    assert resumed.records[-1]["loss"] == full.records[-1]["loss"]
    for p, q in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_nan_loss_stops_with_epoch_step_and_terms_and_keeps_the_checkpoint(tiny_fashion_mnist, tmp_path,
                                                                           monkeypatch):
    overrides = [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "eval.every=0"]
    pretrain(load_config(resolve_recipe("fashion_mnist/byol"), [*overrides, "trainer.max_epochs=1"]), tmp_path)
    before = snapshot(tmp_path / "checkpoints")
    forward = Pretrainer.forward
    calls = {"n": 0}

    def poisoned(self, views, labels):
        out = forward(self, views, labels)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss_dimcl"] = out["loss_dimcl"] * float("nan")
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Pretrainer, "forward", poisoned)
    cfg = load_config(resolve_recipe("fashion_mnist/byol"), [*overrides, "trainer.max_epochs=2"])
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 3 of 6.*loss_dimcl=nan, loss=nan.*untouched"):
        pretrain(cfg, tmp_path, resume=True)
    assert snapshot(tmp_path / "checkpoints") == before
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]


def _image_folder(root: Path, corrupt: bool) -> Path:
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), color=(40 * i, 100 if label == "a" else 200, 0)).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        (root / "train" / "b" / "broken.jpg").write_bytes(b"")
    return root


def test_corrupt_images_fail_with_the_path_or_are_skipped_and_counted(tmp_path):
    root = _image_folder(tmp_path / "images", corrupt=True)
    failing = build_dataset("imagefolder", root, "pretrain", on_bad_image="fail")
    with pytest.raises(BadImageError, match=r"train/a/1.png.*data.on_bad_image=skip"):
        [failing[i] for i in range(len(failing))]
    skipping = build_dataset("imagefolder", root, "pretrain", on_bad_image="skip")
    items = [skipping[i] for i in range(len(skipping))]
    assert len(items) == 9 and skipping.bad_images == 2  # 9 files, 2 unreadable: each replaced by the next

    overrides = ["data.name=imagefolder", f"data.root={root}", "backbone.name=small_cnn", "augment.crop_size=8",
                 "method.proj_hidden_dim=16", "method.proj_output_dim=8", "method.pred_hidden_dim=16",
                 "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1", "trainer.progress_bar=false",
                 "trainer.tensorboard=false", "eval.knn_k=3"]
    result = pretrain(load_config(None, [*overrides, "data.on_bad_image=skip"]), tmp_path / "skip")
    assert result.records[0]["bad_images_skipped"] >= 1
    proc = subprocess.run([DIMCL, "pretrain", "-o", str(tmp_path / "fail"), *overrides], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and ("1.png" in proc.stderr or "broken.jpg" in proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/dimcl_test_pickle_ran")


def test_malicious_checkpoint_is_refused(finished_run, tmp_path):
    MARKER.unlink(missing_ok=True)
    run = tmp_path / "evil"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_bytes((finished_run / "config.yaml").read_bytes())
    torch.save({"model": {}, "config": {}, "payload": _Evil()}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(run / "checkpoints" / "last.ckpt")
    proc = subprocess.run([DIMCL, "knn", "--ckpt", str(run / "checkpoints" / "last.ckpt")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "refusing to load" in proc.stderr
    assert not MARKER.exists()


def test_foreign_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a dimcl checkpoint"):
        load_checkpoint(path)
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a readable dimcl checkpoint"):
        load_checkpoint(path)
