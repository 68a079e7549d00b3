"""The pretraining loop: one readable function for every method, on Lightning Fabric.

    config -> data + model -> for each epoch: steps, kNN, checkpoint, metrics -> backbone.safetensors

Fabric owns devices, precision and data parallelism (DDP, multi-node through torchrun / SLURM); this
file owns the order of things. Schedules are precomputed per optimizer step. Every epoch reseeds the
random state from (seed, epoch), so a run resumed from its epoch checkpoint continues exactly as an
uninterrupted one would (bit-for-bit on the CPU; see train/sampling.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from dimcl.build import backbone_metadata, build_method_from_config
from dimcl.checkpoint import export_backbone, load_checkpoint, save_atomic
from dimcl.config import Config, ConfigError, save_config
from dimcl.data import bad_image_count, run_splits
from dimcl.eval.diversity import diagnose, fixed_eval_batch
from dimcl.eval.offline import knn_of_backbone
from dimcl.experiment import experiment_differences
from dimcl.files import check_output_folder
from dimcl.methods import SSLMethod, cosine_momentum
from dimcl.provenance import provenance
from dimcl.run_dir import (
    BACKBONE,
    CHECKPOINT,
    CONFIG,
    RunDirBusyError,
    append_metrics,
    append_provenance,
    checkpoint_state,
    hold_run_dir,
    restore_metrics,
)
from dimcl.schedules import warmup_cosine
from dimcl.train.errors import NonFiniteLossError, TrainingInterrupted
from dimcl.train.logs import RunCSVLogger, continue_logs, tensorboard_logger
from dimcl.train.optim import build_optimizer, set_learning_rate
from dimcl.train.sampling import EpochFeed
from dimcl.train.step_scalars import StepScalars, StepWhere
from dimcl.train.wandb_logs import RunWandbLogger, wandb_run_id


@dataclass
class EpochProgress:
    """Running sums of the epoch so far (saved in mid-epoch checkpoints, so a resume reports the same)."""

    sums: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    probe_correct: int = 0
    probe_count: int = 0
    elapsed: float = 0.0
    #: seconds the loop waited for the loader (the rest of ``elapsed`` is compute and bookkeeping)
    data_wait: float = 0.0

    def add(self, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            if k.startswith("loss"):
                self.sums[k] = self.sums.get(k, 0.0) + v
        if "probe_count" in scalars:
            self.probe_correct += round(scalars["probe_correct"])
            self.probe_count += round(scalars["probe_count"])
        self.batches += 1


class StopSignals:
    """Turns SIGTERM / SIGINT into a request to save and stop at the next optimizer step.

    A second signal of the same kind while saving is honoured as usual (the default handler).
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, fabric: Fabric, step: int | None = None, every: int = 1) -> bool:
        """Whether any rank was asked to stop (ranks must stop at the same step).

        With several processes the ranks agree through an all-reduce, which waits for the device: at
        optimizer steps it is done only every ``every`` steps (``step`` None: now). One process asks
        every step, which costs nothing.
        """
        flag = self.signal_name is not None
        if fabric.world_size > 1 and step is not None and step % every != 0:
            return False
        if fabric.world_size > 1:
            flag = bool(fabric.all_reduce(torch.tensor(float(flag)), reduce_op="sum") > 0)
            if flag and self.signal_name is None:
                self.signal_name = "a signal on another rank"
        return flag


class Pretrainer(nn.Module):
    """The method plus an online linear probe trained on detached features (one module for DDP)."""

    def __init__(self, method: SSLMethod, probe: nn.Module | None, channels_last: bool = False):
        super().__init__()
        self.method = method
        self.probe = probe
        self.channels_last = channels_last
        if channels_last:
            self.method.to(memory_format=torch.channels_last)

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        out: dict[str, torch.Tensor] = dict(self.method(views))  # the method's MethodOutput, plus the probe's keys
        if self.probe is not None:
            logits = self.probe(out["features"].detach())
            # Unlabelled images (label -1, e.g. STL-10's unlabeled split) do not train the probe. ignore_index and
            # not a boolean mask: indexing by a mask (or `if mask.any()`) waits for the device on every step.
            count = (labels >= 0).sum()
            loss = F.cross_entropy(logits, labels, ignore_index=-1)
            # A batch without labels makes the mean 0/0; its gradient through where() is zero, not NaN.
            out["loss_probe"] = torch.where(count > 0, loss, logits.sum() * 0)
            out["probe_correct"] = (logits.argmax(1) == labels).sum()  # argmax is never -1
            out["probe_count"] = count
        return out


