"""The ``dimcl`` command: pretrain, knn, linear, baselines, analyze, sweep, report, export, list, demo.

Bad input (a mistyped key, a wrong type, a missing folder, an unsafe checkpoint) is reported as one
paragraph on stderr with exit code 2 and no traceback; nothing already in the output folder is touched.
Whether input is bad is decided where it is detected (a :class:`dimcl.errors.BadInputError`); any other
exception is a bug in dimcl: exit 1, the traceback, and a line saying so with the version.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dimcl.errors import BadInputError, ConfigError, message_of
from dimcl.files import WriteFailedError, check_output_folder
from dimcl.train.errors import NonFiniteLossError, TrainingInterrupted
from dimcl.version import __version__

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 1
EXIT_BUG = 1


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from dimcl.recipes import load_config, resolve_recipe
    from dimcl.train.loop import pretrain

    resume, overrides = args.resume, list(args.overrides)
    if resume not in (True, False, "auto"):
        if "=" not in resume:
            raise ConfigError(
                f"--resume takes no value (continue the run) or 'auto' (continue it if it has a checkpoint, else "
                f"start it), got '{resume}'"
            )
        # `--resume key=value ...`: argparse took the first override for the option's value.
        resume, overrides = True, [resume, *overrides]
    path = resolve_recipe(args.config) if args.config else None
    cfg = load_config(path, overrides)
    if args.overwrite and resume is not False:
        raise ConfigError("--overwrite starts a new run over a previous one; it cannot go with --resume")
    pretrain(cfg, args.out, resume=resume, overwrite=args.overwrite)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dimcl.eval import evaluate

    common = {"command", "func", "ckpt", "device", "out", "overrides"}
    options = {k: v for k, v in vars(args).items() if k not in common}
    result = evaluate(args.command, args.ckpt, device=args.device, out_dir=args.out, overrides=args.overrides,
                      **options)
    print(json.dumps(result, indent=2))
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of seeds, e.g. 0,1,2") from None


def _label_budgets(text: str) -> list[str]:
    """``--labels`` of ``dimcl baselines``: comma-separated budgets such as ``1%,10%``, each checked."""
    from dimcl.data.label_budget import parse_label_budget

    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        for part in parts:
            parse_label_budget(part)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return parts


def _device(text: str) -> str:
    """``--device``: a torch device this machine has (cpu, cuda, cuda:1, mps)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"'{text}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"'{text}': MPS is not available on this machine")
    return text


