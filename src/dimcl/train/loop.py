"""The pretraining loop: one readable function for every method, on Lightning Fabric.

:func:`_pretrain` reads as its phases, each marked by a banner: opening the run directory (resume or
refuse), preparing the data, building the networks, resuming, the schedule, becoming the run directory's
writer, training epoch after epoch (:func:`_train_one_epoch`, then :func:`_record_epoch`: kNN, checkpoint,
metrics line), exporting the backbone. What the run directory holds, and when each file is written, is
:mod:`dimcl.train.run_writer`'s; the networks as they run are :mod:`dimcl.train.pretrainer`'s.

Fabric owns devices, precision and data parallelism (DDP, multi-node through torchrun / SLURM); this
file owns the order of things. Schedules are precomputed per optimizer step. Every epoch reseeds the
random state from (seed, epoch), so a run resumed from its epoch checkpoint continues exactly as an
uninterrupted one would (bit-for-bit on the CPU; see train/sampling.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dimcl.build import build_method_from_config
from dimcl.config import Config, ConfigError
from dimcl.data import bad_image_count, run_splits
from dimcl.data.device_views import BatchMultiView
from dimcl.distributed import broadcast_buffers
from dimcl.eval.diversity import diagnose, fixed_eval_batch
from dimcl.eval.offline import knn_of_backbone
from dimcl.methods import SSLMethod, cosine_momentum
from dimcl.schedules import warmup_cosine
from dimcl.train.errors import NonFiniteLossError, TrainingInterrupted
from dimcl.train.optim import build_optimizer, set_learning_rate
from dimcl.train.pretrainer import Pretrainer, compile_networks, eager, set_cuda_defaults
from dimcl.train.run_writer import RunWriter, check_run_folder, run_loggers
from dimcl.train.sampling import EpochFeed
from dimcl.train.step_scalars import EpochProgress, StepScalars, StepWhere
from dimcl.train.stop_signals import StopSignals


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns on every process: this run's epoch records and the trained model."""

    records: list[dict[str, Any]]
    model: Pretrainer


def pretrain(cfg: Config, out_dir: str | Path, resume: bool | str = False, overwrite: bool = False) -> PretrainResult:
    """Pretrain ``cfg`` into ``out_dir`` (see the module docstring for the order of things).

    ``resume``: False starts a new run (in a new or empty folder), True continues from the checkpoint,
    ``"auto"`` does the one that applies (a requeued cluster job needs no edit). ``overwrite`` lets a new
    run replace a previous run in ``out_dir`` (its own files only; a folder of other files is refused).
    Rank 0 holds the run directory's lock from the first write to the end (see :mod:`dimcl.train.run_writer`).
    """
    out_dir = Path(out_dir)
    entries_before = check_run_folder(out_dir, resume, overwrite)  # before the loggers start
    fabric = _launch_fabric(cfg, out_dir)
    with RunWriter(cfg, out_dir, fabric, entries_before, overwrite) as writer:
        return _pretrain(cfg, writer, resume)


def _launch_fabric(cfg: Config, out_dir: Path) -> Fabric:
    """Fabric on the run's devices, launched (one process per device), its loggers writing into ``out_dir``."""
    t = cfg.trainer
    fabric = Fabric(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, loggers=run_loggers(cfg, out_dir),
    )
    if t.sync_batchnorm and fabric.device.type != "cuda":
        raise ConfigError(
            f"trainer.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm does not run on "
            f"{fabric.device.type}); set it to false"
        )
    fabric.launch()
    if fabric.device.type == "cuda":
        set_cuda_defaults(t.precision)
    return fabric


def _pretrain(cfg: Config, writer: RunWriter, resume: bool | str) -> PretrainResult:
    """:func:`pretrain` after Fabric's launch, phase by phase. The phases draw random numbers in this order,
    which is part of what makes a resumed run equal an uninterrupted one: keep it."""
    # ============ opening the run directory: the checkpoint to resume, or a refusal to overwrite ============
    state = writer.open(resume)
    torch.manual_seed(cfg.seed)

    # ============ preparing the data: all of it opened (so checked) before anything is written ============
    data = _build_data(cfg, writer.fabric)

    # ============ building the method, the online probe and the optimizer ============
    networks = _build_networks(cfg, writer.fabric, data["num_classes"], data["global_batch"])
    run = TrainingRun(cfg, writer.fabric, writer, **data, **networks)

    # ============ resuming: weights, optimizer state, position ============
    start_epoch = _resume(run, state)

    # ============ the learning-rate schedule, per optimizer step ============
    _set_schedule(run)

    # ============ becoming the run directory's writer: the lock, config.yaml, provenance ============
    writer.become_writer()
    writer.start_writing(state, start_epoch)

    # ============ training: epoch after epoch, each checkpointed and recorded ============
    records = _train_epochs(run, start_epoch, state)

    # ============ exporting the trained backbone ============
    writer.finish(run.method.backbone)
    return PretrainResult(records, run.pretrainer)


