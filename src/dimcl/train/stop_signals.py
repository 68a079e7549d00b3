"""SIGTERM and SIGINT (a cluster's preemption, Ctrl-C) as a request to save and stop, agreed by every rank."""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
from lightning.fabric import Fabric


class StopSignals:
    """Turns SIGTERM / SIGINT into a request to save and stop at the next optimizer step.

    A second signal of the same kind while saving is honoured as usual (the default handler).
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, fabric: Fabric, step: int | None = None, every: int = 1) -> bool:
        """Whether any rank was asked to stop (ranks must stop at the same step).

        With several processes the ranks agree through an all-reduce, which waits for the device: at
        optimizer steps it is done only every ``every`` steps (``step`` None: now). One process asks
        every step, which costs nothing.
        """
        flag = self.signal_name is not None
        if fabric.world_size > 1 and step is not None and step % every != 0:
            return False
        if fabric.world_size > 1:
            flag = bool(fabric.all_reduce(torch.tensor(float(flag)), reduce_op="sum") > 0)
            if flag and self.signal_name is None:
                self.signal_name = "a signal on another rank"
        return flag

