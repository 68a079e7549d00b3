"""`dimcl demo`: BYOL vs BYOL + DimCL on Fashion-MNIST, on the CPU, between floors and a ceiling.

Both runs use the same recipe, seed and budget; only ``dimcl.weight`` differs (0 vs 0.1). The floors are
the raw pixels and the same backbone with random weights, the ceiling the same backbone trained with
labels for the same epochs on the same images (:mod:`dimcl.baselines`), all evaluated by the same
kNN and linear probe; a t-SNE map of each arm's backbone features (``dimcl analyze --embedding tsne``, on
the same seeded test images) shows what the figures summarise. Writes into ``out``: the two run directories
(each with its ``embedding_tsne.png``), ``baselines.json``, ``summary.md``, ``summary.json`` and ``curves.png``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from dimcl.baselines import ROWS as BASELINE_ROWS
from dimcl.baselines import baselines, protocol_of, read_baselines, write_baselines
from dimcl.config import Config
from dimcl.errors import BadInputError
from dimcl.eval.diversity import ANALYZE, diagnose_run
from dimcl.eval.embedding import DEFAULT_EMBEDDING_IMAGES, EMBEDDINGS
from dimcl.eval.linear import LINEAR, linear_of_run
from dimcl.experiment import experiment_differences
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import BASELINES, load_run_config, read_metrics, read_result, run_state
from dimcl.train.loop import pretrain

RECIPE = "fashion_mnist/byol"
#: the budget that fits the demo, setup included, in 10 minutes on a 2-core CPU (the README has the
#: measured times, of this budget and of a pass over the whole split): one pass over a seeded 40 000-image
#: subset of the training split (156 steps, a short warm-up), evaluated on seeded 5 000-image subsets so
#: that evaluation stays cheap
BUDGET = [
    "data.subset=40000",
    "data.eval_subset=5000",
    "trainer.max_epochs=1",
    "optim.warmup_epochs=0.1",
    "eval.every=1",
]
RUNS = {"byol": ("BYOL", ["dimcl.weight=0"]), "byol_dimcl": ("BYOL + DimCL", ["dimcl.weight=0.1"])}


def _run_or_reuse(run_dir: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """Pretrain into ``run_dir``; a finished run of the same config is reused, anything else replaced."""
    cfg = load_config(resolve_recipe(RECIPE), overrides)
    if run_dir.exists():
        try:
            same = not experiment_differences(load_run_config(run_dir).to_dict(), cfg.to_dict())
        except BadInputError:
            same = False
        if same and run_state(run_dir, cfg.trainer.max_epochs) == "finished":
            print(f"reusing the finished run in {run_dir}")
            return read_metrics(run_dir)
        if not same:
            shutil.rmtree(run_dir)  # the demo's own folder, from another budget
    pretrain(cfg, run_dir, resume="auto")  # continues an interrupted run of the same budget
    return read_metrics(run_dir)


def _train_arm(run_dir: Path, overrides: list[str], threads: int) -> list[dict[str, Any]]:
    """One arm in a process of its own, with ``threads`` compute threads (see :func:`_train_arms`)."""
    torch.set_num_threads(threads)
    return _run_or_reuse(run_dir, overrides)


def _train_arms(out: Path, base: list[str], parallel: bool) -> dict[str, list[dict[str, Any]]]:
    """Pretrain both arms; with ``parallel``, at the same time in two processes of one thread each.

    On two cores two single-thread runs side by side do about a quarter more steps per second than one
    two-thread run after the other (torch's two threads wait on each other at every operator).
    """
    for key, (label, extra) in RUNS.items():
        print(f"== {label}: dimcl pretrain -c {RECIPE} -o {out / key} {' '.join(base + extra)}")
    if not parallel:
        return {key: _run_or_reuse(out / key, [*base, *extra]) for key, (_, extra) in RUNS.items()}
    print("   (both at once, one thread each; progress bars off, a line per epoch)")
    quiet = [*base, "trainer.progress_bar=false"]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of a threaded process
    with ProcessPoolExecutor(max_workers=len(RUNS), mp_context=context) as pool:
        futures = {key: pool.submit(_train_arm, out / key, [*quiet, *extra], 1) for key, (_, extra) in RUNS.items()}
        return {key: future.result() for key, future in futures.items()}


def _linear(run_dir: Path) -> dict[str, Any]:
    """The fast linear probe of a finished run (reused when its linear.json is there)."""
    saved = read_result(run_dir, LINEAR.file)
    return saved if saved is not None else linear_of_run(run_dir)


#: the demo's map of each arm (a method of dimcl.eval.embedding.EMBEDDINGS)
EMBEDDING = "tsne"


def _embedding(run_dir: Path) -> dict[str, Any]:
    """The t-SNE map of a finished run (``dimcl analyze --embedding tsne``; reused when its diversity.json
    records one whose figure is there): what was made, as the analyze result records it."""
    made = (read_result(run_dir, ANALYZE.file) or {}).get("embedding")
    if isinstance(made, dict) and made.get("method") == EMBEDDING and (run_dir / str(made.get("figure"))).is_file():
        return made
    return diagnose_run(run_dir, embedding=EMBEDDING)["embedding"]


def _plot(results: dict[str, dict[str, Any]], references: dict[str, Any], path: Path) -> None:
    """kNN and linear-probe top-1 of every row of the table, floors and ceiling in grey, as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(BASELINE_ROWS[r], references[r]["knn_top1"], references[r]["linear_top1"], "0.7")
            for r in ("raw_pixels", "random_init") if r in references]
    rows += [(result["label"], result["records"][-1]["knn_top1"], result["linear"]["linear_top1"], colour)
             for result, colour in zip(results.values(), ("tab:blue", "tab:orange"), strict=False)]
    if "supervised" in references:
        s = references["supervised"]
        rows.append((BASELINE_ROWS["supervised"], s["knn_top1"], s["linear_top1"], "0.45"))
    labels = [r[0] for r in rows][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, column, title in ((axes[0], 1, "kNN top-1 (%)"), (axes[1], 2, "linear probe top-1 (%)")):
        values = [r[column] for r in rows][::-1]
        bars = ax.barh(labels, values, color=[r[3] for r in rows][::-1])
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
        low = min(values)
        ax.set_xlim(max(0.0, low - 10), 100)
        ax.set(xlabel="top-1 accuracy on the test subset (%)", title=title)
    fig.suptitle("dimcl demo: BYOL vs BYOL + DimCL between floors and a ceiling (same images, same evaluation)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(results: dict[str, dict[str, Any]], references: dict[str, Any]) -> str:
    """One row per floor, arm and the ceiling: kNN, linear probe, feature diversity, loss, train time."""
    lines = [
        "| backbone | λ (dimcl.weight) | kNN top-1 (%) | kNN top-5 (%) | linear probe top-1 (%) "
        "| effective rank | mean abs. corr. | final BYOL loss | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def reference(row: str) -> str:
        r = references[row]
        train_time = f"{r['train_time_s']:.0f}" if "train_time_s" in r else "–"
        return (f"| {BASELINE_ROWS[row]} | – | {r['knn_top1']:.2f} | {r['knn_top5']:.2f} | {r['linear_top1']:.2f} "
                f"| {r['effective_rank']:.1f} | {r['mean_abs_corr']:.3f} | – | {train_time} |")

    lines += [reference(row) for row in ("raw_pixels", "random_init") if row in references]
    for result in results.values():
        last = result["records"][-1]
        train_time = sum(r["epoch_time_s"] for r in result["records"])
        lines.append(
            f"| {result['label']} | {result['weight']} | {last['knn_top1']:.2f} | {last['knn_top5']:.2f} | "
            f"{result['linear']['linear_top1']:.2f} | {last.get('backbone_effective_rank', float('nan')):.1f} | "
            f"{last.get('backbone_mean_abs_corr', float('nan')):.3f} | {last['loss_ssl']:.4f} | {train_time:.0f} |"
        )
    if "supervised" in references:
        lines.append(reference("supervised"))
    return "\n".join(lines)


def _maps_markdown(results: dict[str, dict[str, Any]]) -> list[str]:
    """The two arms' maps side by side, with what they show and what they do not."""
    made = [(key, r) for key, r in results.items() if r.get("embedding")]
    if not made:
        return []
    first = made[0][1]["embedding"]
    return [
        f"## {EMBEDDINGS[first['method']]} maps of the backbone features",
        "",
        f"Each arm's backbone features of the same {first['images']} test images (drawn with seed {first['seed']}), "
        f"mapped to 2-D by `dimcl analyze --embedding {first['method']}` (PCA initialisation, a fixed random "
        "state; docs/eval-embedding.md), a point per image coloured by its class. Which images sit together is "
        "what a map shows; the distances between clusters and their sizes mean little. From left to right: "
        + ", ".join(r["label"] for _, r in made) + ".",
        "",
        " ".join(f"![{r['label']}]({key}/{r['embedding']['figure']})" for key, r in made),
        "",
    ]


def _references(cfg: Config, out: Path) -> dict[str, Any]:
    """The floors and the ceiling of the demo's protocol, from ``out/baselines.json`` or computed there."""
    protocol = protocol_of(cfg)
    for record in read_baselines(out):
        if record.get("seed") == cfg.seed and record.get("protocol") == protocol and "supervised" in record:
            print(f"reusing the floors and ceiling in {out / BASELINES}")
            return record
    record = baselines(cfg)
    write_baselines(out, record)
    return record


def _verdict(results: dict[str, dict[str, Any]], references: dict[str, Any]) -> str:
    """Whether both arms beat the raw pixels, said plainly either way."""
    pixels = references["raw_pixels"]["knn_top1"]
    below = [r["label"] for r in results.values() if r["records"][-1]["knn_top1"] <= pixels]
    if not below:
        return f"Both arms beat the raw pixels' kNN top-1 ({pixels:.2f}) at this budget."
    return (f"At this budget {' and '.join(below)} {'does' if len(below) == 1 else 'do'} **not** beat the raw pixels' "
            f"kNN top-1 ({pixels:.2f}): {len(results)} short runs that fit the demo's ten minutes on two CPU cores "
            "show the direction of DimCL's effect, not a representation worth more than its input. The study at "
            "a budget where self-supervised features beat the pixels is benchmarks/quality/ (see the README).")


def run_demo(out: str | Path = "runs/demo", overrides: Sequence[str] = (), parallel: bool = True) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = [*BUDGET, *overrides]
    cfg = load_config(resolve_recipe(RECIPE), base)  # fail on a bad override before any training
    records = _train_arms(out, base, parallel and (os.cpu_count() or 1) >= 2)
    results: dict[str, dict[str, Any]] = {
        key: {"label": label, "weight": float(extra[0].split("=")[1]), "records": records[key],
              "linear": _linear(out / key)}
        for key, (label, extra) in RUNS.items()
    }
    print(f"== {EMBEDDINGS[EMBEDDING]} maps: dimcl analyze --embedding {EMBEDDING} "
          f"({DEFAULT_EMBEDDING_IMAGES} test images, the same for both arms)")
    for key, result in results.items():
        result["embedding"] = _embedding(out / key)
    print("== floors and ceiling: raw pixels, the backbone untrained, the backbone trained with labels")
    references = _references(cfg, out)
    table = _table(results, references)
    verdict = _verdict(results, references)
    _plot(results, references, out / "curves.png")
    total = time.perf_counter() - started
    images = f"all {references['supervised']['train_images']}" if cfg.data.subset is None else \
        f"a seeded subset of {cfg.data.subset}"
    summary = [
        "# dimcl demo: BYOL vs BYOL + DimCL on Fashion-MNIST (CPU)",
        "",
        f"Recipe `{RECIPE}` with `{' '.join(base)}`: backbone `{cfg.backbone.name}`, batch {cfg.data.batch_size}, "
        f"{cfg.trainer.max_epochs} epoch(s) on {images} training images, seed {cfg.seed}. "
        f"kNN: weighted, k={cfg.eval.knn_k}, T={cfg.eval.knn_temperature}; kNN bank / linear-probe training set "
        f"and test set of {references['bank_size']} and {references['eval_size']} images; linear probe: the "
        "fast protocol of `dimcl linear` on frozen features. Effective rank (RankMe) and mean absolute "
        f"correlation between dimensions: backbone features of the first {cfg.eval.diagnose_images} test images. "
        "Floors: the normalised pixels themselves and the backbone with random weights; ceiling: the same "
        "backbone trained with labels (cross-entropy) for the same epochs on the same images (`dimcl baselines`). "
        "Train time: the training loops, without evaluation.",
        "",
        table,
        "",
        verdict,
        "",
        "![kNN and linear-probe top-1 of every row](curves.png)",
        "",
        *_maps_markdown(results),
        f"Made by `{' '.join(['dimcl demo --out', str(out), *overrides])}`; this invocation took {total:.0f} s "
        "(a finished run of the same configuration is reused, not retrained).",
        "",
    ]
    (out / "summary.md").write_text("\n".join(summary))
    summary_json = {"runs": results, "references": references, "verdict": verdict, "total_s": total}
    (out / "summary.json").write_text(json.dumps(summary_json, indent=2))
    print()
    print(table)
    print()
    print(verdict)
    print(f"\nwrote {out / 'summary.md'} and {out / 'curves.png'} ({total:.0f} s)")
    return summary_json
