"""Training-step speed and memory of the six methods with and without DimCL, end-to-end images/s, and
before/after ratios of the loop's speed switches.

    python benchmarks/speed/step_speed.py [--device cpu] [--batch 256] [--precision 32] \
        [--out step_speed_cpu.json] [--md step_speed_cpu.md]

Model: ResNet-18 with the CIFAR stem on 32x32 images, each method's recipe widths (src/dimcl/configs/cifar10).
- step: forward + backward + optimizer step + momentum update on a fixed random batch (no data loading),
  λ = 0 and λ = 0.1 interleaved step by step so both see the same machine state; median after a warm-up
  step. Peak memory of a step: on CUDA ``torch.cuda.max_memory_allocated`` over the step minus what was
  allocated before it; on the CPU the growth of the resident set over the step (the kernel's high-water
  mark, reset through /proc/self/clear_refs before each step, after glibc's ``malloc_trim``).
- end to end: the real training loop (``dimcl.train.loop.pretrain``) for one epoch on random images
  written in CIFAR-10's on-disk format, with the recipe's augmentations and data loading; the loop also
  reports the fraction of the epoch it waited for the loader (``data_wait_fraction``).
- switches (one method, λ = 0.1, each pair interleaved in one process): ``trainer.channels_last``, the
  multi-tensor LARS step against the per-tensor loop, ``data.augment_on=device`` against ``loader``
  (end to end), and with ``--compile`` ``trainer.compile`` (the step after compilation).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import pickle
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dimcl.build import build_method_from_config
from dimcl.methods import METHODS, cosine_momentum
from dimcl.recipes import load_config, resolve_recipe
from dimcl.train.loop import pretrain
from dimcl.train.optim import build_optimizer
from dimcl.train.pretrainer import Pretrainer, compile_networks

AUTOCAST = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _config(method: str, batch: int, weight: float, extra: list[str]):
    return load_config(resolve_recipe(f"cifar10/{method}"),
                       [f"data.batch_size={batch}", f"dimcl.weight={weight}", *extra])


# ------------------------------------------------------------------------------------------ memory


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


class PeakMemory:
    """Peak memory a block adds over what was in use when it started (MiB), on CUDA or the CPU."""

    def __init__(self, device: str):
        self.device = device
        self.extra_mib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated() / 2**20
        else:
            with contextlib.suppress(OSError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory back to the kernel first
            with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the high-water mark to the current resident set
            self._base = _rss_mib()
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.extra_mib = torch.cuda.max_memory_allocated() / 2**20 - self._base
        else:
            self.extra_mib = _hwm_mib() - self._base


# ------------------------------------------------------------------------------------------ steps


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _build(cfg, device: str, channels_last: bool = False, compiled: bool = False):
    torch.manual_seed(0)
    m = build_method_from_config(cfg, gather_distributed=False)
    model = Pretrainer(m, None, channels_last=channels_last).to(device)
    if compiled:
        compile_networks(m)
    return model, build_optimizer(m, None, cfg.optim, cfg.data.batch_size, device)


def _train_step(model, optimizer, views, precision: str, step: int) -> dict:
    dtype = AUTOCAST[precision]
    device = views[0].device.type
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        out = model(views, torch.zeros(views[0].shape[0], dtype=torch.long, device=views[0].device))
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    model.method.momentum_update(cosine_momentum(step, 100))
    return out


def interleaved_steps(models: dict, batch: int, device: str, steps: int, precision: str,
                      warmup: int = 1) -> dict:
    """Median step time (s) and peak extra memory (MiB) of each model, stepping them in turn."""
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, 32, 32, generator=g).to(device) for _ in range(2)]
    times: dict = {k: [] for k in models}
    peaks: dict = {k: [] for k in models}
    out = None
    for i in range(steps + warmup):
        for key, (model, optimizer) in models.items():
            _sync(device)
            with PeakMemory(device) as memory:
                started = time.perf_counter()
                out = _train_step(model, optimizer, views, precision, i)
                _sync(device)
                elapsed = time.perf_counter() - started
            if i >= warmup:  # the first steps warm up allocators, kernels (and compile)
                times[key].append(elapsed)
                peaks[key].append(memory.extra_mib)
    return {k: {"step_s": statistics.median(times[k]), "peak_extra_mib": max(peaks[k]),
                "projector_dim": int(out["z1"].shape[1])} for k in models}


def step_row(method: str, batch: int, device: str, steps: int, precision: str) -> dict:
    models = {w: _build(_config(method, batch, w, []), device) for w in (0.0, 0.1)}
    res = interleaved_steps(models, batch, device, steps, precision)
    base, dimcl = res[0.0], res[0.1]
    return {"method": method, "batch": batch, "projector_dim": base["projector_dim"],
            "step_s": base["step_s"], "step_dimcl_s": dimcl["step_s"], "ratio": dimcl["step_s"] / base["step_s"],
            "peak_extra_mib": base["peak_extra_mib"], "peak_extra_dimcl_mib": dimcl["peak_extra_mib"]}


# ------------------------------------------------------------------------------------------ end to end


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


def end_to_end(method: str, batch: int, root: Path, out: Path, workers: int, precision: str = "32",
               extra: tuple[str, ...] = (), device: str = "cpu") -> dict:
    """One epoch of the real loop, λ = 0.1: its images/s and the fraction spent waiting for data."""
    cfg = _config(method, batch, 0.1, [f"data.root={root}", "trainer.max_epochs=1", "eval.every=0",
                                       "eval.diagnose=false", "trainer.progress_bar=false", "trainer.tensorboard=false",
                                       f"data.num_workers={workers}", "optim.warmup_epochs=0",
                                       f"trainer.precision={precision}", f"trainer.accelerator={device}", *extra])
    run = out / f"{method}-{len(list(out.glob('*'))) if out.exists() else 0}"
    record = pretrain(cfg, run).records[0]
    return {"images_per_s": record["images_per_s"], "data_wait_fraction": record["data_wait_fraction"]}


# ------------------------------------------------------------------------------------------ switches


def lars_step_ratio(device: str, repeats: int = 20) -> dict:
    """Optimizer step alone on BYOL's parameters (ResNet-18 + heads): multi-tensor LARS vs the loop."""
    cfg = _config("byol", 64, 0.1, [])
    method = build_method_from_config(cfg, gather_distributed=False).to(device)
    for p in method.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {name: build_optimizer(method, None, cfg.optim, 256, device) for name in ("loop", "foreach")}
    optimizers["loop"].foreach = False
    optimizers["foreach"].foreach = True
    times: dict = {name: [] for name in optimizers}
    for i in range(repeats + 2):
        for name, optimizer in optimizers.items():
            _sync(device)
            started = time.perf_counter()
            optimizer.step()
            _sync(device)
            if i >= 2:
                times[name].append(time.perf_counter() - started)
    loop, foreach = statistics.median(times["loop"]), statistics.median(times["foreach"])
    return {"switch": "LARS multi-tensor step (optimizer step alone, BYOL parameters)", "before_s": loop,
            "after_s": foreach, "ratio": foreach / loop}


