"""Every bundled recipe through `dimcl pretrain`, at tiny widths, one epoch on tiny files of its dataset's
format (written by the tests' writers): each recipe's views, backbone, precision and method options train.

    python benchmarks/recipes/run_every_recipe.py [--only dino swav ...] [--out DIR]

Prints a line per recipe (exit code, seconds, the epoch's loss terms) and exits 1 if any failed. Minutes
on a 2-core CPU (ResNet-18 and ViT-S at 224 px for imagenet100); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "data")]

from conftest import write_fashion_mnist  # noqa: E402
from test_datasets import write_cifar10, write_cifar100, write_png, write_stl10  # noqa: E402

from dimcl.methods import method_options  # noqa: E402
from dimcl.recipes import list_recipes, load_config, resolve_recipe  # noqa: E402

#: the tiny widths, for every method that takes the option
TINY_OPTIONS = {"proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 16, "num_prototypes": 32,
                "queue_size": 8, "whitening_size": 4}


def write_image_folder(root: Path) -> None:
    for split, count in (("train", 4), ("val", 2)):
        for c, color in enumerate(((200, 30, 30), (30, 200, 30))):
            for i in range(count):
                write_png(root / split / f"class{c}" / f"{i}.png", tuple(v + 5 * i for v in color), size=(40, 32))


def write_data(dataset: str, root: Path) -> Path:
    folder = root / dataset
    if not folder.exists():
        {"fashion_mnist": lambda r: write_fashion_mnist(r, n_train=16, n_test=8), "cifar10": write_cifar10,
         "cifar100": write_cifar100, "stl10": write_stl10, "imagefolder": write_image_folder}[dataset](folder)
    return folder


def overrides(recipe: str, data: Path) -> list[str]:
    cfg = load_config(resolve_recipe(recipe))
    accepted = method_options(cfg.method.name)
    tiny = {k: v for k, v in TINY_OPTIONS.items() if k in accepted}
    if "whitening_size" in accepted:
        tiny["proj_output_dim"] = 2  # a whitening sub-batch of 4 must exceed the dimensions
    return [f"method.{k}={v}" for k, v in tiny.items()] + [
        f"data.root={data}", "data.batch_size=4", "data.num_workers=0", "data.subset=null", "data.eval_subset=null",
        "trainer.max_epochs=1", "eval.every=0", "eval.diagnose=false", "trainer.progress_bar=false",
        "trainer.tensorboard=false", "optim.warmup_epochs=0",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="methods to run (default: every recipe)")
    parser.add_argument("--out", help="folder for the data and runs (default: a temporary one)")
    args = parser.parse_args()
    recipes = [r for r in list_recipes() if not args.only or load_config(resolve_recipe(r)).method.name in args.only]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for recipe in recipes:
            dataset = load_config(resolve_recipe(recipe)).data.name
            run = out / "runs" / recipe.replace("/", "_")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "dimcl.cli", "pretrain", "-c", recipe, "-o", str(run),
                                   *overrides(recipe, write_data(dataset, out / "data"))],
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - started
            terms = {}
            if done.returncode == 0:
                record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
                terms = {k: round(v, 4) for k, v in record.items() if k.startswith("loss")}
            ok = done.returncode == 0 and terms and all(math.isfinite(v) for v in terms.values())
            failed += not ok
            verdict = "ok  " if ok else "FAIL"
            print(f"{verdict} {recipe:32s} exit {done.returncode} {seconds:6.1f} s {terms}", flush=True)
            if not ok:
                print(done.stderr[-3000:], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