@dataclass
class TrainingRun:
    """Everything one pretraining works with, built by the phases of :func:`_pretrain` in a fixed order."""

    cfg: Config
    fabric: Fabric
    writer: RunWriter
    #: the pretraining set and its epoch-by-epoch feed (our own sharded sampler, see train/sampling.py)
    dataset: Dataset
    feed: EpochFeed
    #: the feed's loader as Fabric set it up (moving batches to the device)
    loader: DataLoader
    #: data.augment_on=device: the batch -> views function; None when the loader makes the views
    device_views: BatchMultiView | None
    num_classes: int | None
    #: (kNN bank, evaluation split), or None when nothing is evaluated during training
    eval_sets: tuple[Dataset, Dataset] | None
    diagnose_batch: torch.Tensor | None
    global_batch: int
    #: the method, wrapped with the online probe (``pretrainer``), and that wrapper as Fabric set it up
    method: SSLMethod
    pretrainer: Pretrainer
    model: nn.Module
    optimizer: Optimizer
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

    def save(self, epochs_done: int, batch_in_epoch: int, progress: EpochProgress) -> None:
        """Checkpoint the run: ``epochs_done`` epochs and ``batch_in_epoch`` batches of the next one."""
        self.writer.save(
            self.pretrainer, self.optimizer, epoch=epochs_done, batch_in_epoch=batch_in_epoch,
            progress=dataclasses.asdict(progress), global_step=self.step, metrics=self.last_record,
        )


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


def _build_networks(cfg: Config, fabric: Fabric, num_classes: int | None, global_batch: int) -> dict[str, Any]:
    """The method, the online probe and the optimizer, set up by Fabric on the run's devices."""
    method = build_method_from_config(cfg)
    method.check_global_batch(global_batch)
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


def _resume(run: TrainingRun, state: dict[str, Any] | None) -> int:
    """Load a checkpoint's state into ``run`` (None: a new run); returns the epoch to start from.

    Called after Fabric's setup: the parameters are on their device, and the optimizer state follows them.
    """
    if state is None:
        return 0
    run.pretrainer.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.step = state["global_step"]
    run.last_record = state["metrics"]
    return state["epoch"]


def _set_schedule(run: TrainingRun) -> None:
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


