"""The pretraining loop: one readable function for every method, on Lightning Fabric.

    config -> data + model -> for each epoch: steps, kNN, checkpoint, metrics -> backbone.safetensors

Fabric owns devices, precision and data parallelism (DDP, multi-node through torchrun / SLURM); this
file owns the order of things. Schedules are precomputed per optimizer step. Every epoch reseeds the
random state from (seed, epoch), so a run resumed from its epoch checkpoint continues exactly as an
uninterrupted one would (bit-for-bit on the CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dimcl.config import Config, ConfigError, config_differences, save_config
from dimcl.eval.offline import knn_of_backbone
from dimcl.methods import SSLMethod, cosine_momentum
from dimcl.run_dir import BACKBONE, CHECKPOINT, append_metrics, restore_metrics
from dimcl.train.checkpoint import export_backbone, load_checkpoint, save_atomic
from dimcl.train.optim import build_optimizer, set_learning_rate
from dimcl.train.schedules import warmup_cosine
from dimcl.train.setup import (
    backbone_metadata,
    build_eval_datasets,
    build_method_from_config,
    build_pretrain_dataset,
    num_classes_of,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class Pretrainer(nn.Module):
    """The method plus an online linear probe trained on detached features (one module for DDP)."""

    def __init__(self, method: SSLMethod, probe: nn.Module | None):
        super().__init__()
        self.method = method
        self.probe = probe

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.method(views)
        if self.probe is not None:
            logits = self.probe(out["features"].detach())
            labelled = labels >= 0
            # Unlabelled images (label -1, e.g. STL-10's unlabeled split) do not train the probe.
            out["loss_probe"] = (
                F.cross_entropy(logits[labelled], labels[labelled]) if labelled.any() else logits.sum() * 0
            )
            out["probe_correct"] = (logits.argmax(1)[labelled] == labels[labelled]).sum()
            out["probe_count"] = labelled.sum()
        return out


def _loggers(cfg: Config, out_dir: Path) -> list:
    from lightning.fabric.loggers import CSVLogger

    loggers: list = [CSVLogger(root_dir=str(out_dir), name="logs")]
    if cfg.trainer.tensorboard:
        try:
            from lightning.fabric.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(root_dir=str(out_dir), name="tensorboard"))
        except (ImportError, ModuleNotFoundError):
            pass  # tensorboard is optional: `pip install dimcl[tensorboard]`
    return loggers


def _check_resume(cfg: Config, state: dict[str, Any]) -> list[str]:
    """Refuse a checkpoint of another config; a larger ``trainer.max_epochs`` is allowed, with a notice."""
    allowed = {"trainer.max_epochs", "trainer.progress_bar", "trainer.log_every_n_steps", "trainer.tensorboard",
               "data.num_workers"}
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


def pretrain(cfg: Config, out_dir: str | Path, resume: bool = False) -> PretrainResult:
    """Pretrain ``cfg`` into ``out_dir`` (see the module docstring for the order of things)."""
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        notices = _check_resume(cfg, state)
    else:
        notices = []
        if ckpt_path.exists():
            raise ConfigError(
                f"'{out_dir}' already holds a run (it has {CHECKPOINT}); pass --resume to continue it, or choose "
                "another --out directory. Nothing was changed."
            )

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
    is_main = fabric.global_rank == 0
    for notice in notices:
        fabric.print(f"notice: {notice}")
    torch.manual_seed(cfg.seed)

    # ---- data
    dataset = build_pretrain_dataset(cfg)
    global_batch = cfg.data.batch_size * fabric.world_size
    if len(dataset) < global_batch:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} on {fabric.world_size} device(s) needs at least {global_batch} "
            f"images per step, but the pretraining set has {len(dataset)}; lower data.batch_size or raise data.subset"
        )
    generator = torch.Generator()
    loader = DataLoader(
        dataset, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True, num_workers=cfg.data.num_workers,
        generator=generator, pin_memory=fabric.device.type == "cuda", persistent_workers=False,
    )
    loader = fabric.setup_dataloaders(loader)
    num_classes = num_classes_of(cfg, dataset)
    eval_sets = build_eval_datasets(cfg) if cfg.eval.every > 0 and num_classes else None

    # ---- model and optimizer
    method = build_method_from_config(cfg)
    probe = None
    if cfg.eval.online_probe and num_classes:
        probe = nn.Linear(method.backbone.num_features, num_classes)
    pretrainer = Pretrainer(method, probe)
    if t.sync_batchnorm and fabric.world_size > 1:
        pretrainer = nn.SyncBatchNorm.convert_sync_batchnorm(pretrainer)
        method = pretrainer.method
    optimizer = build_optimizer(pretrainer.method, pretrainer.probe, cfg.optim, global_batch)
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
    if is_main:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        if state is not None:
            restore_metrics(out_dir, state["metrics"])
    fabric.barrier()

    records = []
    for epoch in range(start_epoch, t.max_epochs):
        # Everything random in this epoch follows from (seed, epoch): resuming here replays it exactly.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        generator.manual_seed(cfg.seed * 100_003 + epoch)
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        batches, probe_correct, probe_count = 0, 0, 0
        started = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.max_epochs}", disable=not (is_main and t.progress_bar),
                   leave=False, dynamic_ncols=True)
        for i, (views, labels) in enumerate(bar):
            accumulating = (i + 1) % accumulate != 0
            if not accumulating or i % accumulate == 0:
                set_learning_rate(optimizer, lr_factor[min(step, total_steps - 1)])
            with fabric.no_backward_sync(model, enabled=accumulating):
                out = model(views, labels)
                total = out["loss"] + out["loss_probe"] if "loss_probe" in out else out["loss"]
                fabric.backward(total / accumulate)
            terms = {k: float(v.detach()) for k, v in out.items() if k.startswith("loss")}
            if not all(math.isfinite(v) for v in terms.values()):
                raise NonFiniteLossError(
                    f"the loss is not finite at epoch {epoch + 1}, step {i + 1} of {len(loader)} (global step "
                    f"{step}): " + ", ".join(f"{k}={v}" for k, v in terms.items())
                    + f". The last good checkpoint ({ckpt_path}) is untouched; lower optim.lr, check the data, "
                    "or use trainer.precision=32."
                )
            if not accumulating:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if base_momentum is not None:
                    method.momentum_update(cosine_momentum(step, total_steps, base_momentum))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            if "probe_count" in out:
                probe_correct += int(out["probe_correct"])
                probe_count += int(out["probe_count"])
            batches += 1
            if is_main and t.progress_bar and (i % t.log_every_n_steps == 0 or i + 1 == len(loader)):
                rate = batches * global_batch / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                                img_s=f"{rate:.0f}")
        elapsed = time.perf_counter() - started

        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        record.update({k: _mean_over_ranks(fabric, v / batches) for k, v in sorted(sums.items())})
        record["lr"] = optimizer.param_groups[0]["lr"]
        record["images_per_s"] = batches * global_batch / elapsed
        record["epoch_time_s"] = elapsed
        if probe_count:
            counts = fabric.all_reduce(torch.tensor([probe_correct, probe_count], dtype=torch.float64), reduce_op="sum")
            record["probe_top1"] = float(100 * counts[0] / counts[1])
        last = epoch + 1 == t.max_epochs
        if eval_sets is not None and ((epoch + 1) % cfg.eval.every == 0 or last):
            if is_main:
                knn = knn_of_backbone(method.backbone, cfg, fabric.device, datasets=eval_sets, num_classes=num_classes)
                record.update(knn_top1=knn["knn_top1"], knn_top5=knn["knn_top5"])
            fabric.barrier()

        if is_main:
            save_atomic(
                {
                    "model": pretrainer.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "global_step": step,
                    "config": cfg.to_dict(),
                    "metrics": record,
                    "format": 1,
                },
                ckpt_path,
            )
            append_metrics(out_dir, record)
            fabric.print(_summary_line(record, t.max_epochs))
        fabric.log_dict({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
        fabric.barrier()
        records.append(record)

    if is_main:
        export_backbone(method.backbone, out_dir / BACKBONE, backbone_metadata(cfg, method.backbone))
    for logger in fabric.loggers:
        logger.finalize("success")
    fabric.barrier()
    return PretrainResult(records, pretrainer)


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
