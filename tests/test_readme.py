"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_results_table_is_the_committed_report():
    """Every figure of the README's CPU results table is in benchmarks/quality/report.md, in the same row."""
    report = (README.parent / "benchmarks" / "quality" / "report.md").read_text()
    names = {"SimCLR": "simclr", "MoCo v2+": "mocov2plus", "BYOL": "byol", "SimSiam": "simsiam",
             "Barlow Twins": "barlow_twins", "VICReg": "vicreg"}
    section = README.read_text().split("## Results on the CPU")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in names]
    assert len(rows) == 6
    for row in rows:
        name, knn, knn_delta, linear, linear_delta = (cell.strip() for cell in row.strip("|").split("|"))
        summary = next(line for line in report.splitlines()
                       if line.startswith(f"| {names[name]} | λ=0.1, τ=0.1, InfoNCE |"))
        assert f"{knn}, {knn_delta}" in summary and f"{linear}, {linear_delta}" in summary, name