def _cmd_baselines(args: argparse.Namespace) -> int:
    from dimcl.baselines import baselines, ceiling_of, has_baselines, write_baselines
    from dimcl.recipes import load_config, resolve_recipe
    from dimcl.run_dir import BASELINES

    path = resolve_recipe(args.config) if args.config else None
    cfg = load_config(path, args.overrides)
    check_output_folder(args.out)
    if args.ceiling_from and args.no_supervised:
        raise ConfigError("--ceiling-from lends the supervised ceiling that --no-supervised leaves out: "
                          "give one of them")
    seeds = args.seeds or [cfg.seed]
    ceilings = {}
    for seed in seeds:  # every lent ceiling checked before the first seed is computed
        cfg.seed = seed
        ceilings[seed] = ceiling_of(args.ceiling_from, cfg) if args.ceiling_from else None
    for seed in seeds:
        cfg.seed = seed
        if args.skip_existing and has_baselines(args.out, cfg, supervised=not args.no_supervised, labels=args.labels):
            print(f"seed {seed}: already in {Path(args.out) / BASELINES} for this protocol, skipped")
            continue
        record = baselines(cfg, device=args.device, supervised=not args.no_supervised, labels=args.labels,
                           labels_steps=args.labels_steps, ceiling=ceilings[seed])
        written = write_baselines(args.out, record)
        print(json.dumps({k: v for k, v in record.items() if k != "protocol"}, indent=2))
        print(f"wrote {written}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from dimcl.sweep import parse_shard, run_sweep

    if (args.grid is None) == (args.grid_option is None):
        raise ConfigError("dimcl sweep: give the grid file once, as GRID or --grid GRID")
    grid, shard = args.grid or args.grid_option, parse_shard(args.shard)
    if args.launcher is None or args.dry_run:
        run_sweep(grid, args.out, dry_run=args.dry_run, shard=shard)
        return 0
    from dimcl.sweep_launch import LaunchOptions, launch_sweep

    options = LaunchOptions(args.launcher, parallel=args.parallel, wait=args.wait, time_min=args.time,
                            partition=args.partition, gpus=args.gpus, cpus=args.cpus, mem_gb=args.mem)
    results = launch_sweep(grid, args.out, options, shard=shard)
    return 1 if any(r["status"] == "failed" for r in results) else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dimcl.report import build_report

    print(build_report(args.dir, args.out, include_unfinished=args.include_unfinished, beside=args.beside))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from dimcl.data import DATASETS
    from dimcl.methods import METHODS
    from dimcl.models import BACKBONES
    from dimcl.recipes import list_recipes, recipes_dir

    print("methods:   " + ", ".join(METHODS))
    print("backbones: " + ", ".join(BACKBONES) + ", timm/<model> (any timm model; pip install 'dimcl[timm]')")
    print("datasets:  " + ", ".join(DATASETS))
    recipes = list_recipes()
    print(f"recipes ({recipes_dir()}):")
    for name in recipes:
        print(f"  {name}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dimcl.export import export

    check_output_folder(Path(args.out).parent, "--out", f"'{Path(args.out).name}'")
    meta = export(args.ckpt, args.format, args.out)
    print(json.dumps(meta, indent=2))
    print(f"wrote {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dimcl.demo import run_demo

    run_demo(args.out, args.overrides, parallel=not args.sequential)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dimcl",
        description="Dimensional Contrastive Learning (DimCL) for self-supervised pretraining.",
    )
    parser.add_argument("--version", action="version", version=f"dimcl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pretrain_and_evaluations(sub)
    _add_sweeps_and_outputs(sub)
    return parser


def _add_pretrain_and_evaluations(sub: Any) -> None:
    """``pretrain``, then the evaluations of a run (one command each of ``dimcl.eval.EVALUATIONS``), ``baselines``."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone with an SSL method (+DimCL)",
        description="Pretrain from a recipe. Overrides are dotted keys: trainer.max_epochs=5 dimcl.weight=0 "
        "method.name=simclr data.root=/data/cifar. dimcl.weight=0 is the plain method (the baseline).",
    )
    p.add_argument("--config", "-c", help="a YAML recipe file, or a bundled recipe name such as cifar10/byol")
    p.add_argument("--out", "-o", required=True, help="the run directory to write")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="auto",
                   help="continue the run in --out from its last checkpoint; '--resume auto' continues it if it has "
                   "one and starts it otherwise (for jobs that a cluster may requeue)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run over a previous run in --out, replacing its files (checkpoint, metrics, "
                   "evaluation results); a folder holding other files is still refused")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=_cmd_pretrain)

    from dimcl.eval.registry import EVALUATIONS

    for evaluation in (e for e in EVALUATIONS.values() if e.command):
        p = sub.add_parser(evaluation.name, help=evaluation.help, description=evaluation.description,
                           usage=f"dimcl {evaluation.name} --ckpt RUN [options] [KEY=VALUE ...]")
        p.add_argument("--ckpt", required=True, help="a run directory, or a checkpoint / backbone file inside one")
        evaluation.add_arguments(p)
        p.add_argument("--device", default="cpu", type=_device, help="torch device (default: cpu)")
        p.add_argument("--out", help=f"folder for {evaluation.file} (default: the run directory)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="data.* / eval.* overrides: score other images (data.name=cifar10 data.root=DIR, "
                       "eval.classes=[5,6,7,8,9]); needs --out")
        p.set_defaults(func=_cmd_evaluate)

    from dimcl.baselines import FEW_LABELS

    FEW_LABELS_STEPS = FEW_LABELS["steps"]
    p = sub.add_parser("baselines", help="raw-pixel and random-init floors and a supervised ceiling",
                       description="For the evaluation protocol of a config (a recipe and overrides, or a run's "
                       "config.yaml): kNN and linear probe of the raw pixels, of the backbone with random weights, "
                       "and of the same backbone trained with labels for the same epochs on the same images. "
                       "Adds them to OUT/baselines.json, which dimcl report reads.")
    p.add_argument("--config", "-c", required=True,
                   help="a YAML recipe or config.yaml file, or a bundled recipe name such as fashion_mnist/byol")
    p.add_argument("--out", "-o", required=True, help="the run or sweep folder to write baselines.json into")
    p.add_argument("--seeds", type=_seed_list, metavar="S,S,...",
                   help="comma-separated seeds to compute, e.g. 0,1,2 (default: the config's seed)")
    p.add_argument("--no-supervised", action="store_true", help="only the floors (skip the supervised training)")
    p.add_argument("--labels", type=_label_budgets, default=[], metavar="P%|N,...",
                   help="few-label budgets, e.g. 1%%,10%%: the floors' linear probe on each class-balanced subset "
                   "(the images of dimcl linear --labels), and the backbone trained on each subset alone")
    p.add_argument("--labels-steps", type=int, default=FEW_LABELS_STEPS, dest="labels_steps",
                   help="optimizer steps of each few-label supervised reference, whatever its subset's size "
                   f"(default {FEW_LABELS_STEPS})")
    p.add_argument("--ceiling-from", metavar="DIR", dest="ceiling_from",
                   help="take each seed's supervised ceiling from DIR/baselines.json (its record of the same seed and "
                   "protocol) instead of training it again; the row keeps the path it came from")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip the seeds whose record of this protocol OUT/baselines.json already holds (with the "
                   "supervised ceiling unless --no-supervised), so an interrupted or partial call can be finished")
    p.add_argument("--device", default="cpu", type=_device, help="torch device (default: cpu)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=_cmd_baselines)


def _add_sweeps_and_outputs(sub: Any) -> None:
    """``sweep``, ``report``, ``export``, ``list`` and ``demo``."""
    p = sub.add_parser("sweep", help="run a grid of configurations, resumably",
                       description="Runs every cell of a grid file one after another, each a normal run "
                       "directory; finished cells are skipped and interrupted ones resumed. A cell whose records "
                       "are complete (metrics up to max_epochs, the grid's evaluations) counts as finished "
                       "without its weights, as in a fresh clone of a committed study.")
    p.add_argument("grid", nargs="?", help="the grid YAML file (or --grid)")
    p.add_argument("--grid", dest="grid_option", metavar="GRID", help="the grid YAML file")
    p.add_argument("--out", "-o", required=True, help="the sweep folder")
    p.add_argument("--dry-run", action="store_true", help="list the cells and what would run")
    p.add_argument("--shard", metavar="K/N", help="run only every N-th cell, starting with the K-th (1 <= K <= N): "
                   "N sweeps with K = 1..N share a grid without running a cell twice")
    p.add_argument("--launcher", choices=["local", "slurm"],
                   help="one submitit job per unfinished cell: local subprocesses or a SLURM job array (needs "
                   "dimcl[submitit]); without it the cells run here, one after another")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="local: jobs at once; slurm: the array's parallelism (0: no limit) (default 1)")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and record how they ended")
    p.add_argument("--time", type=int, default=24 * 60, metavar="MIN", help="time limit per job, in minutes")
    p.add_argument("--partition", help="slurm: the partition")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per job (default 1)")
    p.add_argument("--cpus", type=int, default=8, help="CPUs per job (default 8)")
    p.add_argument("--mem", type=int, metavar="GB", help="slurm: memory per job in GB")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="Markdown report with seeds, paired differences and plots",
                       description="Reads run directories under DIR (made anywhere) and writes a Markdown report: "
                       "mean ± std over seeds, +DimCL − base with paired 95% intervals, and plots.")
    p.add_argument("dir", help="folder holding run directories")
    p.add_argument("--out", help="report path (default: DIR/report.md)")
    p.add_argument("--include-unfinished", action="store_true",
                   help="also report runs that stopped before their trainer.max_epochs (left out by default)")
    p.add_argument("--beside", action="append", default=[], metavar="DIR2",
                   help="also show the runs under DIR2 of the arms DIR has (the same method with DimCL off, or on "
                   "with the same dimcl.* setting), as groups of their own in the same tables and plots (e.g. "
                   "the shorter runs a longer budget is compared with); repeatable")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("export", help="write a run's backbone for torchvision, timm or as safetensors",
                       description="Writes the trained backbone of a run: 'safetensors' is dimcl's own file with "
                       "the metadata that rebuilds it (read it with dimcl.load_backbone); 'torchvision' and "
                       "'timm' are plain state dicts for the torchvision model (resnet18/50, vit_tiny/small) or "
                       "the timm model the backbone is (.safetensors if FILE ends so, else torch.save). Prints "
                       "the metadata: architecture, stem, input size and normalisation.")
    p.add_argument("--ckpt", required=True, help="a run directory, a checkpoint inside one, or a backbone .safetensors")
    p.add_argument("--format", required=True, choices=["torchvision", "timm", "safetensors"])
    p.add_argument("--out", "-o", required=True, help="the file to write")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("list", help="list methods, backbones, datasets and recipes")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "demo",
        help="BYOL vs BYOL+DimCL on Fashion-MNIST on the CPU, next to a random-init floor",
        description="Pretrains BYOL and BYOL+DimCL with the same seed and budget, evaluates both with kNN next "
        "to a randomly initialised backbone, prints the table and writes a summary and a plot.",
    )
    p.add_argument("--out", "-o", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--sequential", action="store_true",
                   help="train the two arms one after the other (default: side by side, one thread each)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both runs")
    p.set_defaults(func=_cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # without building the parser, whose evaluation commands import torch
        print(f"dimcl {__version__}")
        return 0
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BadInputError as err:
        print(f"dimcl {args.command}: error: {message_of(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (NonFiniteLossError, WriteFailedError) as err:
        print(f"dimcl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except TrainingInterrupted as err:
        print(f"dimcl {args.command}: {err}", file=sys.stderr)
        return 128 + (signal.SIGINT if "SIGINT" in str(err) else signal.SIGTERM)
    except KeyboardInterrupt:
        print(f"dimcl {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception:  # whatever was not classified as bad input where it was detected is dimcl's fault
        traceback.print_exc()
        print(f"dimcl {args.command}: internal error: this is a bug in dimcl {__version__}, not a problem with "
              "your input; please report it with the traceback above.", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
