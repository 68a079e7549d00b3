"""Cluster sweeps: one submitit job per cell (``dimcl sweep --launcher local|slurm``).

The grid is planned and every cell's config checked first, here, as ``dimcl sweep`` does; then each
unfinished cell becomes one job that runs ``run_sweep(grid, out, only=<cell>)`` (pretraining, then the
grid's evaluations) in its own process: a SLURM job (the cells of one call form a job array), or a local
subprocess (submitit's local executor, ``parallel`` at a time). Finished cells are skipped and unfinished
ones resume from their checkpoints, so calling the same command again continues a sweep, as without a
launcher. On SLURM a job told of its preemption or time limit (``--signal`` USR2, which submitit asks for)
is requeued and resumes from the cell's last checkpoint (``trainer.checkpoint_every_n_steps`` bounds what
is lost). Submitit's own files (pickled jobs, stdout and stderr of each) go to ``<out>/submitit``;
``<out>/sweep.json`` lists the cells with their job ids and, once they end, their figures.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dimcl.config import ConfigError
from dimcl.sweep import run_sweep, summary_of_run, write_sweep_file

__all__ = ["CellJob", "LaunchOptions", "launch_sweep"]

LAUNCHERS = ("local", "slurm")
SUBMITIT_FOLDER = "submitit"


@dataclass(frozen=True)
class CellJob:
    """One cell of a sweep as a submitit job (picklable: it holds paths and a name only)."""

    grid_file: str
    out_dir: str
    name: str

    def __call__(self) -> dict[str, Any]:
        (result,) = run_sweep(self.grid_file, self.out_dir, only=self.name)
        return result

    def checkpoint(self) -> Any:
        """Called by submitit on preemption or at the time limit: requeue the same cell. The run's own
        checkpoints carry the state, so the requeued job resumes where the last one was saved."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


@dataclass(frozen=True)
class LaunchOptions:
    launcher: str
    #: local: jobs at once; slurm: the job array's parallelism (0: no limit)
    parallel: int = 1
    #: slurm: wait for the jobs to end (local always waits)
    wait: bool = False
    #: per job, in minutes
    time_min: int = 24 * 60
    partition: str | None = None
    gpus: int = 1
    cpus: int = 8
    mem_gb: int | None = None

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got '{self.launcher}'")
        if self.parallel < 0 or self.time_min < 1 or self.gpus < 0 or self.cpus < 1:
            raise ConfigError("--parallel must be >= 0, --time >= 1 minute, --gpus >= 0 and --cpus >= 1")


def _executor(out_dir: Path, options: LaunchOptions) -> Any:
    if importlib.util.find_spec("submitit") is None:
        raise ConfigError("dimcl sweep --launcher needs submitit: pip install 'dimcl[submitit]'")
    import submitit

    executor = submitit.AutoExecutor(folder=out_dir / SUBMITIT_FOLDER / "%j", cluster=options.launcher)
    executor.update_parameters(name="dimcl-sweep", timeout_min=options.time_min, gpus_per_node=options.gpus,
                               cpus_per_task=options.cpus, tasks_per_node=1, nodes=1)
    if options.launcher == "slurm":
        slurm: dict[str, Any] = {"slurm_signal_delay_s": 120}
        if options.partition:
            slurm["slurm_partition"] = options.partition
        if options.mem_gb:
            slurm["mem_gb"] = options.mem_gb
        if options.parallel:
            slurm["slurm_array_parallelism"] = options.parallel
        executor.update_parameters(**slurm)
    return executor


def _outcome(job: Any, result: dict[str, Any]) -> None:
    """Fold an ended job into its cell's entry: the cell's status and figures, or the job's error."""
    error = job.exception()
    if error is not None:
        result.update(status="failed", error=f"{type(error).__name__}: {error}"[-2000:])
        return
    outcome = job.result()
    result.update(status=outcome["status"], **{k: v for k, v in outcome.items() if k == "error"})
    result.update(summary_of_run(Path(result["run_dir"])))


def launch_sweep(
    grid_file: str | Path,
    out_dir: str | Path,
    options: LaunchOptions,
    log: Callable[[str], None] | None = print,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Submit one job per unfinished cell of ``grid_file``; returns the cells as :func:`run_sweep` does,
    each submitted one with its ``job_id`` (and, when the jobs were waited for, how they ended)."""
    grid_file, out_dir = Path(grid_file).resolve(), Path(out_dir).resolve()
    say = log or (lambda _: None)
    results = run_sweep(grid_file, out_dir, dry_run=True, log=None, shard=shard)  # checks every cell first
    todo = [r for r in results if r["status"] != "skipped"]
    for result in results:
        if result["status"] == "skipped":
            result.update(summary_of_run(Path(result["run_dir"])))
    executor = _executor(out_dir, options)

    def submitted(job: Any, result: dict[str, Any]) -> None:
        result.update(status="submitted", job_id=str(job.job_id), launcher=options.launcher)
        say(f"{result['name']}: submitted as job {job.job_id}")

    if options.launcher == "slurm":
        with executor.batch():  # one job array; the ids exist once the batch is submitted
            jobs = [(executor.submit(CellJob(str(grid_file), str(out_dir), r["name"])), r) for r in todo]
        for job, result in jobs:
            submitted(job, result)
        write_sweep_file(out_dir, grid_file, results, shard)
        for job, result in jobs if options.wait else []:
            job.wait()
            _outcome(job, result)
            write_sweep_file(out_dir, grid_file, results, shard)
        return results

    running: list[tuple[Any, dict[str, Any]]] = []
    queue = list(todo)
    limit = options.parallel or len(queue) or 1
    while queue or running:
        while queue and len(running) < limit:
            result = queue.pop(0)
            job = executor.submit(CellJob(str(grid_file), str(out_dir), result["name"]))
            submitted(job, result)
            running.append((job, result))
            write_sweep_file(out_dir, grid_file, results, shard)
        ended = [(job, result) for job, result in running if job.done()]
        for job, result in ended:
            running.remove((job, result))
            _outcome(job, result)
            say(f"{result['name']}: {result['status']}" + (f" ({result['error']})" if "error" in result else ""))
            write_sweep_file(out_dir, grid_file, results, shard)
        if not ended:
            time.sleep(1.0)
    return results
