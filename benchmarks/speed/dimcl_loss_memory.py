"""DimCL loss alone: plain vs blockwise forward + backward time and peak extra memory (CPU or CUDA).

    python benchmarks/speed/dimcl_loss_memory.py [--device cpu] [--out results.json]

Each (implementation, D, N) runs in a fresh subprocess; on the CPU peak extra memory is the growth of
the process's peak RSS over its RSS with the inputs allocated, on CUDA torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = [(256, 256), (2048, 256), (8192, 256), (256, 1024), (2048, 1024), (8192, 1024)]  # (D, N)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(implementation: str, d: int, n: int, device: str, repeats: int) -> dict:
    import torch

    from dimcl.losses import dimcl_loss

    torch.manual_seed(0)
    z1 = torch.randn(n, d, device=device, requires_grad=True)
    z2 = torch.randn(n, d, device=device, requires_grad=True)
    loss = dimcl_loss(z1, z2, implementation=implementation)  # warm-up
    loss.backward()
    z1.grad = z2.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        loss = dimcl_loss(z1, z2, implementation=implementation)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        z1.grad = z2.grad = None
    if device == "cuda":
        extra = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"implementation": implementation, "D": d, "N": n, "device": device,
            "median_s": sorted(times)[len(times) // 2], "peak_extra_mib": extra, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--md", help="Markdown table")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "D", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, d, n = args.one
        print(json.dumps(measure(impl, int(d), int(n), args.device, args.repeats)))
        return
    rows = []
    for d, n in CASES:
        for impl in ("plain", "blockwise"):
            proc = subprocess.run([sys.executable, __file__, "--device", args.device, "--repeats", str(args.repeats),
                                   "--one", impl, str(d), str(n)], capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{impl:9s} D={d:5d} N={n:5d}  {r['median_s'] * 1000:8.1f} ms  "
                  f"peak extra {r['peak_extra_mib']:8.1f} MiB", flush=True)
    import torch
    from step_speed import machine_name  # this script's folder is on sys.path when it runs

    result = {"device": args.device, "machine": machine_name(args.device), "torch": torch.__version__, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.md:
        with open(args.md, "w") as f:
            f.write(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    by_case = {(r["D"], r["N"], r["implementation"]): r for r in result["rows"]}
    lines = [f"Device: {result['device']} ({result['machine']}), torch {result['torch']}.", "",
             "| D | N | plain (ms) | blockwise (ms) | time ratio | plain peak extra (MiB) | blockwise peak extra (MiB) "
             "| memory ratio |", "|---|---|---|---|---|---|---|---|"]
    for d, n in CASES:
        plain, block = by_case.get((d, n, "plain")), by_case.get((d, n, "blockwise"))
        if plain is None or block is None:
            continue
        lines.append(
            f"| {d} | {n} | {plain['median_s'] * 1000:.1f} | {block['median_s'] * 1000:.1f} | "
            f"{block['median_s'] / plain['median_s']:.2f} | {plain['peak_extra_mib']:.0f} | "
            f"{block['peak_extra_mib']:.0f} | {block['peak_extra_mib'] / max(plain['peak_extra_mib'], 1e-9):.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
