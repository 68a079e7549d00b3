"""What a run ran on: the dimcl version and git commit, the library versions and the machine.

Appended to the run directory (``provenance.jsonl``, see :mod:`dimcl.run_dir`) every time a run starts
or resumes, so a figure committed from a run says which code made it.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from dimcl.version import __version__


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_commit() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git checkout the ``dimcl`` package runs from.

    ``dirty`` says whether ``src/`` had uncommitted changes; both are None for an installed wheel.
    """
    package_dir = Path(__file__).resolve().parent
    top = _git(["rev-parse", "--show-toplevel"], package_dir)
    if top is None or not (Path(top) / "src" / "dimcl").resolve() == package_dir:
        return {"commit": None, "dirty": None}
    commit = _git(["rev-parse", "HEAD"], package_dir)
    status = _git(["status", "--porcelain", "--", "src"], Path(top))
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """One record of what this process runs on (see the module docstring)."""
    device = torch.device(device)
    record: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dimcl": __version__,
        **{f"git_{k}": v for k, v in source_commit().items()},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record
