"""The optional Weights & Biases logger, in W&B's offline mode (nothing leaves the machine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import TINY_RUN

from dimcl.checkpoint import load_checkpoint
from dimcl.config import ConfigError
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import read_metrics
from dimcl.train.loop import pretrain

pytestmark = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="pip install 'dimcl[wandb]'")


def _records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a 7-byte header (":W&B", magic, version), then
    LevelDB-log records (crc 4 bytes, length 2 bytes little-endian, type 1 byte: full 1, first 2, middle 3,
    last 4) in 32 KiB blocks whose tails shorter than a record header are padding."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _history(run_dir: Path) -> dict[str, dict[int, float]]:
    """{W&B run id: {step: logged loss}} over every local W&B run folder of a dimcl run."""
    import json

    runs: dict[str, dict[int, float]] = {}
    for file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run_id = file.stem.removeprefix("run-")
        for record in _records(file):
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                runs.setdefault(run_id, {})[items["_step"]] = items["loss"]
    return runs


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))


def test_a_run_and_its_resume_log_into_one_wandb_run(tiny_fashion_mnist, tmp_path, offline):
    def config(epochs: int):
        return load_config(resolve_recipe("fashion_mnist/byol"), [
            *TINY_RUN, f"data.root={tiny_fashion_mnist}", "eval.every=0", f"trainer.max_epochs={epochs}",
            "trainer.wandb=true", "trainer.wandb_project=dimcl-test",
        ])

    run = tmp_path / "run"
    pretrain(config(1), run)
    run_id = load_checkpoint(run / "checkpoints" / "last.ckpt")["wandb_run_id"]
    assert len(run_id) == 8
    pretrain(config(2), run, resume=True)  # a resume, as after a preemption
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["wandb_run_id"] == run_id
    losses = {r["epoch"]: r["loss"] for r in read_metrics(run)}
    assert _history(run) == {run_id: losses}  # one W&B run, every epoch at step = epoch, the same figures
    assert len(list(run.glob("wandb/offline-run-*"))) == 2  # two processes wrote it, as two local folders


def test_a_plain_run_keeps_no_wandb_id(tiny_fashion_mnist, tmp_path):
    cfg = load_config(resolve_recipe("fashion_mnist/byol"),
                      [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "eval.every=0", "trainer.max_epochs=1"])
    pretrain(cfg, tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["wandb_run_id"] is None
    assert not (tmp_path / "wandb").exists()


def test_wandb_without_the_package_is_a_config_error(tiny_fashion_mnist, tmp_path, monkeypatch):
    from dimcl.train import wandb_logs

    monkeypatch.setattr(wandb_logs.importlib.util, "find_spec", lambda name: None)
    cfg = load_config(resolve_recipe("fashion_mnist/byol"), [*TINY_RUN, f"data.root={tiny_fashion_mnist}",
                                                             "trainer.wandb=true"])
    with pytest.raises(ConfigError, match=r"pip install 'dimcl\[wandb\]'"):
        pretrain(cfg, tmp_path)
