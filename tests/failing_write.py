"""`dimcl` with a file system that fills up at one write site: ``python failing_write.py SITE N dimcl-args...``.

The first N writes of the site succeed; the next one writes part of its data and then fails with ENOSPC,
as a full disk does. Sites: ``checkpoint`` (``torch.save``'s file), ``csv`` (the CSV log's save, which
empties ``metrics.csv`` first, as its header rewrite does), ``metrics`` (``metrics.jsonl``), ``config``
(``config.yaml``), ``export`` (``backbone.safetensors``); the last three are matched by the file name that
``os.write`` writes to, so the injection sits below dimcl's own code.
"""

from __future__ import annotations

import errno
import os
import sys

import torch

from dimcl.cli import main

site, allowed, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
calls = {"n": 0, "failing": False}
NAMES = {"metrics": "metrics.jsonl", "config": "config.yaml", "export": "backbone.safetensors"}


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillingFile:
    """A file whose writes fail with ENOSPC once ``budget`` bytes are written."""

    def __init__(self, file, budget: int) -> None:
        self.file, self.budget = file, budget

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.budget:
            self.file.write(data[: self.budget])
            self.budget = 0
            raise disk_full()
        self.budget -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


if site == "checkpoint":
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > allowed:
            f = FillingFile(f, 600)  # past the first zip entry: a torn file if it were kept
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
elif site == "csv":
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter

    real_csv_save = _ExperimentWriter.save

    def csv_save(self):
        calls["n"] += 1
        if calls["n"] > allowed:
            open(self.metrics_file_path, "w").close()  # the header rewrite's truncation, then the disk is full
            raise disk_full()
        return real_csv_save(self)

    _ExperimentWriter.save = csv_save
else:
    real_write = os.write

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if NAMES[site] not in os.path.basename(target):
            return real_write(fd, data)
        if calls["failing"]:
            raise disk_full()
        calls["n"] += 1
        if calls["n"] > allowed:
            calls["failing"] = True
            return real_write(fd, bytes(data)[: max(1, len(data) // 2)])  # a short write, then ENOSPC
        return real_write(fd, data)

    os.write = write

sys.exit(main(argv))
