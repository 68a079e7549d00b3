"""`dimcl demo`: BYOL vs BYOL + DimCL on Fashion-MNIST, on the CPU, next to a random-init floor.

Both runs use the same recipe, seed and budget; only ``dimcl.weight`` differs (0 vs 0.1). The floor is
the same backbone architecture with random weights, evaluated by the same kNN. Writes into ``out``:
the two run directories, ``summary.md``, ``summary.json`` and ``curves.png``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dimcl.config import load_config
from dimcl.eval.diversity import diversity_report, fixed_eval_batch
from dimcl.eval.offline import knn_of_backbone
from dimcl.recipes import resolve_recipe
from dimcl.run_dir import BACKBONE, load_run_config, read_metrics
from dimcl.train.loop import pretrain
from dimcl.train.setup import build_backbone_from_config, build_eval_datasets

RECIPE = "fashion_mnist/byol"
#: the budget that fits the demo in ~10 minutes on a 2-core CPU (see the README for the measured time)
BUDGET = [
    "data.subset=10000",
    "data.eval_subset=5000",
    "trainer.max_epochs=6",
    "eval.every=1",
]
RUNS = {"byol": ("BYOL", ["dimcl.weight=0"]), "byol_dimcl": ("BYOL + DimCL", ["dimcl.weight=0.1"])}


def _run_or_reuse(run_dir: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """Pretrain into ``run_dir``; a finished run of the same config is reused, anything else replaced."""
    cfg = load_config(resolve_recipe(RECIPE), overrides)
    if run_dir.exists():
        try:
            same = load_run_config(run_dir) == cfg
        except ValueError:
            same = False
        records = read_metrics(run_dir)
        if same and (run_dir / BACKBONE).is_file() and records and records[-1]["epoch"] == cfg.trainer.max_epochs:
            print(f"reusing the finished run in {run_dir}")
            return records
        if same and (run_dir / "checkpoints" / "last.ckpt").is_file():
            pretrain(cfg, run_dir, resume=True)
            return read_metrics(run_dir)
        shutil.rmtree(run_dir)  # the demo's own folder, from another budget
    pretrain(cfg, run_dir)
    return read_metrics(run_dir)


def _floor(overrides: list[str]) -> dict[str, Any]:
    """kNN and feature diversity of the same backbone with random weights (eval batch as in training)."""
    cfg = load_config(resolve_recipe(RECIPE), overrides)
    torch.manual_seed(cfg.seed)
    backbone = build_backbone_from_config(cfg)
    datasets = build_eval_datasets(cfg)
    result = knn_of_backbone(backbone, cfg, datasets=datasets)
    backbone.eval()
    with torch.no_grad():
        features = backbone(fixed_eval_batch(datasets[1], cfg.eval.diagnose_images))
    return {**result, **diversity_report(features, "backbone_")}


def _plot(results: dict[str, dict[str, Any]], floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(10, 4))
    for result in results.values():
        epochs = [r["epoch"] for r in result["records"]]
        ax_loss.plot(epochs, [r["loss_ssl"] for r in result["records"]], marker="o",
                     label=f"{result['label']}: BYOL term")
        if "loss_dimcl" in result["records"][0]:
            ax_loss.plot(epochs, [r["loss_dimcl"] for r in result["records"]], marker="s", linestyle="--",
                         label=f"{result['label']}: DimCL term")
        ax_knn.plot(epochs, [r["knn_top1"] for r in result["records"]], marker="o", label=result["label"])
    ax_knn.axhline(floor, color="grey", linestyle=":", label="random-init backbone")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training loss per epoch")
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="Weighted kNN (k=200) on the test subset")
    ax_loss.legend(fontsize=8)
    ax_knn.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(results: dict[str, dict[str, Any]], floor: dict[str, Any]) -> str:
    lines = [
        "| backbone | λ (dimcl.weight) | kNN top-1 (%) | kNN top-5 (%) | online probe top-1 (%) "
        "| effective rank | mean abs. corr. | final BYOL loss | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| random init (floor) | – | {floor['knn_top1']:.2f} | {floor['knn_top5']:.2f} | – "
        f"| {floor['backbone_effective_rank']:.1f} | {floor['backbone_mean_abs_corr']:.3f} | – | – |",
    ]
    for result in results.values():
        last = result["records"][-1]
        train_time = sum(r["epoch_time_s"] for r in result["records"])
        lines.append(
            f"| {result['label']} | {result['weight']} | {last['knn_top1']:.2f} | {last['knn_top5']:.2f} | "
            f"{last.get('probe_top1', float('nan')):.2f} | {last.get('backbone_effective_rank', float('nan')):.1f} | "
            f"{last.get('backbone_mean_abs_corr', float('nan')):.3f} | {last['loss_ssl']:.4f} | {train_time:.0f} |"
        )
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", overrides: Sequence[str] = ()) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = [*BUDGET, *overrides]
    load_config(resolve_recipe(RECIPE), base)  # fail on a bad override before any training
    results: dict[str, dict[str, Any]] = {}
    for key, (label, extra) in RUNS.items():
        print(f"== {label}: dimcl pretrain -c {RECIPE} {' '.join(base + extra)}")
        records = _run_or_reuse(out / key, [*base, *extra])
        results[key] = {"label": label, "weight": float(extra[0].split("=")[1]), "records": records}
    print("== random-init floor: the same backbone, untrained")
    floor = _floor(base)
    table = _table(results, floor)
    _plot(results, floor["knn_top1"], out / "curves.png")
    total = time.perf_counter() - started
    cfg = load_run_config(out / "byol")
    summary = [
        "# dimcl demo: BYOL vs BYOL + DimCL on Fashion-MNIST (CPU)",
        "",
        f"Recipe `{RECIPE}` with `{' '.join(base)}`: backbone `{cfg.backbone.name}`, batch {cfg.data.batch_size}, "
        f"{cfg.trainer.max_epochs} epochs on a seeded subset of {cfg.data.subset} training images, seed {cfg.seed}. "
        f"kNN: weighted, k={cfg.eval.knn_k}, T={cfg.eval.knn_temperature}, bank and test sets of "
        f"{floor['bank_size']} and {floor['eval_size']} images. Effective rank (RankMe) and mean absolute "
        f"correlation between dimensions: backbone features of the first {cfg.eval.diagnose_images} test images. "
        "Train time: the epochs' training loops, without evaluation.",
        "",
        table,
        "",
        "![loss and kNN accuracy per epoch](curves.png)",
        "",
        f"Made by `{' '.join(['dimcl demo --out', str(out), *overrides])}`; this invocation took {total:.0f} s "
        "(a finished run of the same configuration is reused, not retrained).",
        "",
    ]
    (out / "summary.md").write_text("\n".join(summary))
    (out / "summary.json").write_text(json.dumps({"runs": results, "floor": floor, "total_s": total}, indent=2))
    print()
    print(table)
    print(f"\nwrote {out / 'summary.md'} and {out / 'curves.png'} ({total:.0f} s)")
    return {"runs": results, "floor": floor, "total_s": total}