def _loggers(cfg: Config, out_dir: Path) -> list:
    t = cfg.trainer
    loggers: list = [RunCSVLogger(out_dir)]
    if t.tensorboard:
        tensorboard = tensorboard_logger(out_dir)  # None without tensorboard: `pip install dimcl[tensorboard]`
        if tensorboard is not None:
            loggers.append(tensorboard)
    if t.wandb:
        loggers.append(RunWandbLogger(out_dir, t.wandb_project, t.wandb_entity, t.wandb_name, cfg.to_dict()))
    return loggers


def _check_resume(cfg: Config, state: dict[str, Any]) -> list[str]:
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


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns on every process: this run's epoch records and the trained model."""

    records: list[dict[str, Any]]
    model: Pretrainer


def pretrain(cfg: Config, out_dir: str | Path, resume: bool | str = False) -> PretrainResult:
    """Pretrain ``cfg`` into ``out_dir`` (see the module docstring for the order of things).

    ``resume``: False starts a new run (refused where a checkpoint exists), True continues from the
    checkpoint, ``"auto"`` does the one that applies (a requeued cluster job needs no edit). Rank 0 holds
    the run directory's lock from the first write to the end (see :func:`dimcl.run_dir.hold_run_dir`).
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, "--out", "the run")
    if resume not in (True, False, "auto"):
        raise ConfigError(f"resume must be true, false or 'auto', got {resume!r}")
    t = cfg.trainer
    fabric = Fabric(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, loggers=_loggers(cfg, out_dir),
    )
    if t.sync_batchnorm and fabric.device.type != "cuda":
        raise ConfigError(
            f"trainer.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm does not run on "
            f"{fabric.device.type}); set it to false"
        )
    fabric.launch()
    if fabric.device.type == "cuda":
        set_cuda_defaults(t.precision)
    with ExitStack() as writer_lock:  # entered by _become_writer, just before the first write
        return _pretrain(cfg, out_dir, resume, fabric, writer_lock)


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _become_writer(fabric: Fabric, out_dir: Path, writer_lock: ExitStack, checkpoint_seen: Any) -> None:
    """Rank 0 takes the run directory's lock; every rank stops if another process holds it, or wrote a
    checkpoint since this run read (or looked for) one. Taken only now, so that bad input, found while
    opening the data, never competes for it and leaves nothing behind."""
    error = None
    if fabric.global_rank == 0:
        try:
            writer_lock.enter_context(hold_run_dir(out_dir))
            if _file_identity(out_dir / CHECKPOINT) != checkpoint_seen:
                error = (
                    f"'{out_dir}' changed while this run was starting: another process wrote {CHECKPOINT} "
                    "meanwhile. Nothing was written; start this run again."
                )
        except RunDirBusyError as err:
            error = str(err)
    if fabric.world_size > 1:
        error = fabric.broadcast(error, src=0)
    if error is not None:
        raise RunDirBusyError(error)


@dataclass
class Run:
    """Everything one pretraining works with, built by the phases below in a fixed order (the order in
    which they draw random numbers is part of what makes a resumed run equal an uninterrupted one)."""

    cfg: Config
    fabric: Fabric
    out_dir: Path
    #: the pretraining set and its epoch-by-epoch feed (our own sharded sampler, see train/sampling.py)
    dataset: Dataset
    feed: EpochFeed
    loader: Any
    #: data.augment_on=device: the batch -> views function; None when the loader makes the views
    device_views: Any
    num_classes: int | None
    #: (kNN bank, evaluation split), or None when nothing is evaluated during training
    eval_sets: tuple[Dataset, Dataset] | None
    diagnose_batch: torch.Tensor | None
    global_batch: int
    #: the method, wrapped with the online probe (``pretrainer``), and that wrapper as Fabric set it up
    method: SSLMethod
    pretrainer: Pretrainer
    model: Any
    optimizer: torch.optim.Optimizer
    #: learning-rate factor per optimizer step
    lr_factor: list[float] = field(default_factory=list)
    total_steps: int = 0
    step: int = 0
    last_record: dict[str, Any] | None = None
    bad_images_before: int = 0
    #: the steps' loss terms and probe counts not read from the device yet
    scalars: StepScalars = field(default_factory=StepScalars)

    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def save(self, epochs_done: int, batch_in_epoch: int, progress: EpochProgress) -> None:
        """Rank 0 writes the resumable state atomically; the previous checkpoint stays until then."""
        if self.is_main:
            state = checkpoint_state(
                model=self.pretrainer.state_dict(), optimizer=self.optimizer.state_dict(), epoch=epochs_done,
                batch_in_epoch=batch_in_epoch, progress=dataclasses.asdict(progress), global_step=self.step,
                config=self.cfg.to_dict(), metrics=self.last_record, wandb_run_id=wandb_run_id(self.fabric.loggers),
            )
            save_atomic(state, self.ckpt_path)
        self.fabric.barrier()


def _open_run(cfg: Config, out_dir: Path, resume: bool | str, fabric: Fabric) -> tuple[dict[str, Any] | None, bool]:
    """The checkpoint to continue from (None for a new run) and whether this run resumes."""
    ckpt_path = out_dir / CHECKPOINT
    if resume == "auto":
        resume = ckpt_path.is_file()
        if fabric.world_size > 1:
            resume = fabric.broadcast(resume, src=0)  # what rank 0, the writer, sees
    state = None
    notices: list[str] = []
    if resume:
        state = load_checkpoint(ckpt_path)
        notices = _check_resume(cfg, state)
    elif ckpt_path.exists():
        raise ConfigError(
            f"'{out_dir}' already holds a run (it has {CHECKPOINT}); pass --resume to continue it (or "
            "--resume auto), or choose another --out directory. Nothing was changed."
        )
    if state is not None:
        continue_logs(fabric.loggers, state["epoch"], state.get("wandb_run_id"))
    else:
        continue_logs(fabric.loggers, 0)
    for notice in notices:
        fabric.print(f"notice: {notice}")
    return state, bool(resume)


def _build_data(cfg: Config, fabric: Fabric) -> dict[str, Any]:
    """Open (and so check) all the data before anything is written."""
    splits = run_splits(cfg)
    dataset = splits.pretrain()
    device_views = splits.device_views()
    num_classes = splits.num_classes(dataset)
    eval_sets = splits.labelled() if (cfg.eval.every > 0 or cfg.eval.diagnose) and num_classes else None
    diagnose_batch = None
    if eval_sets is not None and cfg.eval.diagnose:
        diagnose_batch = fixed_eval_batch(eval_sets[1], cfg.eval.diagnose_images)
    global_batch = cfg.data.batch_size * fabric.world_size
    if len(dataset) < global_batch:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} on {fabric.world_size} device(s) needs at least {global_batch} "
            f"images per step, but the pretraining set has {len(dataset)}; lower data.batch_size or raise data.subset"
        )
    feed = EpochFeed(
        dataset, cfg.data.batch_size, cfg.data.num_workers, cfg.seed, fabric.world_size, fabric.global_rank,
        pin_memory=fabric.device.type == "cuda",
    )
    # Our own sampler shards the data (Fabric's DistributedSampler would take its epoch from a counter).
    loader = fabric.setup_dataloaders(feed.loader, use_distributed_sampler=False)
    return dict(dataset=dataset, feed=feed, loader=loader, device_views=device_views, num_classes=num_classes,
                eval_sets=eval_sets, diagnose_batch=diagnose_batch, global_batch=global_batch)


def _build_model(cfg: Config, fabric: Fabric, num_classes: int | None, global_batch: int) -> dict[str, Any]:
    """The method, the online probe and the optimizer, set up by Fabric on the run's devices."""
    method = build_method_from_config(cfg)
    probe = None
    if cfg.eval.online_probe and num_classes:
        probe = nn.Linear(method.backbone.num_features, num_classes)
    pretrainer = Pretrainer(method, probe, channels_last=cfg.trainer.channels_last)
    if cfg.trainer.sync_batchnorm and fabric.world_size > 1:
        pretrainer = nn.SyncBatchNorm.convert_sync_batchnorm(pretrainer)
        method = pretrainer.method
    optimizer = build_optimizer(pretrainer.method, pretrainer.probe, cfg.optim, global_batch, fabric.device.type)
    if cfg.trainer.compile:
        compile_networks(method)
    model, optimizer = fabric.setup(pretrainer, optimizer)
    return dict(method=method, pretrainer=pretrainer, model=model, optimizer=optimizer)


