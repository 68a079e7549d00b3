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
#: round two's part 1: the five frameworks added since, their report in benchmarks/quality/frameworks/
FRAMEWORKS = {"DINO": "dino", "SwAV": "swav", "MoCo v3": "mocov3", "NNCLR": "nnclr", "W-MSE": "wmse"}
#: round two's part 2: pretrained on classes 0-4, scored on 5-9; their report in benchmarks/quality/unseen/
UNSEEN = {"BYOL": "byol", "SimSiam": "simsiam", "DINO": "dino"}
#: round two's part 3: 24 epochs beside the main study's 8; their report in benchmarks/quality/budget/
BUDGET = {"SimSiam": "simsiam", "BYOL": "byol"}
QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality"


def _results_subsection(title: str) -> str:
    section = README.read_text().split("## Results on the CPU")[1].split("\n## ")[0]
    return section.split(f"### {title}")[1].split("\n### ")[0]


def _method_rows(text: str, names: dict[str, str] = NAMES) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in names]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def _reference_rows(text: str) -> list[str]:
    """The floor and ceiling rows of a README table or a report."""
    return [line for line in text.splitlines() if "(floor)" in line or "(ceiling)" in line]


def _summary_line(report: str, name: str, setting: str = "") -> str:
    """``name``'s summary row of +DimCL (λ 0.1, τ 0.1) against its baseline; ``setting`` is what else tells the
    row apart, e.g. ``"; trainer.max_epochs=24"`` in a report that holds two budgets."""
    key = {**NAMES, **FRAMEWORKS}[name]
    start = f"| {key} | λ=0.1, τ=0.1, InfoNCE{setting} |"
    return next(line for line in report.splitlines() if line.startswith(start))


def _summary_cells(report: str, name: str, setting: str = "") -> list[str]:
    """The cells of ``name``'s summary row after its method and DimCL setting: seeds, then the columns."""
    return [cell.strip() for cell in _summary_line(report, name, setting).strip().strip("|").split("|")][2:]


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
    report = (QUALITY / "full" / "report.md").read_text()
    text = _results_subsection("The main study")
    rows = _method_rows(text)
    summary_rows = [line for line in report.split("## Summary")[1].split("\n## ")[0].splitlines()
                    if "| λ=0.1, τ=0.1, InfoNCE |" in line]
    assert rows and len(rows) == len(summary_rows)
    for name, seeds, *cells in rows:
        assert _summary_cells(report, name) == [seeds, *cells], name
    floors = _reference_rows(text)
    assert floors and all(line in report.splitlines() for line in floors)
    # The main grid's runs: both arms of every pair (the report's run count also holds BYOL's ablation cells).
    runs = sum(2 * len(row[1].split(", ")) for row in rows)
    assert runs <= int(report.split(" run(s) under")[0].rsplit("\n", 1)[-1])
    # Round two's five frameworks, same protocol: their rows are benchmarks/quality/frameworks/report.md's
    # kNN, linear and effective-rank columns, and their floors the same as the first study's.
    frameworks = (QUALITY / "frameworks" / "report.md").read_text()
    rows = _method_rows(text, FRAMEWORKS)
    assert len(rows) == len(FRAMEWORKS)
    for name, seeds, knn, linear, rank in rows:
        cells = _summary_cells(frameworks, name)
        assert [cells[0], cells[1], cells[2], cells[-1]] == [seeds, knn, linear, rank], name
    # Its floors were computed again (the ceiling lent): the same means; a probe recomputed on another CPU may
    # differ by an image or two in one seed (random init's seed-1 linear probe: 78.56 there, 78.58 here), so the
    # spreads are not compared.
    def means(line: str) -> list[str]:
        return [cell.split(" ±")[0].strip() for cell in line.strip().strip("|").split("|")]

    theirs = {means(line)[0]: means(line) for line in _reference_rows(frameworks.split("With few labels")[0])}
    assert all(theirs[means(line)[0]] == means(line) for line in floors)
    runs += sum(2 * len(row[1].split(", ")) for row in rows)
    assert f"({runs} runs" in text.split("\n", 1)[0]


def test_readme_few_label_table_is_the_committed_report():
    """The few-label rows are the 1% / 10% linear and 10% fine-tuning columns of the frameworks report's summary,
    and its reference rows the report's few-label floors and references."""
    frameworks = (QUALITY / "frameworks" / "report.md").read_text()
    text = _results_subsection("With few labels")
    rows = _method_rows(text, FRAMEWORKS)
    assert len(rows) == len(FRAMEWORKS)
    for name, seeds, one, ten, finetune in rows:
        cells = _summary_cells(frameworks, name)  # seeds, kNN, linear, 1%, 10%, fine-tuning, rank
        assert [cells[0], *cells[3:6]] == [seeds, one, ten, finetune], name
    references = _reference_rows(text)
    assert len(references) == 3 and all(line in frameworks.splitlines() for line in references)


def test_readme_unseen_class_tables_are_the_committed_report():
    """The unseen-class rows are benchmarks/quality/unseen/report.md's summary rows (seeds, kNN, linear, 10% linear,
    effective rank), and its reference rows that report's floors and ceiling on the same classes."""
    unseen = (QUALITY / "unseen" / "report.md").read_text()
    text = _results_subsection("On unseen classes")
    rows = _method_rows(text, UNSEEN)
    assert len(rows) == len(UNSEEN)
    for name, seeds, *cells in rows:
        assert _summary_cells(unseen, name) == [seeds, *cells], name
    references = _reference_rows(text)
    assert len(references) == 6 and all(line in unseen.splitlines() for line in references)


def test_readme_budget_table_is_the_committed_report():
    """The budget rows are benchmarks/quality/budget/report.md's summary rows of each method at 8 and at 24 epochs
    (seeds and every column), its reference rows that report's floors and 24-epoch ceiling, and the README shows
    each method's per-epoch kNN figure of that report."""
    budget = (QUALITY / "budget" / "report.md").read_text()
    text = _results_subsection("With three times the training")
    rows = _method_rows(text, BUDGET)
    assert sorted((name, epochs) for name, epochs, *_ in rows) == sorted(
        (name, epochs) for name in BUDGET for epochs in ("8", "24"))
    for name, epochs, seeds, *cells in rows:
        assert _summary_cells(budget, name, f"; trainer.max_epochs={epochs}") == [seeds, *cells], (name, epochs)
    references = _reference_rows(text)
    assert len(references) == 3 and all(line in budget.splitlines() for line in references)
    for key in BUDGET.values():
        assert f"](benchmarks/quality/budget/knn_top1_{key}.png)" in text and f"(knn_top1_{key}.png)" in budget