def _train_epochs(run: TrainingRun, start_epoch: int, state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every epoch from ``start_epoch`` on (the first from the checkpoint's batch on a mid-epoch resume): its
    steps, then its record. SIGTERM / SIGINT stop it at the next optimizer step, the state saved."""
    records: list[dict[str, Any]] = []
    skip = state.get("batch_in_epoch", 0) if state is not None else 0
    with StopSignals() as stop:
        for epoch in range(start_epoch, run.cfg.trainer.max_epochs):
            progress = EpochProgress(**state["progress"]) if skip and state is not None else EpochProgress()
            elapsed = _train_one_epoch(run, epoch, skip, progress, stop)
            skip = 0
            records.append(_record_epoch(run, epoch, progress, elapsed))
            if stop.requested(run.fabric):
                raise TrainingInterrupted(
                    f"stopped by {stop.signal_name} after epoch {epoch + 1}; the state is saved in "
                    f"{run.writer.checkpoint}: continue with --resume"
                )
    return records


def _train_one_epoch(run: TrainingRun, epoch: int, skip: int, progress: EpochProgress, stop: StopSignals) -> float:
    """The optimizer steps of one epoch (from batch ``skip`` on a mid-epoch resume); returns its seconds.

    Everything random in the epoch follows from (seed, epoch, rank): resuming here replays it exactly.
    """
    cfg, t, loader = run.cfg, run.cfg.trainer, run.loader
    accumulate = cfg.optim.accumulate_grad_batches
    run.feed.begin_epoch(epoch)
    run.method.begin_epoch(epoch)
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
                f"the state is saved in {run.writer.checkpoint}: continue with --resume"
            )
    _read_step_scalars(run, progress)  # batches after the last optimizer step (gradient accumulation)
    bar.close()
    return time.perf_counter() - started


def _forward_backward(run: TrainingRun, views: list[torch.Tensor], labels: torch.Tensor, accumulating: bool,
                      where: StepWhere) -> None:
    """One batch's losses and their gradients (synchronised across ranks unless ``accumulating``); its loss
    terms stay on the device in ``run.scalars`` until the next read (``_read_step_scalars``)."""
    with run.fabric.no_backward_sync(run.model, enabled=accumulating):
        out = run.model(views, labels)
        total = out["loss"] + out["loss_probe"] if "loss_probe" in out else out["loss"]
        run.fabric.backward(total / run.cfg.optim.accumulate_grad_batches)
    run.scalars.append(out, where)


def _read_step_scalars(run: TrainingRun, progress: EpochProgress) -> dict[str, float]:
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
            checkpoint = run.writer.checkpoint
            kept = (f"The last good checkpoint ({checkpoint}) is untouched" if checkpoint.is_file()
                    else "No checkpoint was written before it (nothing to resume from)")
            raise NonFiniteLossError(
                f"the loss is not finite at epoch {where.epoch + 1}, batch {where.batch + 1} of "
                f"{len(run.loader)} (global step {where.step}): " + ", ".join(f"{k}={v}" for k, v in terms.items())
                + f". {kept}; lower optim.lr, check the data, or use trainer.precision=32."
            )
        progress.add(scalars)
    return terms


def _optimizer_step(run: TrainingRun) -> None:
    """The optimizer step (the method's frozen parameters left out, the gradients clipped to
    ``optim.clip_grad_norm``), then the momentum twins' update (methods with ``base_momentum``)."""
    for param in run.method.frozen_parameters():
        param.grad = None  # SGD, AdamW and LARS skip a parameter without a gradient: no decay, no momentum
    if run.cfg.optim.clip_grad_norm:
        # Through Fabric: under 16-mixed the gradients are unscaled first. The method's parameters only (the
        # probe learns on detached features); a non-finite norm is left to the loss check, which names the step.
        run.fabric.clip_gradients(run.method, run.optimizer, max_norm=run.cfg.optim.clip_grad_norm,
                                  error_if_nonfinite=False)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    if run.method.base_momentum is not None:
        run.method.momentum_update(cosine_momentum(run.step, run.total_steps, run.method.base_momentum))


def _record_epoch(run: TrainingRun, epoch: int, progress: EpochProgress, elapsed: float) -> dict[str, Any]:
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
    run.writer.append_metrics(record)
    if run.is_main:
        fabric.print(_summary_line(record, cfg.trainer.max_epochs))
    run.writer.log_record(record)
    return record


def _evaluate_epoch(run: TrainingRun, epoch: int) -> dict[str, Any]:
    """kNN (every ``eval.every`` epochs and after the last) and diversity figures (every
    ``eval.diagnose_every``). Under DDP every rank takes part in the kNN, each extracting its shard of
    the bank and of the evaluation set (:func:`~dimcl.eval.offline.knn_of_backbone` across ranks); the
    diagnostics run on rank 0.

    With ``trainer.compile`` the networks run eagerly here: the evaluation's batch sizes (and eval mode)
    would otherwise make torch.compile trace new graphs, at every evaluation, for a few forward passes.
    """
    cfg, figures = run.cfg, {}
    last = epoch + 1 == cfg.trainer.max_epochs
    knn_now = cfg.eval.every > 0 and ((epoch + 1) % cfg.eval.every == 0 or last)
    diagnose_now = (epoch + 1) % cfg.eval.diagnose_every == 0 or last
    with eager(cfg.trainer.compile):
        if run.eval_sets is not None and knn_now:
            # Every rank's running statistics moved with its own batches since DDP's last broadcast: the
            # kNN scores rank 0's, which the checkpoint holds (the next forward broadcasts them anyway).
            broadcast_buffers(run.method.backbone)
            knn = knn_of_backbone(run.method.backbone, cfg, run.fabric.device, datasets=run.eval_sets,
                                  num_classes=run.num_classes, across_ranks=True)
            figures.update(knn_top1=knn["knn_top1"], knn_top5=knn["knn_top5"])
        if run.is_main and run.diagnose_batch is not None and diagnose_now:
            figures.update(diagnose(run.method, run.diagnose_batch))
    return figures


def _timed(loader: DataLoader, progress: EpochProgress) -> Iterator[Any]:
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