def channels_last_ratio(method: str, batch: int, device: str, steps: int, precision: str) -> dict:
    cfg = _config(method, batch, 0.1, [])
    models = {"default": _build(cfg, device), "channels_last": _build(cfg, device, channels_last=True)}
    res = interleaved_steps(models, batch, device, steps, precision)
    before, after = res["default"]["step_s"], res["channels_last"]["step_s"]
    return {"switch": f"trainer.channels_last=true ({method} step, batch {batch})", "before_s": before,
            "after_s": after, "ratio": after / before}


def compile_ratio(method: str, batch: int, device: str, steps: int, precision: str) -> dict:
    cfg = _config(method, batch, 0.1, [])
    models = {"eager": _build(cfg, device), "compiled": _build(cfg, device, compiled=True)}
    started = time.perf_counter()
    res = interleaved_steps(models, batch, device, steps, precision, warmup=2)
    before, after = res["eager"]["step_s"], res["compiled"]["step_s"]
    return {"switch": f"trainer.compile=true ({method} step, batch {batch})", "before_s": before, "after_s": after,
            "ratio": after / before, "total_s_including_compilation": time.perf_counter() - started}


def augment_on_ratio(method: str, batch: int, root: Path, out: Path, workers: int, precision: str,
                     device: str) -> dict:
    runs = {}
    for where in ("loader", "device", "loader", "device"):  # interleaved, median of 2 each
        result = end_to_end(method, batch, root, out, workers, precision, (f"data.augment_on={where}",), device)
        runs.setdefault(where, []).append(result["images_per_s"])
    before, after = statistics.median(runs["loader"]), statistics.median(runs["device"])
    return {"switch": f"data.augment_on=device (end to end, {method}, batch {batch}, {workers} workers; images/s)",
            "before_images_per_s": before, "after_images_per_s": after, "ratio": after / before}


