"""Weights & Biases as an optional logger beside CSV and TensorBoard (``trainer.wandb=true``).

One W&B run per dimcl run: its id is made when the run starts, kept in every checkpoint
(``wandb_run_id``), and a resume opens the same W&B run again (``resume="allow"``), so the charts of a run
resumed after a preemption read as one. Each epoch's record is logged at ``step = epoch``, the step the
CSV and TensorBoard logs use. W&B writes under ``<run>/wandb``; ``WANDB_MODE=offline`` keeps everything
on disk (``wandb sync`` uploads it later). Only rank 0 logs.
"""

from __future__ import annotations

import importlib.util
import secrets
import string
from argparse import Namespace
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import Logger, rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only

from dimcl.config import ConfigError

#: W&B run ids: 8 characters of [a-z0-9], as ``wandb.util.generate_id`` makes them
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class RunWandbLogger(Logger):
    """A Fabric logger that writes one W&B run per dimcl run, continued on resume."""

    def __init__(self, out_dir: Path, project: str, entity: str | None, name: str | None,
                 config: dict[str, Any]) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("trainer.wandb=true needs the wandb package: pip install 'dimcl[wandb]'")
        super().__init__()
        self._out_dir = Path(out_dir)
        self._project, self._entity = project, entity
        self._name = name or self._out_dir.resolve().name
        self._config = config
        self.run_id = new_run_id()
        self._run: Any = None

    @property
    def name(self) -> str:
        return "wandb"

    @property
    def version(self) -> str:
        return self.run_id

    def continue_from(self, epochs_done: int, run_id: str | None = None) -> None:
        """Log into the W&B run of the checkpoint (a run checkpointed without W&B gets a new one)."""
        if run_id is not None:
            self.run_id = run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._run is None:
            import wandb

            self._out_dir.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=self._project, entity=self._entity, name=self._name, id=self.run_id, resume="allow",
                dir=str(self._out_dir), config=self._config,
            )
        return self._run

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.experiment.log(dict(metrics), step=step)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self.experiment.config.update(vars(params) if isinstance(params, Namespace) else params,
                                      allow_val_change=True)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._run is not None:
            self._run.finish(exit_code=0 if status == "success" else 1)
            self._run = None


def wandb_run_id(loggers: list[Any]) -> str | None:
    """The W&B run id of a run's loggers (None without W&B), for its checkpoint."""
    return next((logger.run_id for logger in loggers if isinstance(logger, RunWandbLogger)), None)
