"""The loss terms and probe counts of the training steps, held on the device between reads.

Turning a device number into a Python number makes the host wait for the device (a CUDA sync). The
loop therefore reads the steps' scalars only every ``trainer.log_every_n_steps`` optimizer steps, before
any checkpoint and at the end of each epoch: one device-to-host copy for all the steps since the last
read. The values come back per step, in step order, so the epoch's sums are added exactly as when every
step was read (the same float64 additions in the same order), and a non-finite loss is still reported
at the step where it first appeared. What is read is added to the epoch's :class:`EpochProgress`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StepWhere:
    """Where a step's scalars come from: 0-based epoch and batch in the epoch, global optimizer step."""

    epoch: int
    batch: int
    step: int


@dataclass
class StepScalars:
    """The scalar outputs (``loss*``, ``probe_*``) of the steps not read yet."""

    _names: list[str] | None = None
    _values: list[torch.Tensor] = field(default_factory=list)
    _where: list[StepWhere] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._values)

    def append(self, out: dict[str, torch.Tensor], where: StepWhere) -> None:
        """Keep one step's scalars (no device sync): stacked on their device, in a fixed key order."""
        names = [k for k in out if k.startswith(("loss", "probe_"))]
        if self._values and names != self._names:
            raise ValueError(f"the step's scalars changed from {self._names} to {names} between two reads")
        self._names = names
        self._values.append(torch.stack([out[k].detach().float() for k in names]))
        self._where.append(where)

    def read(self) -> list[tuple[StepWhere, dict[str, float]]]:
        """Every pending step's scalars as Python numbers (one copy from the device), oldest first; the
        pending list is then empty. float32 losses and integer counts below 2**24 convert exactly."""
        if not self._values:
            return []
        rows = torch.stack(self._values).tolist()
        read = [(where, dict(zip(self._names or [], row, strict=True)))
                for where, row in zip(self._where, rows, strict=True)]
        self._values, self._where = [], []
        return read


@dataclass
class EpochProgress:
    """Running sums of the epoch so far (saved in mid-epoch checkpoints, so a resume reports the same)."""

    sums: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    probe_correct: int = 0
    probe_count: int = 0
    elapsed: float = 0.0
    #: seconds the loop waited for the loader (the rest of ``elapsed`` is compute and bookkeeping)
    data_wait: float = 0.0

    def add(self, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            if k.startswith("loss"):
                self.sums[k] = self.sums.get(k, 0.0) + v
        if "probe_count" in scalars:
            self.probe_correct += round(scalars["probe_correct"])
            self.probe_count += round(scalars["probe_count"])
        self.batches += 1