def _set_schedule(run: Run) -> None:
    """The learning-rate factor of every optimizer step of the whole run (warm-up, then cosine)."""
    cfg = run.cfg
    accumulate = cfg.optim.accumulate_grad_batches
    steps_per_epoch = len(run.loader) // accumulate
    if steps_per_epoch == 0:
        raise ConfigError(
            f"optim.accumulate_grad_batches={accumulate} exceeds the {len(run.loader)} batches of an epoch; lower it"
        )
    run.total_steps = steps_per_epoch * cfg.trainer.max_epochs
    peak = run.optimizer.param_groups[0]["base_lr"]
    run.lr_factor = warmup_cosine(
        1.0, run.total_steps, round(cfg.optim.warmup_epochs * steps_per_epoch),
        start=cfg.optim.warmup_start_lr / peak, final=cfg.optim.min_lr / peak,
    )


def _start_writing(run: Run, state: dict[str, Any] | None, resumed: bool, start_epoch: int) -> None:
    """Rank 0 writes the run's config and provenance (and mends a metrics line a kill cut off)."""
    if run.is_main:
        (run.out_dir / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
        save_config(run.cfg, run.out_dir / CONFIG)
        append_provenance(
            run.out_dir, {**provenance(run.fabric.device), "resumed_at_epoch": start_epoch if resumed else None}
        )
        if state is not None and state["metrics"] is not None and restore_metrics(run.out_dir, state["metrics"]):
            # Logged after the metrics line, so the logs lack the mended epoch as well.
            metrics = state["metrics"]
            run.fabric.log_dict({k: v for k, v in metrics.items() if k != "epoch"}, step=metrics["epoch"])
    run.fabric.barrier()


def _pretrain(cfg: Config, out_dir: Path, resume: bool | str, fabric: Fabric, writer_lock: ExitStack) -> PretrainResult:
    """:func:`pretrain` after Fabric's launch: open the run, build it, then train epoch after epoch."""
    checkpoint_seen = _file_identity(out_dir / CHECKPOINT)
    state, resumed = _open_run(cfg, out_dir, resume, fabric)
    torch.manual_seed(cfg.seed)
    data = _build_data(cfg, fabric)
    run = Run(cfg, fabric, out_dir, **data, **_build_model(cfg, fabric, data["num_classes"], data["global_batch"]))
    start_epoch = 0
    if state is not None:
        # After setup: parameters are on their device, and the optimizer state follows them there.
        run.pretrainer.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        start_epoch, run.step = state["epoch"], state["global_step"]
        run.last_record = state["metrics"]
    _set_schedule(run)
    _become_writer(fabric, out_dir, writer_lock, checkpoint_seen)
    _start_writing(run, state, resumed, start_epoch)

    records: list[dict[str, Any]] = []
    skip = state.get("batch_in_epoch", 0) if state is not None else 0
    with StopSignals() as stop:
        for epoch in range(start_epoch, cfg.trainer.max_epochs):
            progress = EpochProgress(**state["progress"]) if skip and state is not None else EpochProgress()
            elapsed = _train_one_epoch(run, epoch, skip, progress, stop)
            skip = 0
            record = _record_epoch(run, epoch, progress, elapsed)
            records.append(record)
            if stop.requested(fabric):
                raise TrainingInterrupted(
                    f"stopped by {stop.signal_name} after epoch {epoch + 1}; the state is saved in {run.ckpt_path}: "
                    "continue with --resume"
                )

    if run.is_main:
        export_backbone(run.method.backbone, out_dir / BACKBONE, backbone_metadata(cfg, run.method.backbone))
    for logger in fabric.loggers:
        logger.finalize("success")
    fabric.barrier()
    return PretrainResult(records, run.pretrainer)


def _train_one_epoch(run: Run, epoch: int, skip: int, progress: EpochProgress, stop: StopSignals) -> float:
    """The optimizer steps of one epoch (from batch ``skip`` on a mid-epoch resume); returns its seconds.

    Everything random in the epoch follows from (seed, epoch, rank): resuming here replays it exactly.
    """
    cfg, t, loader = run.cfg, run.cfg.trainer, run.loader
    accumulate = cfg.optim.accumulate_grad_batches
    run.feed.begin_epoch(epoch)
    run.model.train()
    started = time.perf_counter() - progress.elapsed
    bar = tqdm(total=len(loader), initial=skip, desc=f"epoch {epoch + 1}/{t.max_epochs}",
               disable=not (run.is_main and t.progress_bar), leave=False, dynamic_ncols=True)
    for i, (views, labels) in enumerate(_timed(loader, progress)):
        if run.device_views is not None:  # before the skip, so a mid-epoch resume replays the random draws
            views = run.device_views(views)
        if i < skip:
            continue  # a mid-epoch resume replays the epoch's data stream up to where it stopped
        accumulating = (i + 1) % accumulate != 0
        if i % accumulate == 0:
            set_learning_rate(run.optimizer, run.lr_factor[min(run.step, run.total_steps - 1)])
        _forward_backward(run, views, labels, accumulating, where=StepWhere(epoch, i, run.step))
        bar.update(1)
        if accumulating:
            continue
        _optimizer_step(run)
        if run.step % t.log_every_n_steps == 0 or i + 1 == len(loader):
            terms = _read_step_scalars(run, progress)
            if run.is_main and t.progress_bar:
                rate = progress.batches * run.global_batch / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.3g}",
                                img_s=f"{rate:.0f}")
        stopping = stop.requested(run.fabric, run.step, t.log_every_n_steps)
        every_k = t.checkpoint_every_n_steps
        if (stopping or (every_k and run.step % every_k == 0)) and i + 1 < len(loader):
            _read_step_scalars(run, progress)  # a checkpoint holds only steps whose losses were finite
            progress.elapsed = time.perf_counter() - started
            run.save(epoch, i + 1, progress)
        if stopping:
            bar.close()
            raise TrainingInterrupted(
                f"stopped by {stop.signal_name} at epoch {epoch + 1}, batch {i + 1} of {len(loader)}; "
                f"the state is saved in {run.ckpt_path}: continue with --resume"
            )
    _read_step_scalars(run, progress)  # batches after the last optimizer step (gradient accumulation)
    bar.close()
    return time.perf_counter() - started


