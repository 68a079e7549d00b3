"""Training-step speed of the six methods with and without DimCL, and end-to-end images/s.

    python benchmarks/speed/step_speed.py [--device cpu] [--batch 64] [--out step_speed_cpu.json]

Model: ResNet-18 with the CIFAR stem on 32x32 images, each method's recipe widths (configs/cifar10).
- step: forward + backward + optimizer step + momentum update on a fixed random batch (no data loading),
  λ = 0 and λ = 0.1 interleaved step by step so both see the same machine state; median after warm-up.
- end to end: the real training loop (`dimcl.train.loop.pretrain`) for one epoch on random images
  written in CIFAR-10's on-disk format, with the recipe's augmentations and data loading.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dimcl.config import load_config
from dimcl.methods import METHODS, cosine_momentum
from dimcl.recipes import resolve_recipe
from dimcl.train.loop import Pretrainer, pretrain
from dimcl.train.optim import build_optimizer
from dimcl.train.setup import build_method_from_config


def _config(method: str, batch: int, weight: float, extra: list[str]):
    return load_config(resolve_recipe(f"cifar10/{method}"),
                       [f"data.batch_size={batch}", f"dimcl.weight={weight}", "trainer.precision=32", *extra])


def step_times(method: str, batch: int, device: str, steps: int) -> dict:
    """Median step time (s) for λ = 0 and λ = 0.1, interleaved."""
    models = {}
    for weight in (0.0, 0.1):
        torch.manual_seed(0)
        cfg = _config(method, batch, weight, [])
        m = build_method_from_config(cfg, gather_distributed=False).to(device)
        models[weight] = (m, build_optimizer(m, None, cfg.optim, batch))
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, 32, 32, generator=g).to(device) for _ in range(2)]
    times: dict[float, list[float]] = {0.0: [], 0.1: []}
    for i in range(steps + 1):
        for weight, (m, opt) in models.items():
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            out = Pretrainer(m, None)(views, torch.zeros(batch, dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            m.momentum_update(cosine_momentum(i, 100))
            if device == "cuda":
                torch.cuda.synchronize()
            if i > 0:  # the first step warms up allocators and kernels
                times[weight].append(time.perf_counter() - started)
    base, dimcl = statistics.median(times[0.0]), statistics.median(times[0.1])
    return {"method": method, "batch": batch, "step_s": base, "step_dimcl_s": dimcl, "ratio": dimcl / base,
            "projector_dim": int(out["z1"].shape[1])}


def write_random_cifar10(root: Path, n: int) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in [("data_batch_1", n)] + [(f"data_batch_{i}", 0) for i in range(2, 6)] + [("test_batch", 256)]:
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(rng.integers(0, 10, size=count))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)


def end_to_end(method: str, batch: int, root: Path, out: Path, workers: int) -> float:
    cfg = _config(method, batch, 0.1, [f"data.root={root}", "trainer.max_epochs=1", "eval.every=0",
                                       "eval.diagnose=false", "trainer.progress_bar=false", "trainer.tensorboard=false",
                                       f"data.num_workers={workers}", "optim.warmup_epochs=0"])
    return pretrain(cfg, out / method).records[0]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--images", type=int, default=512, help="images in the end-to-end epoch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar10"
        write_random_cifar10(root, args.images)
        for method in args.methods:
            row = step_times(method, args.batch, args.device, args.steps)
            row["end_to_end_images_per_s"] = end_to_end(method, args.batch, root, Path(tmp) / "runs", args.workers)
            rows.append(row)
            print(f"{method:13s} step {row['step_s']:.3f} s  +DimCL {row['step_dimcl_s']:.3f} s  "
                  f"ratio {row['ratio']:.3f}  end-to-end {row['end_to_end_images_per_s']:.0f} img/s", flush=True)
    result = {"device": args.device, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "batch": args.batch, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
