"""A pretraining's run directory from the trainer's side, in the order the loop goes through it.

    check_run_folder       before Fabric starts: --out can hold a run, ``resume`` is True, False or "auto"
    run_loggers            the loggers Fabric writes through (CSV, TensorBoard, W&B), all inside the run directory
    RunWriter(...)         notes the checkpoint it is about to read (or finds missing)
      .open(resume)        the checkpoint to continue from, or None; refuses a directory that holds a run
                           (without --resume) and a checkpoint of another experiment
      .become_writer()     rank 0 takes the directory's lock, once the data and the model are built
      .start_writing(...)  config.yaml, provenance, and the metrics line a kill cut off
      .save(...)           checkpoints/last.ckpt, atomically, mid-epoch or after an epoch
      .append_metrics(...) the epoch's line of metrics.jsonl
      .finish(...)         backbone.safetensors, and the loggers closed

The lock is taken late on purpose: bad input, found while opening the data, never competes for it and
leaves nothing behind. Rank 0 writes; the other ranks wait for it at a barrier.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from lightning.fabric import Fabric
from lightning.fabric.loggers import Logger
from torch import nn
from torch.optim import Optimizer

from dimcl.build import backbone_metadata
from dimcl.checkpoint import export_backbone, load_checkpoint, save_atomic
from dimcl.config import Config, ConfigError, save_config
from dimcl.errors import BadInputError
from dimcl.eval.registry import EVALUATIONS
from dimcl.experiment import experiment_differences
from dimcl.files import check_output_folder, failed_write
from dimcl.provenance import provenance
from dimcl.run_dir import (
    BACKBONE,
    BASELINES,
    CHECKPOINT,
    CONFIG,
    FEATURE_CACHE,
    LOCK,
    METRICS,
    PROVENANCE,
    RunDirBusyError,
    append_metrics,
    append_provenance,
    checkpoint_state,
    hold_run_dir,
    restore_metrics,
)
from dimcl.train.logs import RunCSVLogger, continue_logs, tensorboard_logger
from dimcl.train.wandb_logs import RunWandbLogger, wandb_run_id

#: what identifies one version of a file: inode, size, modification time (None: no file)
FileIdentity = tuple[int, int, int] | None


def run_artifacts() -> frozenset[str]:
    """The names dimcl itself writes at the top of a run directory (its files, folders and evaluation results)."""
    return frozenset({CONFIG, METRICS, BACKBONE, PROVENANCE, LOCK, BASELINES, FEATURE_CACHE, CHECKPOINT.parts[0],
                      "logs", "tensorboard", "wandb", *(evaluation.file for evaluation in EVALUATIONS.values()),
                      *(name for evaluation in EVALUATIONS.values() for name in evaluation.outputs)})


def _artifacts_among(names: set[str]) -> set[str]:
    """The names of ``names`` that dimcl wrote (an evaluation's result files by its ``file_pattern``, so
    ``linear_10pct.json`` too); an atomic write's temporary sibling (".<name>.XXXX.tmp") that a kill left
    behind is dimcl's too."""
    artifacts = run_artifacts()
    patterns = [evaluation.file_pattern for evaluation in EVALUATIONS.values()]
    return {name for name in names if name in artifacts or (name.startswith(".") and name.endswith(".tmp"))
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}


def check_run_folder(out_dir: Path, resume: bool | str, overwrite: bool = False) -> set[str]:
    """Bad input before anything starts: an ``--out`` that cannot become a run directory, a bad ``resume``.

    A new run goes into a new folder, an empty one, or (with ``overwrite``) a previous run's folder holding
    dimcl's files only; ``--resume`` continues a run's folder (with a checkpoint), whatever else it holds.
    ``resume="auto"`` without a checkpoint starts over a previous start's own files (a requeued job killed
    before its first checkpoint). A folder with other files is never a new run's. Returns the folder's
    entries as they are now, before anything of the run starts (none when it does not exist).
    """
    check_output_folder(out_dir, "--out", "the run")
    if resume not in (True, False, "auto"):
        raise ConfigError(f"resume must be true, false or 'auto', got {resume!r}")
    found = _entries(out_dir)
    has_checkpoint = (out_dir / CHECKPOINT).is_file()
    if resume is True or (resume == "auto" and has_checkpoint):
        return found  # continuing: the checkpoint's checks follow (RunWriter.open)
    entries = found - {LOCK}
    foreign = sorted(entries - _artifacts_among(entries))
    refusal = None
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        refusal = (f"--out '{out_dir}' holds files dimcl did not write ({shown}); a new run goes into a new or empty "
                   "folder (or a previous run's own folder, with --overwrite). Nothing was changed.")
    elif entries and not has_checkpoint and not overwrite and resume != "auto":
        refusal = (f"--out '{out_dir}' holds a previous run's files ({', '.join(sorted(entries)[:5])}) but no "
                   "checkpoint to resume; pass --overwrite to replace that run (its results too), or choose another "
                   "--out directory. Nothing was changed.")
    if refusal is not None:
        if (out_dir / LOCK).exists():
            with hold_run_dir(out_dir):  # a run writing there right now: say so, naming it (RunDirBusyError)
                pass
        raise BadInputError(refusal)
    return found


