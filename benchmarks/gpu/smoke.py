"""GPU smoke checks: the paths that only a GPU exercises, each on a tiny synthetic Fashion-MNIST, in ~2 minutes.

    python benchmarks/gpu/smoke.py --out smoke.json            # on CUDA (benchmarks/gpu/run.sh runs it)
    python benchmarks/gpu/smoke.py --device cpu --out x.json   # a dry run of the same code on the CPU

Checks (each a row of the JSON, with its figures; a failed check is a row with "ok": false and the error):
- every method, base and +DimCL, one epoch in bf16-mixed; BYOL, SimCLR and DINO (gradients clipped, so
  unscaled by the GradScaler first) in 16-mixed: finite losses
  (that each objective computes in float32 under CUDA autocast is the test suite's, run by run.sh);
- ``trainer.compile=true``: the run finishes and its checkpoint has the uncompiled run's parameter names;
- ``data.augment_on=device``: the batch views are made on the GPU;
- blockwise DimCL against the plain form on the device (loss and gradients, float32), with peak memory;
- SIGTERM to the whole process group of a real ``dimcl pretrain`` mid-epoch, then ``--resume``: the run
  ends; the largest weight difference to an uninterrupted run is reported (cuDNN's algorithms need not be
  deterministic, so it is a figure, not an assertion; on the CPU it must be 0);
- kNN on the device against the CPU (hit counts).

It imports dimcl from this checkout's src/ and the synthetic data writer from tests/conftest.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

import torch  # noqa: E402
from conftest import TINY_RUN, write_fashion_mnist  # noqa: E402
from methods.cases import option_overrides  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from dimcl.checkpoint import load_checkpoint  # noqa: E402
from dimcl.eval.knn import weighted_knn  # noqa: E402
from dimcl.losses import dimcl_loss  # noqa: E402
from dimcl.methods import METHODS  # noqa: E402
from dimcl.recipes import load_config, resolve_recipe  # noqa: E402
from dimcl.train.loop import pretrain  # noqa: E402


def _tiny(method: str) -> list[str]:
    """The tests' tiny-run overrides with the method's small options (its row of tests/methods/cases.py)."""
    return [o for o in TINY_RUN if not o.startswith("method.")] + option_overrides(method)


def _config(root: Path, device: str, method: str = "byol", *extra: str):
    return load_config(
        resolve_recipe(f"fashion_mnist/{method}"),
        [*_tiny(method), f"data.root={root}", f"trainer.accelerator={device}", "trainer.max_epochs=1", *extra],
    )


def check_precisions(root: Path, work: Path, device: str) -> dict:
    runs = [(m, "bf16-mixed", w) for m in METHODS for w in (0.0, 0.1)]
    runs += [(m, "16-mixed", 0.1) for m in ("byol", "simclr", "dino")]
    losses = {}
    for method, precision, weight in runs:
        if precision == "16-mixed" and device == "cpu":
            continue  # float16 autocast is a GPU feature
        cfg = _config(root, device, method, f"trainer.precision={precision}", f"dimcl.weight={weight}")
        record = pretrain(cfg, work / f"{method}-{precision}-{weight}").records[-1]
        bad = {k: v for k, v in record.items() if k.startswith("loss") and not torch.isfinite(torch.tensor(v))}
        if bad:
            raise AssertionError(f"{method} {precision} λ={weight}: non-finite {bad}")
        losses[f"{method} {precision} λ={weight}"] = round(record["loss"], 4)
    return {"runs": len(losses), "loss": losses}


def check_compile(root: Path, work: Path, device: str) -> dict:
    started = time.perf_counter()
    pretrain(_config(root, device, "byol", "trainer.compile=true"), work / "compiled")
    compiled_s = time.perf_counter() - started
    pretrain(_config(root, device, "byol"), work / "eager")
    names = [set(load_checkpoint(work / run / "checkpoints" / "last.ckpt")["model"]) for run in ("compiled", "eager")]
    if names[0] != names[1]:
        raise AssertionError(f"compiled checkpoint names differ: {sorted(names[0] ^ names[1])[:5]}")
    return {"compiled_run_s": round(compiled_s, 1), "parameter_names": len(names[0])}


def check_device_views(root: Path, work: Path, device: str) -> dict:
    record = pretrain(_config(root, device, "simclr", "data.augment_on=device"), work / "device_views").records[-1]
    return {"loss": round(record["loss"], 4), "images_per_s": round(record["images_per_s"], 1)}


def check_blockwise(device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    n, d = (512, 2048) if device != "cpu" else (64, 256)
    z1, z2 = (torch.randn(n, d, generator=gen).to(device) for _ in range(2))
    results = {}
    for form in ("plain", "blockwise"):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        loss = dimcl_loss(a, b, temperature=0.1, implementation=form)
        loss.backward()
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        results[form] = (loss.detach(), a.grad, b.grad, peak)
    plain, block = results["plain"], results["blockwise"]
    # float32 sums of D = 2048 terms: a relative error of a few 1e-6 (sqrt(D) * 2^-24 * a few); 1e-4 is loose
    loss_diff = abs(float(plain[0] - block[0])) / abs(float(plain[0]))
    grad_diff = max(float((p - q).abs().max() / p.abs().max()) for p, q in zip(plain[1:3], block[1:3], strict=True))
    if loss_diff > 1e-4 or grad_diff > 1e-4:
        raise AssertionError(f"blockwise vs plain: loss rel. diff {loss_diff:.2e}, gradient {grad_diff:.2e}")
    return {"n": n, "d": d, "loss_rel_diff": loss_diff, "grad_rel_diff": grad_diff,
            "peak_mib_plain": plain[3], "peak_mib_blockwise": block[3]}


def _command(root: Path, out: Path, device: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dimcl.cli", "pretrain", "-c", "fashion_mnist/byol", "--out", str(out), *TINY_RUN,
            f"data.root={root}", f"trainer.accelerator={device}", "trainer.max_epochs=2", "eval.every=0",
            "trainer.checkpoint_every_n_steps=1", *extra]


def check_sigterm_resume(root: Path, work: Path, device: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run(_command(root, work / "whole", device), env=env, check=True, capture_output=True)
    ckpt = work / "killed" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_command(root, work / "killed", device), env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file() and load_checkpoint(ckpt).get("global_step", 0) >= 3:
            os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as SLURM and `timeout` do
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=300)
    if "--resume" not in output:
        raise AssertionError(f"SIGTERM did not end with a saved state (exit {proc.returncode}):\n{output[-2000:]}")
    stopped_at = load_checkpoint(ckpt)["global_step"]
    subprocess.run(_command(root, work / "killed", device, "--resume"), env=env, check=True, capture_output=True)
    whole = load_file(work / "whole" / "backbone.safetensors")
    resumed = load_file(work / "killed" / "backbone.safetensors")
    diff = max(float((whole[k].float() - resumed[k].float()).abs().max()) for k in whole)
    if device == "cpu" and diff != 0:
        raise AssertionError(f"on the CPU a resumed run must equal the uninterrupted one; max difference {diff}")
    return {"stopped_at_step": stopped_at, "max_weight_diff_vs_uninterrupted": diff}


def check_knn(device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    bank, bank_y = torch.randn(20000, 128, generator=gen), torch.randint(10, (20000,), generator=gen)
    test, test_y = torch.randn(5000, 128, generator=gen), torch.randint(10, (5000,), generator=gen)
    on_cpu = weighted_knn(bank, bank_y, test, test_y, k=200)
    started = time.perf_counter()
    on_device = weighted_knn(bank, bank_y, test, test_y, k=200, device=device)
    seconds = time.perf_counter() - started
    # Near-tied similarities may order differently in float32 on another device: allow a few samples in 5 000
    if abs(on_device["top1"] - on_cpu["top1"]) > 0.1:
        raise AssertionError(f"kNN on {device}: {on_device} vs CPU {on_cpu}")
    return {"top1_device": on_device["top1"], "top1_cpu": on_cpu["top1"], "device_s": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--only", nargs="*", help="run only these checks")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("smoke.py: no CUDA device visible")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = write_fashion_mnist(work / "data", n_train=256, n_test=96)
        checks = {
            "precisions": lambda: check_precisions(root, work / "precisions", args.device),
            "compile": lambda: check_compile(root, work / "compile", args.device),
            "device_views": lambda: check_device_views(root, work / "views", args.device),
            "blockwise_dimcl": lambda: check_blockwise(args.device),
            "sigterm_resume": lambda: check_sigterm_resume(root, work / "resume", args.device),
            "knn_on_device": lambda: check_knn(args.device),
        }
        rows = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                "torch": torch.__version__}
        for name, check in checks.items():
            if args.only and name not in args.only:
                continue
            started = time.perf_counter()
            try:
                rows[name] = {"ok": True, **check()}
            except Exception as err:  # a failed check is reported; the others still run
                rows[name] = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
            rows[name]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"{name}: {'ok' if rows[name]['ok'] else 'FAILED ' + rows[name]['error']} "
                  f"({rows[name]['seconds']} s)", flush=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(row["ok"] for row in rows.values() if isinstance(row, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
