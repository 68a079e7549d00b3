"""End-to-end pretraining throughput of dimcl against lightly, side by side: BYOL, SimCLR, Barlow Twins.

Run with the benchmark's own environment (lightly is never a dependency of dimcl)::

    bash benchmarks/speed/setup_lightly_env.sh
    benchmarks/speed/.venv-lightly/bin/python benchmarks/speed/vs_lightly.py \\
        --batch 64 --images 512 --out benchmarks/speed/vs_lightly_cpu.json

Both sides read the same random images written once in CIFAR-10's python on-disk format, train the same
backbone (``dimcl.models.build_backbone("resnet18", image_size=32, cifar_stem=True)``) in float32 with the
same batch size, loader workers, ``drop_last`` and optimizer, and are timed the same way: one epoch of
``--images`` images, from the first batch request (loader workers start inside the timed span) to the end
of the last optimizer step (and momentum update), images/s = steps x batch / seconds.

lightly side: plain PyTorch as lightly's CIFAR-10 examples show it (docs.lightly.ai, "Examples":
BYOL, SimCLR, Barlow Twins): ``torchvision.datasets.CIFAR10`` with lightly's transform at input size 32
and Gaussian blur off (BYOLTransform for BYOL and Barlow Twins, SimCLRTransform for SimCLR), lightly's
heads, losses and, for BYOL, ``update_momentum`` with ``cosine_schedule``; ``for batch in dataloader:
x0, x1 = batch[0]``, forward, ``loss.backward()``, ``optimizer.step()``, ``optimizer.zero_grad()``,
``total_loss += loss.detach()``. Deviations from the examples, all to match our recipe
(src/dimcl/configs/cifar10/<method>.yaml): our backbone instead of torchvision's ImageNet-stem ResNet-18; the
recipe's head widths, loss temperature / lambda and BYOL base momentum (per optimizer step, as ours);
the transform knobs set to our recipe's values (crop scale 0.08-1, jitter 0.4/0.4/0.2/0.1 at p=0.8,
grayscale 0.2, no blur, BYOL view-2 solarization 0.2, CIFAR-10 mean/std); and the recipe's optimizer,
LARS with its parameter groups, built by ``dimcl.train.optim.build_optimizer`` (the examples use
``SGD(lr=0.06)``). torchvision's CIFAR10 is subclassed only to skip its md5 checks, which reject
every file but the official ones; reading and decoding are torchvision's own. The random files carry
``str`` keys, as the official (Python 2) pickles load, so that both readers take them as they are.

dimcl side: the real loop, ``dimcl.train.loop.pretrain``, on ``src/dimcl/configs/cifar10/<method>.yaml`` with
evaluation, diagnostics, the online probe, the progress bar and TensorBoard off, ``optim.warmup_epochs=0``,
float32, ``dimcl.weight=0`` (the plain method, the row compared with lightly) and ``dimcl.weight=0.1``
(an extra row). Its images/s is ``records[0]["images_per_s"]``, the loop's own epoch timing.

Warm-up (not timed), the same on both sides: before each timed run, a throwaway model of the same kind
trains ``--warmup-steps`` steps on a small second data set in the same process (ours: a 1-epoch
``pretrain`` into a throwaway directory). The timed run then starts from a fresh model, optimizer and
loader on both sides, in a process whose kernels and allocators are warm.

Interleaving: per method, ``--repeats`` rounds of [lightly, ours λ=0, ours λ=0.1]; each figure is the
median over the rounds, and the ratio is ours / lightly of the medians.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import lightly
except ImportError:
    sys.exit("lightly is not installed in this environment: run `bash benchmarks/speed/setup_lightly_env.sh` and "
             "start this script with benchmarks/speed/.venv-lightly/bin/python")
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import (  # noqa: E402
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402
from lightly.transforms import SimCLRTransform  # noqa: E402
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform  # noqa: E402
from lightly.utils.scheduler import cosine_schedule  # noqa: E402
from step_speed import machine_name, write_random_cifar10  # noqa: E402

from dimcl.data import dataset_info  # noqa: E402
from dimcl.methods import method_options  # noqa: E402
from dimcl.models import build_backbone  # noqa: E402
from dimcl.recipes import (
    load_config,  # noqa: E402
    resolve_recipe,  # noqa: E402
)
from dimcl.train.loop import pretrain  # noqa: E402
from dimcl.train.optim import build_optimizer  # noqa: E402

METHODS = ("byol", "simclr", "barlow_twins")


def recipe(method: str, overrides: list[str] = ()):
    return load_config(resolve_recipe(f"cifar10/{method}"), list(overrides))


# ---------------------------------------------------------------------------------------------- lightly


class RandomCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 reading our random files: only the md5 checks of the official files are skipped."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def write_data(root: Path, n: int) -> None:
    """``n`` random images in CIFAR-10's format (step_speed's writer), keys as the official files load.

    The official batches are Python 2 pickles, whose keys unpickle as ``str``; step_speed writes ``bytes``
    keys, which dimcl accepts but torchvision does not, so the keys are rewritten as ``str`` (same data).
    """
    write_random_cifar10(root, n)
    for path in (root / "cifar-10-batches-py").iterdir():
        with open(path, "rb") as f:
            entry = pickle.load(f)
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        if "label_names" in entry:
            entry["label_names"] = [v.decode() if isinstance(v, bytes) else v for v in entry["label_names"]]
        if "labels" in entry:
            entry["labels"] = [int(v) for v in entry["labels"]]
        with open(path, "wb") as f:
            pickle.dump(entry, f)


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, proj_hidden: int, proj_out: int, pred_hidden: int):
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(backbone.num_features, proj_hidden, proj_out)
        self.prediction_head = BYOLPredictionHead(proj_out, pred_hidden, proj_out)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone(x).flatten(start_dim=1)
        return self.prediction_head(self.projection_head(y))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        y = self.backbone_momentum(x).flatten(start_dim=1)
        return self.projection_head_momentum(y).detach()


class Projected(nn.Module):
    """SimCLR and Barlow Twins as in lightly's examples: backbone -> projection head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projection_head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def lightly_transform(method: str, cfg):
    """lightly's transform for the method, its knobs set to our recipe's values (see the module docstring)."""
    info = dataset_info("cifar10")
    normalize = {"mean": list(info.mean), "std": list(info.std)}
    lo, hi = cfg.augment.crop_scale if cfg.augment.crop_scale is not None else (0.08, 1.0)
    if hi != 1.0:
        raise ValueError(f"lightly's transforms crop up to scale 1.0; the recipe asks for {hi}")
    # Ours (dimcl.data.ViewConfig defaults): brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1.
    jitter = dict(cj_prob=0.8, cj_strength=1.0, cj_bright=0.4, cj_contrast=0.4, cj_sat=0.2, cj_hue=0.1)
    common = dict(input_size=32, min_scale=lo, random_gray_scale=0.2, gaussian_blur=0.0, hf_prob=0.5,
                  normalize=normalize, **jitter)
    if method == "simclr":
        return SimCLRTransform(**common)  # symmetric views; SimCLRTransform has no solarization
    return BYOLTransform(
        view_1_transform=BYOLView1Transform(solarization_prob=0.0, **common),
        view_2_transform=BYOLView2Transform(solarization_prob=0.2, **common),
    )


