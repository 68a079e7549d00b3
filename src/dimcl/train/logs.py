"""Fabric's CSV and TensorBoard loggers, one log per run directory that a resume continues.

Fabric's own loggers open a new ``version_N`` folder on every start, so a run resumed three times has
four partial logs. Here every start writes into the run's latest version (``logs/version_0`` for a new
run) and first drops what was logged after the epoch it resumes from (an epoch the resumed run
trains again), so the log reads as one uninterrupted run. Call :meth:`continue_from` before logging.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers import CSVLogger
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.utilities.rank_zero import rank_zero_only

from dimcl.files import write_atomic
from dimcl.run_dir import read_metrics


def _latest_version(next_version: int) -> int:
    return max(next_version - 1, 0)


class _ContinuingCSVWriter(_ExperimentWriter):
    """Keeps the rows of ``metrics.csv`` up to ``keep_through`` (Fabric's writer deletes the file), and writes
    back the rows of those epochs that the file lacks from ``records`` (the run's metrics.jsonl lines): a write
    that failed on a full disk may have left the file cut short or empty, and the resumed log reads whole."""

    def __init__(self, log_dir: str, keep_through: int, records: list[dict[str, Any]] | None = None) -> None:
        self.keep_through = keep_through
        self.records = records or []
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        fields: list[str] = []
        rows: list[dict[str, Any]] = []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                fields = list(reader.fieldnames or [])
                rows = [row for row in reader if _step_of(row) is not None and _step_of(row) <= self.keep_through]
        logged = {_step_of(row) for row in rows}
        for record in self.records:
            if record["epoch"] <= self.keep_through and record["epoch"] not in logged:
                rows.append({**{k: v for k, v in record.items() if k != "epoch"}, "step": record["epoch"]})
        if not rows:
            path.unlink(missing_ok=True)
            return
        rows.sort(key=_step_of)
        fields = sorted(set(fields).union(*rows))
        self.metrics_keys = fields
        path.parent.mkdir(parents=True, exist_ok=True)  # a run killed before its first CSV row has no folder yet
        lines: list[str] = []
        writer = csv.DictWriter(_Lines(lines), fieldnames=fields, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(path, "".join(lines).encode())


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, text: str) -> None:
        self.lines.append(text)


def _step_of(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class RunCSVLogger(CSVLogger):
    """``<run>/logs/version_N/metrics.csv``, written every epoch and continued on resume."""

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        # One log call per epoch: flush each, so a kill loses at most the epoch in progress.
        super().__init__(root_dir=root_dir, name="logs", flush_logs_every_n_steps=1)
        self._keep_through: int | None = None
        self._records: list[dict[str, Any]] = []

    def continue_from(self, epochs_done: int) -> None:
        """Log into the latest version, keeping what was logged for epochs ``<= epochs_done`` (and writing back
        those epochs' rows from metrics.jsonl where the file lacks them)."""
        self._version = _latest_version(self._get_next_version())
        self._keep_through = epochs_done
        self._records = read_metrics(self.root_dir) if epochs_done else []
        if epochs_done and rank_zero_only.rank == 0:
            self.experiment  # noqa: B018 (the writer mends the file now, even if nothing else is logged)

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None and self._keep_through is not None and rank_zero_only.rank == 0:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingCSVWriter(self.log_dir, self._keep_through, self._records)
        return super().experiment

    @property
    def metrics_file(self) -> Path:
        return Path(self.log_dir) / _ExperimentWriter.NAME_METRICS_FILE


def tensorboard_logger(root_dir: str | os.PathLike[str]) -> Any:
    """A :class:`RunTensorBoardLogger`, or None when tensorboard is not installed (it is optional)."""
    try:
        from lightning.fabric.loggers import TensorBoardLogger
    except (ImportError, ModuleNotFoundError):
        return None

    class RunTensorBoardLogger(TensorBoardLogger):
        """``<run>/tensorboard/version_N``, continued on resume (events after the resumed epoch are purged)."""

        def continue_from(self, epochs_done: int) -> None:
            self._version = _latest_version(self._get_next_version())
            # SummaryWriter's own mechanism for resumed runs: hides events at steps >= purge_step.
            self._kwargs["purge_step"] = epochs_done + 1

    try:
        return RunTensorBoardLogger(root_dir=str(root_dir), name="tensorboard")
    except ModuleNotFoundError:
        return None


def continue_logs(loggers: list[Any], epochs_done: int, wandb_run_id: str | None = None) -> None:
    """Point every logger of the run that can continue at the run's latest log (see the module docstring);
    the W&B logger at the checkpoint's W&B run."""
    for logger in loggers:
        if getattr(logger, "name", None) == "wandb":
            logger.continue_from(epochs_done, wandb_run_id)
        elif hasattr(logger, "continue_from"):
            logger.continue_from(epochs_done)
