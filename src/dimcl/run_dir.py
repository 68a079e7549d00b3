"""The layout of a run directory, and reading it back.

    <run>/config.yaml                 the resolved configuration
    <run>/metrics.jsonl               one JSON record per epoch, appended
    <run>/checkpoints/last.ckpt       resumable state, replaced atomically every epoch
    <run>/backbone.safetensors        the trained backbone, exported at the end
    <run>/provenance.jsonl            what the run ran on (dimcl commit, versions, machine), a line per start
    <run>/logs/, <run>/tensorboard/   Fabric's CSV and TensorBoard loggers
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dimcl.config import Config, ConfigError, config_from_dict

CONFIG = "config.yaml"
CHECKPOINT = Path("checkpoints") / "last.ckpt"
METRICS = "metrics.jsonl"
BACKBONE = "backbone.safetensors"
PROVENANCE = "provenance.jsonl"
#: floors and ceiling of a run's or a sweep's protocol (``dimcl baselines``)
BASELINES = "baselines.json"
#: metrics that measure the machine, not the run: they differ between two runs of the same config
TIMING_KEYS = ("epoch_time_s", "images_per_s", "data_wait_fraction")


def load_run_config(run_dir: str | Path) -> Config:
    """The validated config of a run directory."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ConfigError(f"'{run_dir}' is not a dimcl run directory: it has no {CONFIG}")
    return config_from_dict(yaml.safe_load(path.read_text()))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-epoch records in epoch order; for an epoch recorded twice the later line wins."""
    path = Path(run_dir) / METRICS
    by_epoch: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                by_epoch[int(record["epoch"])] = record
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
    return [by_epoch[e] for e in sorted(by_epoch)]


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def append_provenance(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Add one start (or resume) of the run: see :func:`dimcl.provenance.provenance`."""
    with open(Path(run_dir) / PROVENANCE, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_provenance(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every start of the run, oldest first (empty for runs made before it was recorded)."""
    path = Path(run_dir) / PROVENANCE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill
    return records


def restore_metrics(run_dir: str | Path, checkpoint_record: dict[str, Any]) -> None:
    """On resume: append the checkpoint's record if the run died between checkpoint and metrics line."""
    if checkpoint_record["epoch"] not in {r["epoch"] for r in read_metrics(run_dir)}:
        append_metrics(run_dir, checkpoint_record)