def method_settings(method: str, cfg) -> SimpleNamespace:
    """The recipe's method options (widths, temperature, lambda, momentum) over the method's defaults."""
    return SimpleNamespace(**{**method_options(method), **cfg.method.options})


def lightly_model(method: str, cfg) -> tuple[nn.Module, nn.Module]:
    backbone = build_backbone("resnet18", in_channels=3, image_size=32, cifar_stem=True)
    m = method_settings(method, cfg)
    if method == "byol":
        return BYOL(backbone, m.proj_hidden_dim, m.proj_output_dim, m.pred_hidden_dim), NegativeCosineSimilarity()
    if method == "simclr":
        head = SimCLRProjectionHead(backbone.num_features, m.proj_hidden_dim, m.proj_output_dim)
        return Projected(backbone, head), NTXentLoss(temperature=m.temperature)
    head = BarlowTwinsProjectionHead(backbone.num_features, m.proj_hidden_dim, m.proj_output_dim)
    return Projected(backbone, head), BarlowTwinsLoss(lambda_param=m.lambd)


def recipe_optimizer(model: nn.Module, cfg, batch: int, device: str) -> torch.optim.Optimizer:
    """The recipe's optimizer (LARS, its parameter groups and scaled lr), as our loop builds it."""
    return build_optimizer(model, None, cfg.optim, batch, device_type=device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def lightly_epoch(method: str, root: Path, batch: int, workers: int, device: str, max_steps: int | None = None):
    """One epoch (or ``max_steps`` steps) of a fresh lightly model: (images/s, steps, mean loss)."""
    cfg = recipe(method)
    torch.manual_seed(0)
    model, criterion = lightly_model(method, cfg)
    model.to(device)
    dataset = RandomCIFAR10(str(root), train=True, download=False, transform=lightly_transform(method, cfg))
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
    )
    optimizer = recipe_optimizer(model, cfg, batch, device)
    steps = len(dataloader) if max_steps is None else min(max_steps, len(dataloader))
    base_momentum = getattr(method_settings(method, cfg), "base_momentum", None)
    total_loss = torch.zeros((), device=device)
    sync(device)
    started = time.perf_counter()
    for step, batch_data in enumerate(dataloader):
        if step == steps:
            break
        x0, x1 = batch_data[0]
        x0, x1 = x0.to(device), x1.to(device)
        if method == "byol":
            momentum = cosine_schedule(step, steps, base_momentum, 1.0)
            update_momentum(model.backbone, model.backbone_momentum, m=momentum)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
            p0, p1 = model(x0), model(x1)
            z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        else:
            loss = criterion(model(x0), model(x1))
        total_loss += loss.detach()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    sync(device)
    elapsed = time.perf_counter() - started
    return steps * batch / elapsed, steps, float(total_loss) / max(steps, 1)