def run_loggers(cfg: Config, out_dir: Path) -> list[Logger]:
    """The run's loggers: the CSV log always, TensorBoard and W&B when ``trainer.*`` asks for them."""
    t = cfg.trainer
    loggers: list[Logger] = [RunCSVLogger(out_dir)]
    if t.tensorboard:
        tensorboard = tensorboard_logger(out_dir)  # None without tensorboard: `pip install dimcl[tensorboard]`
        if tensorboard is not None:
            loggers.append(tensorboard)
    if t.wandb:
        loggers.append(RunWandbLogger(out_dir, t.wandb_project, t.wandb_entity, t.wandb_name, cfg.to_dict()))
    return loggers


def check_resume(cfg: Config, state: dict[str, Any]) -> list[str]:
    """Refuse a checkpoint of another config; a larger ``trainer.max_epochs`` is allowed, with a notice."""
    blocking = experiment_differences(state["config"], cfg.to_dict(), epochs="any")
    if blocking:
        listed = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in blocking)
        raise ConfigError(
            f"cannot resume: the checkpoint was made with another configuration ({listed}). Resume with the "
            "run's own settings (its config.yaml), or start a new run in another --out directory."
        )
    notices = []
    old_epochs = state["config"]["trainer"]["max_epochs"]
    if cfg.trainer.max_epochs < state["epoch"]:
        raise ConfigError(
            f"cannot resume: trainer.max_epochs={cfg.trainer.max_epochs} is below the {state['epoch']} epochs "
            "the checkpoint has already trained"
        )
    if cfg.trainer.max_epochs != old_epochs:
        notices.append(
            f"trainer.max_epochs changed from {old_epochs} to {cfg.trainer.max_epochs}: the learning-rate and "
            "momentum schedules are stretched to the new length from here on"
        )
    return notices


def _entries(folder: Path) -> set[str]:
    """The names in ``folder`` (none when it does not exist)."""
    return set(os.listdir(folder)) if folder.is_dir() else set()


