"""The GPU smoke script (benchmarks/gpu/smoke.py) runs rarely, on a lent GPU: its code is kept working by
running some of its checks on the CPU here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_smoke_checks_run_on_the_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu" / "smoke.py"), "--device", "cpu", "--out", str(out),
         "--only", "blockwise_dimcl", "knn_on_device", "device_views"],
        capture_output=True, text=True, timeout=600,
    )
    rows = json.loads(out.read_text())
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows["device"] == "cpu"
    for name in ("blockwise_dimcl", "knn_on_device", "device_views"):
        assert rows[name]["ok"], rows[name]
    assert rows["blockwise_dimcl"]["loss_rel_diff"] < 1e-4
    assert rows["knn_on_device"]["top1_device"] == rows["knn_on_device"]["top1_cpu"]
