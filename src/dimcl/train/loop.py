"""The pretraining loop: one readable function for every method, on Lightning Fabric.

    config -> data + model -> for each epoch: steps, kNN, checkpoint, metrics -> backbone.safetensors

Fabric owns devices, precision and data parallelism (DDP, multi-node through torchrun / SLURM); this
file owns the order of things. Schedules are precomputed per optimizer step. Every epoch reseeds the
random state from (seed, epoch), so a run resumed from its epoch checkpoint continues exactly as an
uninterrupted one would (bit-for-bit on the CPU; see train/sampling.py).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import tempfile
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
from tqdm import tqdm

from dimcl.config import RUN_ONLY_KEYS, Config, ConfigError, config_differences, save_config
from dimcl.data import bad_image_count
from dimcl.eval.diversity import diagnose, fixed_eval_batch
from dimcl.eval.offline import knn_of_backbone
from dimcl.methods import SSLMethod, cosine_momentum
from dimcl.provenance import provenance
from dimcl.run_dir import (
    BACKBONE,
    CHECKPOINT,
    RunDirBusyError,
    append_metrics,
    append_provenance,
    hold_run_dir,
    restore_metrics,
)
from dimcl.train.checkpoint import export_backbone, load_checkpoint, save_atomic
from dimcl.train.errors import NonFiniteLossError, TrainingInterrupted
from dimcl.train.logs import RunCSVLogger, continue_logs, tensorboard_logger
from dimcl.train.optim import build_optimizer, set_learning_rate
from dimcl.train.sampling import EpochFeed
from dimcl.train.schedules import warmup_cosine
from dimcl.train.setup import (
    backbone_metadata,
    build_device_views,
    build_eval_datasets,
    build_method_from_config,
    build_pretrain_dataset,
    num_classes_of,
)


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
        out = self.method(views)
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
    loggers: list = [RunCSVLogger(out_dir)]
    if cfg.trainer.tensorboard:
        tensorboard = tensorboard_logger(out_dir)  # None without tensorboard: `pip install dimcl[tensorboard]`
        if tensorboard is not None:
            loggers.append(tensorboard)
    return loggers


def _check_resume(cfg: Config, state: dict[str, Any]) -> list[str]:
    """Refuse a checkpoint of another config; a larger ``trainer.max_epochs`` is allowed, with a notice."""
    allowed = RUN_ONLY_KEYS | {"trainer.max_epochs"}
    diffs = config_differences(state["config"], cfg.to_dict())
    blocking = [d for d in diffs if d[0] not in allowed]
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


def check_out_dir(out_dir: Path) -> None:
    """``out_dir`` is, or can become, a writable directory; checked before anything is read or written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out '{out_dir}' is a file, not a directory; give a directory for the run")
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out '{out_dir}' cannot be created: '{existing}' is a file, not a directory")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as err:
        raise ConfigError(
            f"--out '{out_dir}' is not writable ({err.strerror} in '{existing}'); choose a directory you can write"
        ) from None