def _remove(path: Path) -> None:
    """A file or a folder of the run directory (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _file_identity(path: Path) -> FileIdentity:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class RunWriter:
    """This pretraining's hold on its run directory; a context manager that releases the lock on the way out.

    Made right after Fabric's launch, when it notes the checkpoint the run is about to read (or the lack of
    one): :meth:`become_writer` refuses to write if another process changed it meanwhile.
    """

    def __init__(self, cfg: Config, out_dir: Path, fabric: Fabric, entries_before: set[str],
                 overwrite: bool = False) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.fabric = fabric
        self.overwrite = overwrite
        self._lock = ExitStack()  # entered by become_writer, just before the first write
        self._checkpoint_seen = _file_identity(self.checkpoint)
        #: the run directory's entries before this run (check_run_folder's, before Fabric starts)
        self._entries_before = set(entries_before)
        #: a new run that wrote its config but no checkpoint yet: bad input met now leaves nothing behind
        self._unsaved_new_run = False

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if isinstance(error, BadInputError) and self._unsaved_new_run and self.is_main:
            self._remove_what_this_run_wrote()  # still holding the lock
        return self._lock.__exit__(kind, error, traceback)

    def _remove_previous_run(self) -> None:
        """A new run over a previous run's own files (``--overwrite``, or ``--resume auto`` without a checkpoint):
        its checkpoint, metrics, provenance, backbone and evaluation results go, so that nothing stale is read as
        this run's. The logs stay (the loggers hold them open; a new run's logs restart at epoch 0)."""
        previous = _artifacts_among(self._entries_before) - {LOCK, "logs", "tensorboard", "wandb"}
        for name in previous:
            _remove(self.out_dir / name)
        self._entries_before -= previous

    def _remove_what_this_run_wrote(self) -> None:
        """Bad input met while training (an unreadable image) before the first checkpoint of a new run: the
        run's config, provenance, empty checkpoints folder and logs go again, so the refusal changes nothing."""
        for name in _entries(self.out_dir) - self._entries_before - {LOCK}:
            _remove(self.out_dir / name)

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / CHECKPOINT

    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    def open(self, resume: bool | str) -> dict[str, Any] | None:
        """The checkpoint to continue from (None for a new run: a resumed run always has one); the loggers
        continue from the checkpoint's epoch."""
        fabric = self.fabric
        if resume == "auto":
            resume = self.checkpoint.is_file()
            if fabric.world_size > 1:
                resume = fabric.broadcast(resume, src=0)  # what rank 0, the writer, sees
        state = None
        notices: list[str] = []
        if resume:
            state = load_checkpoint(self.checkpoint)
            notices = check_resume(self.cfg, state)
        elif self.checkpoint.exists() and not self.overwrite:
            raise ConfigError(
                f"'{self.out_dir}' already holds a run (it has {CHECKPOINT}); pass --resume to continue it (or "
                "--resume auto), or choose another --out directory. Nothing was changed."
            )
        if state is not None:
            continue_logs(fabric.loggers, state["epoch"], state.get("wandb_run_id"))
        else:
            continue_logs(fabric.loggers, 0)
        for notice in notices:
            fabric.print(f"notice: {notice}")
        return state

    def become_writer(self) -> None:
        """Rank 0 takes the run directory's lock; every rank stops if another process holds it, or wrote a
        checkpoint since this run read (or looked for) one."""
        error = None
        if self.is_main:
            try:
                self._lock.enter_context(hold_run_dir(self.out_dir))
                if _file_identity(self.checkpoint) != self._checkpoint_seen:
                    error = (
                        f"'{self.out_dir}' changed while this run was starting: another process wrote {CHECKPOINT} "
                        "meanwhile. Nothing was written; start this run again."
                    )
            except RunDirBusyError as err:
                error = str(err)
        if self.fabric.world_size > 1:
            error = self.fabric.broadcast(error, src=0)
        if error is not None:
            raise RunDirBusyError(error)

    def start_writing(self, state: dict[str, Any] | None, start_epoch: int) -> None:
        """Rank 0 writes the run's config and provenance (and mends a metrics line a kill cut off)."""
        self._unsaved_new_run = state is None
        if self.is_main:
            if state is None:
                self._remove_previous_run()
            self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out_dir / CONFIG)
            resumed_at = start_epoch if state is not None else None
            append_provenance(self.out_dir, {**provenance(self.fabric.device), "resumed_at_epoch": resumed_at})
            if state is not None and state["metrics"] is not None and restore_metrics(self.out_dir, state["metrics"]):
                # Logged after the metrics line, so the logs lack the mended epoch as well.
                metrics = state["metrics"]
                self.log_record(metrics)
        self.fabric.barrier()

    def save(self, model: nn.Module, optimizer: Optimizer, *, epoch: int, batch_in_epoch: int,
             progress: dict[str, Any], global_step: int, metrics: dict[str, Any] | None) -> None:
        """Rank 0 writes the resumable state atomically; the previous checkpoint stays until then."""
        if self.is_main:
            state = checkpoint_state(
                model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                batch_in_epoch=batch_in_epoch, progress=progress, global_step=global_step,
                config=self.cfg.to_dict(), metrics=metrics, wandb_run_id=wandb_run_id(self.fabric.loggers),
            )
            save_atomic(state, self.checkpoint)
        self._unsaved_new_run = False
        self.fabric.barrier()

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Rank 0 appends the epoch's record to metrics.jsonl (after the checkpoint holding it: a kill in
        between is mended by :meth:`start_writing` on resume)."""
        if self.is_main:
            append_metrics(self.out_dir, record)

    def log_record(self, record: dict[str, Any]) -> None:
        """The epoch's record into every logger (CSV, TensorBoard, W&B), at step = its epoch; a failed write
        (a full disk) stops the run naming the log file, and a resume writes the log back whole."""
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        for logger in self.fabric.loggers:
            target = getattr(logger, "metrics_file", None) or getattr(logger, "log_dir", None) or self.out_dir
            with failed_write(target):
                logger.log_metrics(metrics, step=record["epoch"])

    def finish(self, backbone: nn.Module) -> None:
        """Rank 0 exports the trained backbone; every rank closes its loggers."""
        if self.is_main:
            export_backbone(backbone, self.out_dir / BACKBONE, backbone_metadata(self.cfg, backbone))
        for logger in self.fabric.loggers:
            logger.finalize("success")
        self.fabric.barrier()