# ---------------------------------------------------------------------------------------------- dimcl


def ours_epoch(method: str, root: Path, out: Path, batch: int, workers: int, device: str, weight: float):
    cfg = recipe(method, [
        f"data.root={root}", f"data.batch_size={batch}", f"data.num_workers={workers}",
        f"dimcl.weight={weight}", "trainer.precision=32", f"trainer.accelerator={device}",
        "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.tensorboard=false",
        "eval.every=0", "eval.diagnose=false", "eval.online_probe=false", "optim.warmup_epochs=0",
    ])
    record = pretrain(cfg, out).records[0]
    return record["images_per_s"], record["step"], record.get("loss", float("nan"))


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=512, help="images in the timed epoch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps of a throwaway model first")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out")
    parser.add_argument("--md", help="Markdown table")
    args = parser.parse_args()
    if args.images < args.batch:
        parser.error("--images must be at least --batch (drop_last)")

    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, warm_data = tmp / "cifar10", tmp / "cifar10-warmup"
        write_data(data, args.images)
        write_data(warm_data, max(1, args.warmup_steps) * args.batch)
        for method in args.methods:
            runs: dict[str, list[float]] = {"lightly": [], "ours": [], "ours_dimcl": []}
            losses: dict[str, list[float]] = {k: [] for k in runs}
            for r in range(args.repeats):
                if args.warmup_steps:
                    lightly_epoch(method, warm_data, args.batch, args.workers, args.device, args.warmup_steps)
                rate, steps, loss = lightly_epoch(method, data, args.batch, args.workers, args.device)
                runs["lightly"].append(rate)
                losses["lightly"].append(loss)
                for key, weight in (("ours", 0.0), ("ours_dimcl", 0.1)):
                    if args.warmup_steps:
                        ours_epoch(method, warm_data, tmp / "runs" / f"warm-{method}-{key}-{r}", args.batch,
                                   args.workers, args.device, weight)
                    rate, ours_steps, loss = ours_epoch(method, data, tmp / "runs" / f"{method}-{key}-{r}",
                                                        args.batch, args.workers, args.device, weight)
                    if ours_steps != steps:
                        raise RuntimeError(f"{method}: ours ran {ours_steps} steps, lightly {steps}")
                    runs[key].append(rate)
                    losses[key].append(loss)
                print(f"{method} round {r + 1}/{args.repeats}: lightly {runs['lightly'][-1]:.1f} img/s, "
                      f"ours {runs['ours'][-1]:.1f}, ours +DimCL {runs['ours_dimcl'][-1]:.1f}", flush=True)
                if torch.get_num_threads() != threads:
                    print(f"warning: torch threads changed from {threads} to {torch.get_num_threads()}", flush=True)
            med = {k: statistics.median(v) for k, v in runs.items()}
            rows.append({
                "method": method,
                "steps_per_epoch": steps,
                "lightly_images_per_s": med["lightly"],
                "ours_images_per_s": med["ours"],
                "ours_dimcl_images_per_s": med["ours_dimcl"],
                "ratio_ours_over_lightly": med["ours"] / med["lightly"],
                "ratio_ours_dimcl_over_lightly": med["ours_dimcl"] / med["lightly"],
                "runs_images_per_s": runs,
                "mean_loss_last_run": {k: v[-1] for k, v in losses.items()},
            })

    result = {
        "lightly": lightly.__version__,
        "dimcl": importlib.metadata.version("dimcl"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "machine": machine_name(args.device),
        "torch_threads": threads,
        "precision": "float32",
        "batch": args.batch,
        "images": args.images,
        "workers": args.workers,
        "repeats": args.repeats,
        "warmup_steps": args.warmup_steps,
        "optimizer": "recipe's LARS via dimcl.train.optim.build_optimizer, both sides",
        "rows": rows,
    }
    where = result["gpu"] or result["machine"]
    lines = [f"lightly {result['lightly']}, torch {result['torch']}, {args.device} ({where}), batch {args.batch}, "
             f"{args.images} images, {args.workers} workers, float32, median of {args.repeats}", "",
             "| method | lightly (img/s) | dimcl (img/s) | ratio dimcl / lightly | dimcl +DimCL λ=0.1 (img/s) "
             "| ratio +DimCL / lightly |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['lightly_images_per_s']:.1f} | {row['ours_images_per_s']:.1f} "
                     f"| {row['ratio_ours_over_lightly']:.2f} | {row['ours_dimcl_images_per_s']:.1f} "
                     f"| {row['ratio_ours_dimcl_over_lightly']:.2f} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.md:
        Path(args.md).write_text(table)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