# ------------------------------------------------------------------------------------------ report


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def markdown(result: dict) -> str:
    lines = [f"Device: {result['device']} ({result['machine']}), torch {result['torch']}, batch {result['batch']}, "
             f"precision {result['precision']}.", "",
             "| method | projector D | step (s) | step +DimCL (s) | ratio | peak extra (MiB) | peak extra +DimCL "
             "(MiB) | end to end +DimCL (img/s) | waiting for data |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        e2e = r.get("end_to_end", {})
        lines.append(
            f"| {r['method']} | {r['projector_dim']} | {r['step_s']:.3f} | {r['step_dimcl_s']:.3f} | {r['ratio']:.3f} "
            f"| {r['peak_extra_mib']:.0f} | {r['peak_extra_dimcl_mib']:.0f} | "
            f"{e2e.get('images_per_s', float('nan')):.0f} | {100 * e2e.get('data_wait_fraction', float('nan')):.0f}% |")
    if result.get("switches"):
        lines += ["", "| switch | before | after | ratio after/before |", "|---|---|---|---|"]
        for s in result["switches"]:
            if "before_s" in s:
                lines.append(f"| {s['switch']} | {s['before_s']:.4f} s | {s['after_s']:.4f} s | {s['ratio']:.3f} |")
            else:
                lines.append(f"| {s['switch']} | {s['before_images_per_s']:.0f} | {s['after_images_per_s']:.0f} | "
                             f"{s['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (after one warm-up step)")
    parser.add_argument("--precision", default="32", choices=list(AUTOCAST))
    parser.add_argument("--images", type=int, default=512, help="images in the end-to-end epoch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--switch-method", default="simclr", help="the method the switches are measured on")
    parser.add_argument("--no-switches", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also measure trainer.compile (minutes on a CPU)")
    parser.add_argument("--out", help="JSON results")
    parser.add_argument("--md", help="Markdown table")
    args = parser.parse_args()
    started = time.perf_counter()
    rows, switches = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar10"
        write_random_cifar10(root, args.images)
        for method in args.methods:
            row = step_row(method, args.batch, args.device, args.steps, args.precision)
            row["end_to_end"] = end_to_end(method, args.batch, root, Path(tmp) / "runs", args.workers, args.precision,
                                           device=args.device)
            rows.append(row)
            print(f"{method:13s} step {row['step_s']:.3f} s  +DimCL {row['step_dimcl_s']:.3f} s  ratio "
                  f"{row['ratio']:.3f}  peak {row['peak_extra_mib']:.0f} / {row['peak_extra_dimcl_mib']:.0f} MiB  "
                  f"end-to-end {row['end_to_end']['images_per_s']:.0f} img/s", flush=True)
        if not args.no_switches:
            m = args.switch_method
            switches.append(lars_step_ratio(args.device))
            switches.append(channels_last_ratio(m, args.batch, args.device, args.steps, args.precision))
            switches.append(augment_on_ratio(m, args.batch, root, Path(tmp) / "runs", args.workers, args.precision,
                                             args.device))
            if args.compile:
                switches.append(compile_ratio(m, args.batch, args.device, args.steps, args.precision))
            for s in switches:
                print(f"{s['switch']}: ratio {s['ratio']:.3f}", flush=True)
    result = {"device": args.device,
              "machine": machine_name(args.device),
              "torch": torch.__version__, "batch": args.batch, "precision": args.precision, "steps": args.steps,
              "images": args.images, "workers": args.workers, "rows": rows, "switches": switches,
              "wall_s": time.perf_counter() - started}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
