"""The layout of a run directory, and reading it back.

    <run>/config.yaml                 the resolved configuration
    <run>/metrics.jsonl               one JSON record per epoch, appended
    <run>/checkpoints/last.ckpt       resumable state, replaced atomically every epoch (see checkpoint_state)
    <run>/backbone.safetensors        the trained backbone, exported at the end
    <run>/provenance.jsonl            what the run ran on (dimcl commit, versions, machine), a line per start
    <run>/logs/, <run>/tensorboard/   Fabric's CSV and TensorBoard loggers
    <run>/.dimcl.lock                 held (flock) by the one process writing the run; removed when it ends
    <run>/knn.json, linear.json, ...  evaluations of the finished backbone, one file each (dimcl knn, dimcl
                                      linear, ...; the names are in dimcl.eval.EVALUATIONS)
    <run>/diversity.json, *.png       feature-diversity figures and plots (dimcl analyze)
    <run>/features/                   cached features of the evaluation splits, shared by kNN and linear
    <run>/baselines.json              floors and ceiling of the protocol (dimcl baselines; also in a sweep folder)

This module owns these names (the evaluations' files aside) and the checkpoint's layout; nothing else
spells them.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dimcl.config import Config, ConfigError
from dimcl.files import append_line, open_no_follow, write_atomic
from dimcl.recipes import config_from_dict
from dimcl.yaml_files import read_yaml

CONFIG = "config.yaml"
CHECKPOINT = Path("checkpoints") / "last.ckpt"
METRICS = "metrics.jsonl"
BACKBONE = "backbone.safetensors"
PROVENANCE = "provenance.jsonl"
LOCK = ".dimcl.lock"
#: floors and ceiling of a run's or a sweep's protocol (``dimcl baselines``)
BASELINES = "baselines.json"
#: cached features of the evaluation splits (dimcl.eval.features)
FEATURE_CACHE = "features"
#: the checkpoint's model state is the training module's: the method under ``method.`` (so its backbone
#: under ``method.backbone.``) and the online linear probe under ``probe.``
METHOD_PREFIX = "method."
BACKBONE_PREFIX = "method.backbone."
CHECKPOINT_FORMAT = 1
#: metrics that measure the machine, not the run: they differ between two runs of the same config
TIMING_KEYS = ("epoch_time_s", "images_per_s", "data_wait_fraction")


def load_run_config(run_dir: str | Path) -> Config:
    """The validated config of a run directory."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ConfigError(f"'{run_dir}' is not a dimcl run directory: it has no {CONFIG}")
    data = read_yaml(path, f"'{path}'")
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' must hold a run's configuration (a mapping of sections), got "
                          f"{type(data).__name__}; it is not a config.yaml dimcl wrote")
    return config_from_dict(data)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per-epoch records in epoch order; for an epoch recorded twice the later line wins."""
    path = Path(run_dir) / METRICS
    by_epoch: dict[int, dict[str, Any]] = {}
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            epoch = record.get("epoch") if isinstance(record, dict) else None
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise ConfigError(
                    f"'{path}' line {number} is not a record dimcl wrote: its 'epoch' must be a whole number >= 1, "
                    f"got {epoch!r}. Restore the file or remove that line."
                )
            by_epoch[epoch] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def reached_max_epochs(records: list[dict[str, Any]], max_epochs: int) -> bool:
    """Whether the metrics records (:func:`read_metrics`) go up to ``max_epochs``."""
    return bool(records) and records[-1]["epoch"] >= max_epochs


def run_state(run_dir: str | Path, max_epochs: int) -> str:
    """``finished`` (backbone exported and ``max_epochs`` recorded), ``interrupted`` (has a checkpoint) or ``new``."""
    run_dir = Path(run_dir)
    if (run_dir / BACKBONE).is_file() and reached_max_epochs(read_metrics(run_dir), max_epochs):
        return "finished"
    return "interrupted" if (run_dir / CHECKPOINT).is_file() else "new"


def checkpoint_state(
    *,
    model: dict[str, Any],
    optimizer: dict[str, Any],
    epoch: int,
    batch_in_epoch: int,
    progress: dict[str, Any],
    global_step: int,
    config: dict[str, Any],
    metrics: dict[str, Any] | None,
    wandb_run_id: str | None = None,
) -> dict[str, Any]:
    """The resumable state, as ``checkpoints/last.ckpt`` holds it: ``epoch`` epochs done plus
    ``batch_in_epoch`` batches of the next (with that epoch's running sums in ``progress``), the last
    epoch record in ``metrics`` (mended into metrics.jsonl on resume if the run died before writing it), and
    the W&B run a resume continues (``wandb_run_id``, None without ``trainer.wandb``)."""
    return {
        "model": model,
        "optimizer": optimizer,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "progress": progress,
        "global_step": global_step,
        "config": config,
        "metrics": metrics,
        "wandb_run_id": wandb_run_id,
        "format": CHECKPOINT_FORMAT,
    }


def weights_under(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state_dict`` under ``prefix`` (e.g. :data:`BACKBONE_PREFIX`), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def write_result(directory: str | Path, name: str, result: dict[str, Any]) -> Path:
    """Write an evaluation's ``result`` as ``directory/name`` (e.g. ``linear.json``), replacing it atomically."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(result, indent=2) + "\n").encode())
    return path


def read_result(directory: str | Path, name: str) -> dict[str, Any] | None:
    """The evaluation ``directory/name`` as written by :func:`write_result`; None if absent or unreadable."""
    path = Path(directory) / name
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one epoch's record as a whole line (never a torn one, see :func:`dimcl.files.append_line`)."""
    append_line(Path(run_dir) / METRICS, json.dumps(record))


def append_provenance(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Add one start (or resume) of the run: see :func:`dimcl.provenance.provenance`."""
    append_line(Path(run_dir) / PROVENANCE, json.dumps(record))


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


def restore_metrics(run_dir: str | Path, checkpoint_record: dict[str, Any]) -> bool:
    """On resume: append the checkpoint's record if the run died between checkpoint and metrics line.

    Returns whether it did (then the run's CSV / TensorBoard logs lack that epoch too).
    """
    if checkpoint_record["epoch"] not in {r["epoch"] for r in read_metrics(run_dir)}:
        append_metrics(run_dir, checkpoint_record)
        return True
    return False


class RunDirBusyError(ConfigError):
    """Another process is writing the run directory (it holds its lock)."""


#: run directories this process holds, with how many nested holders: a sweep holds a cell's directory
#: around the pretraining that holds it too (a second flock from the same process would block itself)
_held: dict[Path, list[Any]] = {}


def _lock_holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


@contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[None]:
    """Be the one writer of ``run_dir`` while inside: an exclusive ``flock`` on ``<run_dir>/.dimcl.lock``.

    The operating system releases the lock when the process ends, however it ends (SIGKILL included), so
    it never goes stale; the file itself (holding the PID, for the error message) is removed on the way
    out. A second writer gets :class:`RunDirBusyError` naming the directory and the holder's PID. The
    directory is created if needed (and removed again if it is still empty on the way out).
    """
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    while True:
        fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusyError(
                f"'{run_dir}' is being written by {_lock_holder(path)} (it holds {path}); wait for it to finish, "
                "stop it, or choose another directory. Two writers would interleave their metrics and checkpoints."
            ) from None
        # The previous holder may have removed the file between our open and our lock: then we locked a
        # file nobody else can see, and must lock the one now at the path.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the PID is only for the message of a second writer; the lock holds without it
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        path.unlink(missing_ok=True)  # before closing: nobody else can hold it yet
        os.close(fd)
        if created:
            try:
                run_dir.rmdir()  # a run that stopped before writing anything leaves nothing behind
            except OSError:
                pass