def _forward_backward(run: Run, views: Any, labels: torch.Tensor, accumulating: bool, where: StepWhere) -> None:
    """One batch's losses and their gradients (synchronised across ranks unless ``accumulating``); its loss
    terms stay on the device in ``run.scalars`` until the next read (``_read_step_scalars``)."""
    with run.fabric.no_backward_sync(run.model, enabled=accumulating):
        out = run.model(views, labels)
        total = out["loss"] + out["loss_probe"] if "loss_probe" in out else out["loss"]
        run.fabric.backward(total / run.cfg.optim.accumulate_grad_batches)
    run.scalars.append(out, where)


def _read_step_scalars(run: Run, progress: EpochProgress) -> dict[str, float]:
    """Read the pending steps' scalars from the device (one sync) and add them to ``progress`` in step
    order; returns the last step's loss terms ({} when none was pending).

    A non-finite loss stops the run, naming the first step where it appeared. The steps after it (at
    most ``trainer.log_every_n_steps``) have already been applied to the weights in memory, but no
    checkpoint holds them: every checkpoint is written after a read.
    """
    terms: dict[str, float] = {}
    for where, scalars in run.scalars.read():
        terms = {k: v for k, v in scalars.items() if k.startswith("loss")}
        if not all(math.isfinite(v) for v in terms.values()):
            raise NonFiniteLossError(
                f"the loss is not finite at epoch {where.epoch + 1}, batch {where.batch + 1} of "
                f"{len(run.loader)} (global step {where.step}): " + ", ".join(f"{k}={v}" for k, v in terms.items())
                + f". The last good checkpoint ({run.ckpt_path}) is untouched; lower optim.lr, check the "
                "data, or use trainer.precision=32."
            )
        progress.add(scalars)
    return terms


