"""Errors that end a training run (kept free of heavy imports, so the CLI can catch them cheaply)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT stopped the run after saving a checkpoint to resume from."""
