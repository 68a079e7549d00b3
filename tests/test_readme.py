"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


NAMES = {"SimCLR": "simclr", "MoCo v2+": "mocov2plus", "BYOL": "byol", "SimSiam": "simsiam",
         "Barlow Twins": "barlow_twins", "VICReg": "vicreg"}


def _results_subsection(title: str) -> str:
    section = README.read_text().split("## Results on the CPU")[1].split("\n## ")[0]
    return section.split(f"### {title}")[1].split("\n### ")[0]


def _method_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in NAMES]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def _summary_line(report: str, name: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(f"| {NAMES[name]} | λ=0.1, τ=0.1, InfoNCE |"))


def test_readme_short_budget_table_is_the_committed_report():
    """Every figure of the README's short-budget table is in benchmarks/quality/report.md, in the same row."""
    report = (README.parent / "benchmarks" / "quality" / "report.md").read_text()
    rows = _method_rows(_results_subsection("The short-budget table"))
    assert len(rows) == 6
    for name, knn, knn_delta, linear, linear_delta in rows:
        summary = _summary_line(report, name)
        assert f"{knn}, {knn_delta}" in summary and f"{linear}, {linear_delta}" in summary, name


def test_readme_main_study_tables_are_the_committed_report():
    """The README's main-study rows are the summary rows of benchmarks/quality/full/report.md (every method
    the report has, with the same seeds and cells), its floor rows the report's, and its run count the report's."""
    report = (README.parent / "benchmarks" / "quality" / "full" / "report.md").read_text()
    text = _results_subsection("The main study")
    rows = _method_rows(text)
    summary_rows = [line for line in report.split("## Summary")[1].split("\n## ")[0].splitlines()
                    if "| λ=0.1, τ=0.1, InfoNCE |" in line]
    assert rows and len(rows) == len(summary_rows)
    for name, seeds, *cells in rows:
        summary = [cell.strip() for cell in _summary_line(report, name).strip().strip("|").split("|")]
        assert summary[2:] == [seeds, *cells], name
    floors = [line for line in text.splitlines() if "(floor)" in line or "(ceiling)" in line]
    assert floors and all(line in report.splitlines() for line in floors)
    # The main grid's runs: both arms of every pair (the report's run count also holds BYOL's ablation cells).
    runs = sum(2 * len(row[1].split(", ")) for row in rows)
    assert runs <= int(report.split(" run(s) under")[0].rsplit("\n", 1)[-1])
    heading = text.split("\n", 1)[0]  # "(in progress: k of 36 runs)" until the grid is complete
    assert (f"{runs} of 36 runs" if runs < 36 else "36 runs") in heading