def pretrain(cfg: Config, out_dir: str | Path, resume: bool | str = False) -> PretrainResult:
    """Pretrain ``cfg`` into ``out_dir`` (see the module docstring for the order of things).

    ``resume``: False starts a new run (refused where a checkpoint exists), True continues from the
    checkpoint, ``"auto"`` does the one that applies (a requeued cluster job needs no edit). Rank 0 holds
    the run directory's lock from the first write to the end (see :func:`dimcl.run_dir.hold_run_dir`).
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
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


def _pretrain(cfg: Config, out_dir: Path, resume: bool | str, fabric: Fabric, writer_lock: ExitStack) -> PretrainResult:
    """:func:`pretrain` after Fabric's launch."""
    ckpt_path = out_dir / CHECKPOINT
    checkpoint_seen = _file_identity(ckpt_path)
    if resume == "auto":
        resume = ckpt_path.is_file()
        if fabric.world_size > 1:
            resume = fabric.broadcast(resume, src=0)  # what rank 0, the writer, sees
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        notices = _check_resume(cfg, state)
    else:
        notices = []
        if ckpt_path.exists():
            raise ConfigError(
                f"'{out_dir}' already holds a run (it has {CHECKPOINT}); pass --resume to continue it (or "
                "--resume auto), or choose another --out directory. Nothing was changed."
            )
    continue_logs(fabric.loggers, state["epoch"] if state is not None else 0)

    t = cfg.trainer
    is_main = fabric.global_rank == 0
    for notice in notices:
        fabric.print(f"notice: {notice}")
    torch.manual_seed(cfg.seed)

    # ---- data (all of it opened, and checked, before anything is written)
    dataset = build_pretrain_dataset(cfg)
    device_views = build_device_views(cfg)  # data.augment_on=device: None, or raw batch -> views
    num_classes = num_classes_of(cfg, dataset)
    eval_sets = build_eval_datasets(cfg) if (cfg.eval.every > 0 or cfg.eval.diagnose) and num_classes else None
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

    # ---- model and optimizer
    method = build_method_from_config(cfg)
    probe = None
    if cfg.eval.online_probe and num_classes:
        probe = nn.Linear(method.backbone.num_features, num_classes)
    pretrainer = Pretrainer(method, probe, channels_last=t.channels_last)
    if t.sync_batchnorm and fabric.world_size > 1:
        pretrainer = nn.SyncBatchNorm.convert_sync_batchnorm(pretrainer)
        method = pretrainer.method
    optimizer = build_optimizer(pretrainer.method, pretrainer.probe, cfg.optim, global_batch, fabric.device.type)
    if t.compile:
        compile_networks(method)
    model, optimizer = fabric.setup(pretrainer, optimizer)
    start_epoch, step = 0, 0
    if state is not None:
        # After setup: parameters are on their device, and the optimizer state follows them there.
        pretrainer.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"], state["global_step"]

    # ---- schedules, per optimizer step
    accumulate = cfg.optim.accumulate_grad_batches
    steps_per_epoch = len(loader) // accumulate
    if steps_per_epoch == 0:
        raise ConfigError(
            f"optim.accumulate_grad_batches={accumulate} exceeds the {len(loader)} batches of an epoch; lower it"
        )
    total_steps = steps_per_epoch * t.max_epochs
    peak = optimizer.param_groups[0]["base_lr"]
    lr_factor = warmup_cosine(
        1.0, total_steps, round(cfg.optim.warmup_epochs * steps_per_epoch),
        start=cfg.optim.warmup_start_lr / peak, final=cfg.optim.min_lr / peak,
    )
    base_momentum = getattr(method, "base_momentum", None)

    # ---- run directory
    _become_writer(fabric, out_dir, writer_lock, checkpoint_seen)
    if is_main:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        append_provenance(out_dir, {**provenance(fabric.device), "resumed_at_epoch": start_epoch if resume else None})
        if state is not None and state["metrics"] is not None and restore_metrics(out_dir, state["metrics"]):
            # Logged after the metrics line, so the logs lack the mended epoch as well.
            fabric.log_dict({k: v for k, v in state["metrics"].items() if k != "epoch"}, step=state["metrics"]["epoch"])
    fabric.barrier()

    def save(epochs_done: int, batch_in_epoch: int, progress: EpochProgress, last_record: dict | None) -> None:
        """Rank 0 writes the resumable state atomically; the previous checkpoint stays until then."""
        if is_main:
            save_atomic(
                {
                    "model": pretrainer.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epochs_done,
                    "batch_in_epoch": batch_in_epoch,
                    "progress": dataclasses.asdict(progress),
                    "global_step": step,
                    "config": cfg.to_dict(),
                    "metrics": last_record,
                    "format": 1,
                },
                ckpt_path,
            )
        fabric.barrier()

    records: list[dict[str, Any]] = []
    last_record = state["metrics"] if state is not None else None
    skip = state.get("batch_in_epoch", 0) if state is not None else 0
    every_k = t.checkpoint_every_n_steps
    bad_images_before = 0
    with StopSignals() as stop:
        for epoch in range(start_epoch, t.max_epochs):
            # Everything random in this epoch follows from (seed, epoch, rank): resuming here replays it exactly.
            feed.begin_epoch(epoch)
            model.train()
            progress = EpochProgress(**state["progress"]) if skip and state is not None else EpochProgress()
            started = time.perf_counter() - progress.elapsed
            bar = tqdm(total=len(loader), initial=skip, desc=f"epoch {epoch + 1}/{t.max_epochs}",
                       disable=not (is_main and t.progress_bar), leave=False, dynamic_ncols=True)
            for i, (views, labels) in enumerate(_timed(loader, progress)):
                if device_views is not None:  # before the skip, so a mid-epoch resume replays the random draws
                    views = device_views(views)
                if i < skip:
                    continue  # a mid-epoch resume replays the epoch's data stream up to where it stopped
                accumulating = (i + 1) % accumulate != 0
                if i % accumulate == 0:
                    set_learning_rate(optimizer, lr_factor[min(step, total_steps - 1)])
                with fabric.no_backward_sync(model, enabled=accumulating):
                    out = model(views, labels)
                    total = out["loss"] + out["loss_probe"] if "loss_probe" in out else out["loss"]
                    fabric.backward(total / accumulate)
                scalars = _read_scalars(out)
                terms = {k: v for k, v in scalars.items() if k.startswith("loss")}
                if not all(math.isfinite(v) for v in terms.values()):
                    raise NonFiniteLossError(
                        f"the loss is not finite at epoch {epoch + 1}, batch {i + 1} of {len(loader)} (global "
                        f"step {step}): " + ", ".join(f"{k}={v}" for k, v in terms.items())
                        + f". The last good checkpoint ({ckpt_path}) is untouched; lower optim.lr, check the "
                        "data, or use trainer.precision=32."
                    )
                progress.add(scalars)
                bar.update(1)
                if accumulating:
                    continue
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if base_momentum is not None:
                    method.momentum_update(cosine_momentum(step, total_steps, base_momentum))
                if is_main and t.progress_bar and (step % t.log_every_n_steps == 0 or i + 1 == len(loader)):
                    rate = progress.batches * global_batch / (time.perf_counter() - started)
                    bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                                    img_s=f"{rate:.0f}")
                stopping = stop.requested(fabric, step, t.log_every_n_steps)
                if (stopping or (every_k and step % every_k == 0)) and i + 1 < len(loader):
                    progress.elapsed = time.perf_counter() - started
                    save(epoch, i + 1, progress, last_record)
                if stopping:
                    bar.close()
                    raise TrainingInterrupted(
                        f"stopped by {stop.signal_name} at epoch {epoch + 1}, batch {i + 1} of {len(loader)}; "
                        f"the state is saved in {ckpt_path}: continue with --resume"
                    )
            bar.close()
            skip = 0
            elapsed = time.perf_counter() - started

            record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
            record.update({k: _mean_over_ranks(fabric, v / progress.batches) for k, v in sorted(progress.sums.items())})
            record["lr"] = optimizer.param_groups[0]["lr"]
            bad = bad_image_count(dataset)
            if bad or cfg.data.on_bad_image == "skip":
                record["bad_images_skipped"] = bad - bad_images_before
                bad_images_before = bad
            record["images_per_s"] = progress.batches * global_batch / elapsed
            record["epoch_time_s"] = elapsed
            record["data_wait_fraction"] = progress.data_wait / elapsed if elapsed > 0 else 0.0
            if progress.probe_count:
                counts = torch.tensor([progress.probe_correct, progress.probe_count], dtype=torch.float64)
                counts = fabric.all_reduce(counts, reduce_op="sum")
                record["probe_top1"] = float(100 * counts[0] / counts[1])
            knn_now = cfg.eval.every > 0 and ((epoch + 1) % cfg.eval.every == 0 or epoch + 1 == t.max_epochs)
            if is_main and eval_sets is not None and knn_now:
                knn = knn_of_backbone(method.backbone, cfg, fabric.device, datasets=eval_sets, num_classes=num_classes)
                record.update(knn_top1=knn["knn_top1"], knn_top5=knn["knn_top5"])
            if is_main and diagnose_batch is not None:
                record.update(diagnose(method, diagnose_batch))

            # Checkpoint first, then the metrics line: a kill in between is mended on resume.
            save(epoch + 1, 0, EpochProgress(), record)
            last_record = record
            if is_main:
                append_metrics(out_dir, record)
                fabric.print(_summary_line(record, t.max_epochs))
            fabric.log_dict({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
            records.append(record)
            if stop.requested(fabric):
                raise TrainingInterrupted(
                    f"stopped by {stop.signal_name} after epoch {epoch + 1}; the state is saved in {ckpt_path}: "
                    "continue with --resume"
                )

    if is_main:
        export_backbone(method.backbone, out_dir / BACKBONE, backbone_metadata(cfg, method.backbone))
    for logger in fabric.loggers:
        logger.finalize("success")
    fabric.barrier()
    return PretrainResult(records, pretrainer)


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


def _read_scalars(out: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's loss terms and probe counts as Python numbers, with one device-to-host copy.

    (A ``float()`` per term would wait for the device once per term, on every step.)
    """
    names = [k for k in out if k.startswith(("loss", "probe_"))]
    values = torch.stack([out[k].detach().float() for k in names]).tolist()  # exact for float32 and counts
    return dict(zip(names, values, strict=True))


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
