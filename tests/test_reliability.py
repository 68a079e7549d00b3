"""No lost work, no raw tracebacks: bad input, kills, corrupt images, NaNs and unsafe checkpoints."""

from __future__ import annotations

import csv
import gzip
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, write_fashion_mnist
from PIL import Image
from safetensors.torch import save_file

from dimcl import cli
from dimcl.checkpoint import CheckpointError, load_backbone_weights, load_checkpoint
from dimcl.config import ConfigError
from dimcl.data import BadImageError, build_dataset
from dimcl.data.safe_pickle import load_safe_pickle
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import LOCK, TIMING_KEYS, read_metrics
from dimcl.train.loop import NonFiniteLossError, pretrain
from dimcl.train.pretrainer import Pretrainer

DIMCL = str(Path(sys.executable).with_name("dimcl"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_in_process(args: list[str], capsys) -> tuple[int, str]:
    """The CLI's main() in this process, as the `dimcl` command runs it: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    return code, capsys.readouterr().err


def run_as_process(args: list[str]) -> tuple[int, str]:
    """A real `dimcl` process: (exit code, stderr)."""
    proc = subprocess.run([DIMCL, *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


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
    hostile = {  # a run's config.yaml: an alias bomb (1 KB, gigabytes once walked), a code tag, a list, nothing
        "alias_bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi", strict=True)),
        "code_tag": "data: !!python/object/apply:os.system [echo pwned]\n",
        "a_list": "- 1\n- 2\n",
        "empty_config": "",
    }
    for name, text in hostile.items():
        (scratch / name).mkdir()
        (scratch / name / "config.yaml").write_text(text)
    exported = (finished / "backbone.safetensors").read_bytes()
    (scratch / "truncated.safetensors").write_bytes(exported[: len(exported) // 2])
    (scratch / "forged.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}" + b"\0" * 64)
    tensors, meta = load_backbone_weights(finished / "backbone.safetensors")
    first = next(k for k, t in tensors.items() if t.is_floating_point())
    save_file({**tensors, first: torch.zeros(3, 3)}, str(scratch / "misshapen.safetensors"),
              metadata={"dimcl": json.dumps(meta)})
    for kind, change in (("int8", lambda t: t.to(torch.int8)), ("nan", lambda t: torch.full_like(t, float("nan")))):
        save_file({**tensors, first: change(tensors[first])}, str(scratch / f"{kind}.safetensors"),
                  metadata={"dimcl": json.dumps(meta)})
    out = str(scratch / "out" / "run")  # a new folder inside "out", which holds the user's own file
    stale = scratch / "stale"  # a previous run's files without its checkpoint
    stale.mkdir()
    (stale / "config.yaml").write_text("seed: 0\n")
    (stale / "knn.json").write_text('{"knn_top1": 55.5}\n')
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
        ("out holds other files", [*pre[:4], str(scratch / "out"), *pre[5:]],
         "holds files dimcl did not write (notes.txt)"),
        ("out holds a stale run", [*pre[:4], str(stale), *pre[5:]], "no checkpoint to resume; pass --overwrite"),
        ("overwrite with resume", [*pre, "--overwrite", "--resume"], "cannot go with --resume"),
        ("resume without checkpoint", [*pre, "--resume"], "last.ckpt"),
        ("resume another config", [*resume, "dimcl.weight=0.2"], "dimcl.weight"),
        ("resume a truncated checkpoint", ["pretrain", "-c", "fashion_mnist/byol", "-o", str(truncated), "--resume",
                                           f"data.root={root}", *TINY_RUN], "truncated"),
        ("knn of nothing", ["knn", "--ckpt", "/nonexistent/run"], "/nonexistent/run"),
        ("a device that is not one", ["knn", "--ckpt", str(finished), "--device", "bogus"], "bogus"),
        ("linear --out under a file", ["linear", "--ckpt", str(finished), "--epochs", "1", "--out",
                                       str(a_file / "x")], str(a_file)),
        ("analyze --out under a file", ["analyze", "--ckpt", str(finished), "--out", str(a_file / "x")], str(a_file)),
        ("export under a file", ["export", "--ckpt", str(finished), "--format", "safetensors", "-o",
                                 str(a_file / "x.safetensors")], str(a_file)),
        ("report of a file", ["report", str(a_file)], str(a_file)),
        ("a patch size the image cannot take", [*pre, "backbone.name=vit_tiny", "backbone.patch_size=5"], "patch_size"),
        ("an option the backbone has not", [*pre, "backbone.patch_size=4"], "patch_size"),
        ("DimCL over one dimension", [*pre, "method.proj_output_dim=1"], "proj_output_dim"),
        ("a YAML alias bomb as a run's config", ["knn", "--ckpt", str(scratch / "alias_bomb")], "alias"),
        ("a code tag in a run's config", ["knn", "--ckpt", str(scratch / "code_tag")], "python/object"),
        ("a list as a run's config", ["linear", "--ckpt", str(scratch / "a_list")], "got list"),
        ("an empty run config", ["analyze", "--ckpt", str(scratch / "empty_config")], "got NoneType"),
        ("an infinite learning rate", [*pre, "optim.lr=.inf"], "finite"),
        ("an infinite warm-up", [*pre, "optim.warmup_epochs=.inf"], "finite"),
        ("an infinite temperature", [*pre, "dimcl.temperature=.inf"], "finite"),
        ("a seed past 64 bits", [*pre, "seed=1180591620717411303424"], "seed"),
        ("a negative warm-up start", [*pre, "optim.warmup_start_lr=-5"], "warmup_start_lr"),
        ("a negative LARS eta", [*pre, "optim.eta=-1"], "optim.eta"),
        ("betas out of range", [*pre, "optim.betas=[2,3]"], "optim.betas"),
        *((f"a {kind} safetensors file", ["export", "--ckpt", str(scratch / f"{kind}.safetensors"), "--format",
                                          "safetensors", "-o", str(scratch / "out" / "x.safetensors")], needle)
          for kind, needle in (("truncated", "not a readable safetensors"), ("forged", "not a readable safetensors"),
                               ("misshapen", "do not fit"), ("int8", "not floating point"), ("nan", "NaN"))),
    ]


#: cases also run as a real `dimcl` process (the others call the CLI's main() in this process, which is what
#: the command runs: a process start costs seconds of imports, 33 of them most of this file's time)
AS_PROCESS = ("unknown key", "missing data root", "resume a truncated checkpoint")


def test_bad_inputs_exit_2_with_a_clear_message_and_touch_nothing(tiny_fashion_mnist, finished_run, tmp_path, capsys):
    cases = bad_input_cases(tiny_fashion_mnist, finished_run, tmp_path)
    assert len(cases) >= 25 and set(AS_PROCESS) <= {name for name, _, _ in cases}
    guard = tmp_path / "out" / "notes.txt"
    guard.parent.mkdir()
    guard.write_text("the user's own file\n")
    before = {"out": snapshot(tmp_path / "out"), "finished": snapshot(finished_run)}

    results = [(name, needle, run_in_process(args, capsys)) for name, args, needle in cases]
    results += [(f"{name} (a process)", needle, run_as_process(args)) for name, args, needle in cases
                if name in AS_PROCESS]
    for name, needle, (code, stderr) in results:
        assert code == 2, f"{name}: exit {code}\n{stderr[-2000:]}"
        assert needle in stderr, f"{name}: {needle!r} not in {stderr!r}"
        assert "Traceback" not in stderr, f"{name}: {stderr[-2000:]}"
        assert stderr.count("\n") <= 2, f"{name}: not one paragraph: {stderr!r}"
    assert snapshot(tmp_path / "out") == before["out"]
    assert snapshot(finished_run) == before["finished"]


@pytest.fixture(scope="module")
def longer_fashion_mnist(tmp_path_factory) -> Path:
    """Epochs of 40 steps, long enough (about a second) to interrupt one reliably from outside."""
    return write_fashion_mnist(tmp_path_factory.mktemp("longer"), n_train=640, n_test=32)


def _args(root: Path, run: Path, *extra: str) -> list[str]:
    return [DIMCL, "pretrain", "-c", "fashion_mnist/byol", "-o", str(run), f"data.root={root}", *TINY_RUN,
            "trainer.max_epochs=3", "eval.every=0", *extra]


@pytest.fixture(scope="module")
def uninterrupted_longer_run(longer_fashion_mnist, tmp_path_factory) -> Path:
    """The run the interrupted ones must end equal to (made once for the SIGKILL and SIGTERM tests)."""
    full = tmp_path_factory.mktemp("uninterrupted") / "full"
    subprocess.run(_args(longer_fashion_mnist, full), check=True, capture_output=True, timeout=600)
    return full


def test_sigkill_then_resume_matches_an_uninterrupted_run(longer_fashion_mnist, uninterrupted_longer_run, tmp_path):
    tiny_fashion_mnist = longer_fashion_mnist
    full, killed = uninterrupted_longer_run, tmp_path / "killed"
    proc = subprocess.Popen(_args(tiny_fashion_mnist, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not read_metrics(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
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


def test_sigterm_saves_mid_epoch_and_resume_matches(longer_fashion_mnist, uninterrupted_longer_run, tmp_path):
    tiny_fashion_mnist = longer_fashion_mnist
    full, stopped = uninterrupted_longer_run, tmp_path / "stopped"
    proc = subprocess.Popen(_args(tiny_fashion_mnist, stopped), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not read_metrics(stopped) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM" in err and "--resume" in err and "Traceback" not in err
    resumed = subprocess.run([*_args(tiny_fashion_mnist, stopped), "--resume"], capture_output=True,
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


# The loss is read from the device every trainer.log_every_n_steps steps (default 50: once at the end of
# these 6-batch epochs); 4 with a checkpoint due at step 10 (epoch 2, batch 4, after the poisoned batch 3).
@pytest.mark.parametrize("reading", [[], ["trainer.log_every_n_steps=4", "trainer.checkpoint_every_n_steps=5"]])
def test_nan_loss_stops_with_epoch_step_and_terms_and_keeps_the_checkpoint(tiny_fashion_mnist, tmp_path,
                                                                           monkeypatch, reading):
    overrides = [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "eval.every=0", *reading]
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
    nan_at = r"epoch 2, batch 3 of 6 \(global step 8\).*loss_dimcl=nan, loss=nan.*untouched"
    with pytest.raises(NonFiniteLossError, match=nan_at):
        pretrain(cfg, tmp_path, resume=True)
    assert snapshot(tmp_path / "checkpoints") == before
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    # a NaN before the first checkpoint claims no checkpoint (there is none to be untouched)
    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 3 .*No checkpoint was written before it") as err:
        pretrain(load_config(resolve_recipe("fashion_mnist/byol"), [*overrides, "trainer.max_epochs=1"]),
                 tmp_path / "fresh")
    assert "untouched" not in str(err.value)


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
    # the refusal changed nothing: no config.yaml, provenance or checkpoints folder left behind (issue 30 item 7)
    assert not (tmp_path / "fail").exists(), sorted(p.name for p in (tmp_path / "fail").iterdir())


def test_hostile_metrics_lines_are_named_and_a_report_goes_on_without_that_run(finished_run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    for name, edit in (("good", None), ("infinite_epoch", ("epoch", float("inf"))), ("text_epoch", ("epoch", "1")),
                       ("text_figure", ("knn_top1", "high"))):
        run = sweep / name
        shutil.copytree(finished_run, run)
        if edit is not None:
            record = json.loads(lines[-1])
            record[edit[0]] = edit[1]
            (run / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(record)]) + "\n")
    with pytest.raises(ConfigError, match=r"infinite_epoch/metrics.jsonl' line 1 .*'epoch'.*inf"):
        read_metrics(sweep / "infinite_epoch")
    code, err = run_in_process(["report", str(sweep)], capsys)
    assert code == 0, err
    report = (sweep / "report.md").read_text()
    assert "1 run(s)" in report
    for name, needle in (("infinite_epoch", "'epoch' must be a whole number"), ("text_epoch", "got '1'"),
                         ("text_figure", "knn_top1='high', not a number")):
        assert any(name in line and needle in line for line in report.splitlines()), (name, report)


@pytest.mark.parametrize("planted", [".dimcl.lock", "provenance.jsonl", "knn.json"])
def test_a_symlink_in_a_run_directory_is_refused_not_written_through(planted, finished_run, tiny_fashion_mnist,
                                                                      tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    victim = tmp_path / "victim"
    victim.write_text("the user's own file\n")
    (run / planted).unlink(missing_ok=True)
    (run / planted).symlink_to(victim)
    if planted == "provenance.jsonl":  # appended to by a resumed run
        args = ["pretrain", "-c", "fashion_mnist/byol", "-o", str(run), "--resume", f"data.root={tiny_fashion_mnist}",
                *TINY_RUN, "trainer.max_epochs=2", "eval.every=0"]
    else:
        args = ["knn", "--ckpt", str(run)]
    code, err = run_in_process(args, capsys)
    assert code == 2 and planted in err and "symbolic link" in err and "Traceback" not in err, err
    assert victim.read_text() == "the user's own file\n"


def test_directory_links_in_an_image_folder_are_walked_once(tmp_path):
    root = _image_folder(tmp_path / "images", corrupt=False)
    plain = len(build_dataset("imagefolder", root, "pretrain"))
    cls = root / "train" / "a"
    (cls / "up").symlink_to("..")  # back to train/: its images again, and again (246 from 6 before)
    (cls / "loop1").symlink_to(".")  # to itself: the walk never ended
    (cls / "loop2").symlink_to(".")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(elsewhere / "linked.png")
    (root / "train" / "b" / "more").symlink_to(elsewhere)  # a real folder elsewhere: followed, once
    assert len(build_dataset("imagefolder", root, "pretrain")) == plain + 1


def test_an_unreadable_image_in_a_loader_worker_ends_the_run_like_one_in_the_main_process(tmp_path):
    # The workers ignore SIGTERM (so a signal to the process group spares them); a worker's error used to leave
    # them alive at exit, where multiprocessing's SIGTERM-then-join waited for good. Two workers: the SIGCHLD
    # of the first one killed must not stop the second from being killed.
    root = _image_folder(tmp_path / "images", corrupt=True)
    overrides = ["data.name=imagefolder", f"data.root={root}", "backbone.name=small_cnn", "augment.crop_size=8",
                 "method.proj_hidden_dim=16", "method.proj_output_dim=8", "method.pred_hidden_dim=16",
                 "data.batch_size=2", "data.num_workers=2", "trainer.max_epochs=1", "trainer.progress_bar=false",
                 "trainer.tensorboard=false", "eval.knn_k=3"]
    # A hang guard, not a timing: the run exits in seconds; before the fix it never did.
    proc = subprocess.run([DIMCL, "pretrain", "-o", str(tmp_path / "fail"), *overrides], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr, proc.stderr[-2000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("dimcl pretrain: error: ")]
    assert len(line) == 1 and "cannot read image" in line[0] and "data.on_bad_image=skip" in line[0], proc.stderr
    assert not (tmp_path / "fail").exists()  # and left nothing behind


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


# --------------------------------------------------------------------------------------------------
# Round two (issue 12): no code from data files, one writer per run directory, failing writes, --resume auto,
# corrupt and hostile data.

QUICK = [*TINY_RUN, "eval.every=0", "eval.diagnose=false"]


def _quick(root: Path, run: Path, *extra: str) -> list[str]:
    return [DIMCL, "pretrain", "-c", "fashion_mnist/byol", "-o", str(run), f"data.root={root}", *QUICK, *extra]


def _without_timing(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run)]


def _assert_clean_failure(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(message) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in message[0], f"{needle!r} not in {message[0]!r}"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_with_a_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good))
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": good["data"], "labels": [0, 1],
                                                        "note": _Payload(marker)}, protocol=2))
    proc = subprocess.run([DIMCL, "pretrain", "-c", "cifar10/byol", "-o", str(tmp_path / "run"),
                           f"data.root={tmp_path / 'cifar'}", "backbone.name=small_cnn", *QUICK],
                          capture_output=True, text=True, timeout=300)
    _assert_clean_failure(proc, 2, "data_batch_1", "refusing", "posix.system")
    assert not marker.exists(), "the pickle's payload ran"
    assert not (tmp_path / "run").exists()
    # What real CIFAR files hold still loads, whichever protocol wrote it (numpy 1.x names included).
    plain = {b"batch_label": b"x", "data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [np.int64(3), 4],
             "f": 1.5, "names": ["a", "b"]}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        raw = pickle.dumps(plain, protocol=protocol)
        (tmp_path / "p").write_bytes(raw.replace(b"numpy._core", b"numpy.core") if protocol == 2 else raw)
        loaded = load_safe_pickle(tmp_path / "p")
        assert np.array_equal(loaded["data"], plain["data"]) and loaded["labels"] == [3, 4] and loaded["f"] == 1.5


def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding the run directory's lock, as a running `dimcl pretrain` does."""
    code = ("import sys, time; from dimcl.run_dir import hold_run_dir\n"
            "with hold_run_dir(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_two_pretrains_on_one_directory_the_second_exits_2_naming_the_first(tiny_fashion_mnist, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_quick(tiny_fashion_mnist, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 300
    while not (run / LOCK).is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # Paused while it holds the lock: a tiny run could otherwise end before the second has even started
    # (then the second would only meet the finished run's checkpoint, not its writer).
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(_quick(tiny_fashion_mnist, run), capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-3000:]
    _assert_clean_failure(second, 2, str(run), f"process {first.pid}")
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]  # not [1, 1, 2, 2]
    assert not (run / LOCK).exists()


def test_writers_wait_readers_do_not_and_a_killed_holder_leaves_no_stale_lock(finished_run, tmp_path, capsys):
    # The lock's holder is another process; the commands run in this one (the command's own code, without an
    # interpreter start-up each).
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    holder = _hold_lock(run)
    try:
        analyze = _run_in_process(capsys, "analyze", "--ckpt", str(run), "--images", "16")
        _assert_clean_failure(analyze, 2, str(run), f"process {holder.pid}")
        # kNN writes knn.json (and the feature cache): a writer like every evaluation, refused alike.
        knn = _run_in_process(capsys, "knn", "--ckpt", str(run))
        _assert_clean_failure(knn, 2, str(run), f"process {holder.pid}")
        # A reader that only reads takes no lock.
        report = _run_in_process(capsys, "report", str(tmp_path), "--out", str(tmp_path / "out" / "report.md"))
        assert report.returncode == 0, report.stderr[-3000:]
        assert "1 run(s)" in (tmp_path / "out" / "report.md").read_text()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK).exists()  # SIGKILL left the file, but the OS released the lock
    analyze = _run_in_process(capsys, "analyze", "--ckpt", str(run), "--images", "16")
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    assert (run / "diversity.json").is_file() and not (run / LOCK).exists()


def test_overwrite_replaces_a_previous_run_and_its_stale_results(finished_run, tiny_fashion_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "knn.json").write_text('{"knn_top1": 55.5}\n')  # an evaluation of the previous run
    args = ["pretrain", "-c", "fashion_mnist/byol", "-o", str(run), f"data.root={tiny_fashion_mnist}", *TINY_RUN,
            "trainer.max_epochs=1", "eval.every=0", "seed=7"]
    refused = _run_in_process(capsys, *args)
    _assert_clean_failure(refused, 2, "already holds a run", "--resume")
    assert _run_in_process(capsys, *args, "--overwrite").returncode == 0
    assert not (run / "knn.json").exists()  # no stale result is read as the new run's
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert len((run / "provenance.jsonl").read_text().splitlines()) == 1
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["config"]["seed"] == 7


def _run_in_process(capsys: pytest.CaptureFixture, *argv: str) -> subprocess.CompletedProcess:
    """:func:`run_in_process` as the CompletedProcess :func:`_assert_clean_failure` reads."""
    code, stderr = run_in_process(list(argv), capsys)
    return subprocess.CompletedProcess(["dimcl", *argv], code, "", stderr)


@pytest.fixture(scope="module")
def uninterrupted(tiny_fashion_mnist, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(_quick(tiny_fashion_mnist, run), check=True, capture_output=True, timeout=600)
    return run


@pytest.mark.parametrize(("site", "allowed", "named", "resume"), [
    ("checkpoint", 1, "checkpoints/last.ckpt", "--resume"),  # epoch 2's checkpoint
    ("metrics", 1, "metrics.jsonl", "--resume"),  # epoch 2's line, after its checkpoint
    ("csv", 1, "metrics.csv", "--resume"),  # epoch 2's CSV row, after its metrics line, emptying the file
    ("config", 0, "config.yaml", "--resume=auto"),  # before anything else: nothing to resume, auto starts
    ("export", 0, "backbone.safetensors", "--resume=auto"),  # after the last epoch
])
def test_a_full_disk_at_each_write_site_stops_cleanly_and_resume_continues(
        site, allowed, named, resume, tiny_fashion_mnist, uninterrupted, tmp_path):
    run = tmp_path / "run"
    script = Path(__file__).with_name("failing_write.py")
    failed = subprocess.run([sys.executable, str(script), site, str(allowed), *_quick(tiny_fashion_mnist, run)[1:]],
                            capture_output=True, text=True, timeout=600)
    _assert_clean_failure(failed, 1, named, "No space left on device", "--resume")
    # What was written before is whole: every metrics line parses, the checkpoint loads, no temporary files.
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    assert all(json.loads(line) for line in lines)
    expected_epochs = {"checkpoint": [1], "metrics": [1], "csv": [1, 2], "config": [], "export": [1, 2]}[site]
    assert [r["epoch"] for r in read_metrics(run)] == expected_epochs
    if expected_epochs:
        epoch = load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"]
        assert epoch == (2 if site in ("metrics", "csv", "export") else 1)
    if (run / "config.yaml").exists():
        load_config(run / "config.yaml")
    assert not [p for p in run.rglob("*.tmp")] and not (run / LOCK).exists()

    resumed = subprocess.run([*_quick(tiny_fashion_mnist, run), resume], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _without_timing(run) == _without_timing(uninterrupted)
    a = load_checkpoint(run / "checkpoints" / "last.ckpt")
    b = load_checkpoint(uninterrupted / "checkpoints" / "last.ckpt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # The CSV log continues in one file, one row per epoch.
    assert [p.name for p in (run / "logs").iterdir()] == ["version_0"]
    with open(run / "logs" / "version_0" / "metrics.csv") as f:
        assert [int(float(row["step"])) for row in csv.DictReader(f)] == [1, 2]


def _png(path: Path, width: int, height: int, pixels: bool = True) -> None:
    """An 8-bit grayscale PNG of zeros, compressed row by row (a 10000 x 10000 one is ~100 kB: a bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush() if pixels else b"\x78\x9c"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_hostile_image_folders_fail_clearly_or_are_skipped_and_counted_never_hang(tmp_path):
    root = _image_folder(tmp_path / "images", corrupt=False)
    bad = root / "train" / "a"
    (bad / "empty.png").write_bytes(b"")
    (bad / "gone.png").symlink_to(tmp_path / "nowhere.png")  # unreadable: dangling
    os.mkfifo(bad / "fifo.png")  # opening it for reading would wait for a writer forever
    _png(bad / "bomb_warning.png", 10_000, 10_000)  # over PIL's limit: decodes 100 MB unless refused
    _png(bad / "bomb_error.png", 30_000, 30_000, pixels=False)  # over twice the limit
    good = root / "train" / "b"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(good / "cmyk.jpg")  # red
    Image.fromarray(np.full((8, 8), 40_000, np.uint16)).save(good / "sixteen.png")  # 40000 / 256 = 156

    skipping = build_dataset("imagefolder", root, "pretrain", on_bad_image="skip")
    items = {Path(skipping.paths[i]).name: skipping._read(i) for i in range(len(skipping))
             if Path(skipping.paths[i]).parent.name == "b"}
    assert np.asarray(items["cmyk.jpg"])[0, 0].tolist()[0] > 200 and np.asarray(items["cmyk.jpg"])[0, 0, 1] < 50
    assert np.asarray(items["sixteen.png"]).tolist()[0][0] == [156, 156, 156]
    [skipping[i] for i in range(len(skipping))]
    assert skipping.bad_images == 5 + 4 + 3 + 2 + 1  # the bad files sort together: an access counts each one it passes

    overrides = ["data.name=imagefolder", f"data.root={root}", "backbone.name=small_cnn", "augment.crop_size=8",
                 "method.proj_hidden_dim=16", "method.proj_output_dim=8", "method.pred_hidden_dim=16",
                 "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1", "trainer.progress_bar=false",
                 "trainer.tensorboard=false", "eval.knn_k=3", "eval.diagnose=false"]
    failing = subprocess.run([DIMCL, "pretrain", "-o", str(tmp_path / "fail"), *overrides], capture_output=True,
                             text=True, timeout=300)
    _assert_clean_failure(failing, 2, "cannot read image", "data.on_bad_image=skip")
    skipped = subprocess.run([DIMCL, "pretrain", "-o", str(tmp_path / "skip"), *overrides, "data.on_bad_image=skip"],
                             capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert read_metrics(tmp_path / "skip")[0]["bad_images_skipped"] >= 1


def _corrupt_data_cases(tmp_path: Path) -> list[tuple[str, str, Path, str]]:
    """(name, data.name, data.root, the file the message must name) for damaged files in each format."""
    cases = []

    def fashion(name: str, damage) -> None:
        root = write_fashion_mnist(tmp_path / name, n_train=32, n_test=16)
        cases.append((name, "fashion_mnist", root, damage(root)))

    def truncate(root: Path) -> str:
        path = root / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:200])
        return path.name

    def magic(root: Path) -> str:
        path = root / "train-labels-idx1-ubyte.gz"
        data = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + data[4:]))
        return path.name

    def labels(root: Path) -> str:
        path = root / "train-labels-idx1-ubyte.gz"
        data = bytearray(gzip.decompress(path.read_bytes()))
        data[8] = 42
        path.write_bytes(gzip.compress(bytes(data)))
        return path.name

    def short_header(root: Path) -> str:
        path = root / "train-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x03\xff\xff\xff\xff" * 2))
        return path.name

    for name, damage in (("idx truncated", truncate), ("idx magic", magic), ("idx labels", labels),
                         ("idx header", short_header)):
        fashion(name, damage)

    def cifar(name: str, first: object) -> None:
        folder = tmp_path / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        good = pickle.dumps({"data": np.zeros((20, 3072), np.uint8), "labels": list(range(10)) * 2})
        for part in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch"]:
            (folder / part).write_bytes(good)
        (folder / "data_batch_1").write_bytes(first if isinstance(first, bytes) else pickle.dumps(first))
        cases.append((name, "cifar10", tmp_path / name, "data_batch_1"))

    cifar("cifar truncated", pickle.dumps({"data": np.zeros((20, 3072), np.uint8)})[:150])
    cifar("cifar not a batch", [1, 2, 3])
    cifar("cifar data shape", {"data": np.zeros((20, 100), np.uint8), "labels": [0] * 20})
    cifar("cifar labels", {"data": np.zeros((20, 3072), np.uint8), "labels": 7})
    cifar("cifar label range", {"data": np.zeros((20, 3072), np.uint8), "labels": [11] * 20})

    def stl(name: str, x_bytes: int, y: bytes) -> None:
        folder = tmp_path / name / "stl10_binary"
        folder.mkdir(parents=True)
        for part, count in (("train", 20), ("test", 10), ("unlabeled", 20)):
            (folder / f"{part}_X.bin").write_bytes(bytes(count * 3 * 96 * 96))
        (folder / "test_y.bin").write_bytes(bytes([1] * 10))
        (folder / "train_y.bin").write_bytes(y)
        (folder / "train_X.bin").write_bytes(bytes(x_bytes))
        cases.append((name, "stl10", tmp_path / name, "train_X.bin" if x_bytes % (3 * 96 * 96) else "train_y.bin"))

    stl("stl truncated images", 20 * 3 * 96 * 96 - 5, bytes([1] * 20))
    stl("stl truncated labels", 20 * 3 * 96 * 96, bytes([1] * 19))
    stl("stl label range", 20 * 3 * 96 * 96, bytes([0] * 20))
    return cases


#: the corrupt-file cases also run as a real `dimcl` process (the others call the CLI's main() in this
#: process, as the bad-input test does: 12 process starts were 44 s of imports)
CORRUPT_AS_PROCESS = ("idx truncated", "cifar not a batch", "stl truncated images")


def test_corrupt_dataset_files_are_a_clear_error_naming_the_file(tmp_path, capsys):
    cases = _corrupt_data_cases(tmp_path)
    assert set(CORRUPT_AS_PROCESS) <= {case[0] for case in cases}

    def args(name: str, dataset: str, root: Path) -> list[str]:
        return ["pretrain", "-o", str(tmp_path / "out" / name.replace(" ", "_")), f"data.name={dataset}",
                f"data.root={root}", "backbone.name=small_cnn", *QUICK]

    results = [(name, file, run_in_process(args(name, dataset, root), capsys)) for name, dataset, root, file in cases]
    also = [case for case in cases if case[0] in CORRUPT_AS_PROCESS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda case: run_as_process(args(case[0] + " process", *case[1:3])), also))
    results += [(f"{case[0]} (a process)", case[3], outcome) for case, outcome in zip(also, outcomes, strict=True)]
    for name, file, (code, stderr) in results:
        assert code == 2, f"{name}: exit {code}\n{stderr[-2000:]}"
        assert file in stderr and "Traceback" not in stderr, f"{name}: {stderr[-2000:]}"