def _optimizer_step(run: Run) -> None:
    """The optimizer step, then the momentum twins' update (methods with ``base_momentum``)."""
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    if run.method.base_momentum is not None:
        run.method.momentum_update(cosine_momentum(run.step, run.total_steps, run.method.base_momentum))


def _record_epoch(run: Run, epoch: int, progress: EpochProgress, elapsed: float) -> dict[str, Any]:
    """The epoch's record (mean losses, speed, probe, kNN, diagnostics), checkpointed, then appended to
    metrics.jsonl and the loggers."""
    cfg, fabric = run.cfg, run.fabric
    record: dict[str, Any] = {"epoch": epoch + 1, "step": run.step}
    record.update({k: _mean_over_ranks(fabric, v / progress.batches) for k, v in sorted(progress.sums.items())})
    record["lr"] = run.optimizer.param_groups[0]["lr"]
    bad = bad_image_count(run.dataset)
    if bad or cfg.data.on_bad_image == "skip":
        record["bad_images_skipped"] = bad - run.bad_images_before
        run.bad_images_before = bad
    record["images_per_s"] = progress.batches * run.global_batch / elapsed
    record["epoch_time_s"] = elapsed
    record["data_wait_fraction"] = progress.data_wait / elapsed if elapsed > 0 else 0.0
    if progress.probe_count:
        counts = torch.tensor([progress.probe_correct, progress.probe_count], dtype=torch.float64)
        counts = fabric.all_reduce(counts, reduce_op="sum")
        record["probe_top1"] = float(100 * counts[0] / counts[1])
    record.update(_evaluate_epoch(run, epoch))
    # Checkpoint first (holding this record), then the metrics line: a kill in between is mended on resume.
    run.last_record = record
    run.save(epoch + 1, 0, EpochProgress())
    if run.is_main:
        append_metrics(run.out_dir, record)
        fabric.print(_summary_line(record, cfg.trainer.max_epochs))
    fabric.log_dict({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
    return record


def _evaluate_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """kNN (every ``eval.every`` epochs and after the last) and diversity figures (every
    ``eval.diagnose_every``), on rank 0.

    With ``trainer.compile`` the networks run eagerly here: the evaluation's batch sizes (and eval mode)
    would otherwise make torch.compile trace new graphs, at every evaluation, for a few forward passes.
    """
    cfg, figures = run.cfg, {}
    last = epoch + 1 == cfg.trainer.max_epochs
    knn_now = cfg.eval.every > 0 and ((epoch + 1) % cfg.eval.every == 0 or last)
    diagnose_now = (epoch + 1) % cfg.eval.diagnose_every == 0 or last
    with _eager(cfg.trainer.compile):
        if run.is_main and run.eval_sets is not None and knn_now:
            knn = knn_of_backbone(run.method.backbone, cfg, run.fabric.device, datasets=run.eval_sets,
                                  num_classes=run.num_classes)
            figures.update(knn_top1=knn["knn_top1"], knn_top5=knn["knn_top5"])
        if run.is_main and run.diagnose_batch is not None and diagnose_now:
            figures.update(diagnose(run.method, run.diagnose_batch))
    return figures


def _eager(compiled: bool) -> contextlib.AbstractContextManager:
    """Compiled modules run their plain forward inside (``torch.compiler.set_stance``, torch >= 2.6; older
    versions compile the evaluation's shapes too)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if compiled and set_stance is not None else contextlib.nullcontext()


def set_cuda_defaults(precision: str) -> None:
    """On CUDA only: cuDNN picks the fastest convolution algorithms for the run's fixed shapes, and float32
    matmuls / convolutions of fp32 recipes use TF32 tensor cores (10-bit mantissa inputs, float32 sums), as
    the SSL reference codes do. The CPU keeps its exact float32 arithmetic, and bit-identical runs with it."""
    torch.backends.cudnn.benchmark = True
    if precision in ("32", "32-true"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compile_networks(method: nn.Module) -> None:
    """``torch.compile`` every network of the method in place (backbone, projector, predictor, momentum
    copies): parameter names and checkpoints stay as without compiling. Loss modules hold no parameters."""
    for child in method.children():
        if any(True for _ in child.parameters()):
            child.compile()


def _timed(loader: Any, progress: EpochProgress) -> Iterator[Any]:
    """The loader's batches, adding the time spent waiting for each to ``progress.data_wait``."""
    batches = iter(loader)
    while True:
        started = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        progress.data_wait += time.perf_counter() - started
        yield batch


def _mean_over_ranks(fabric: Fabric, value: float) -> float:
    if fabric.world_size == 1:
        return value
    return float(fabric.all_reduce(torch.tensor(value, dtype=torch.float64), reduce_op="mean"))


def _summary_line(record: dict[str, Any], max_epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{max_epochs}", f"loss {record['loss']:.4f}"]
    if "loss_dimcl" in record:
        parts.append(f"(ssl {record['loss_ssl']:.4f}, dimcl {record['loss_dimcl']:.4f})")
    if "knn_top1" in record:
        parts.append(f"knn top-1 {record['knn_top1']:.2f}%")
    if "probe_top1" in record:
        parts.append(f"probe top-1 {record['probe_top1']:.2f}%")
    parts.append(f"{record['images_per_s']:.0f} img/s")
    return " | ".join(parts)
