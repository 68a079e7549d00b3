"""Reports from hand-made run directories, checked against figures computed by hand."""

from __future__ import annotations

import json
import math

import pytest

from dimcl.config import save_config
from dimcl.errors import BadInputError
from dimcl.recipes import load_config, resolve_recipe
from dimcl.report import build_report
from dimcl.report.plots import _epoch_figure
from dimcl.report.report import (
    Run,
    compare_groups,
    group_runs,
    load_runs,
    mean_std,
    paired_interval,
    t_quantile_975,
)


def make_run(path, method, weight, seed, knn, *, rank=None, extra=(), files=None):
    """A run directory: config.yaml, and metrics.jsonl whose epochs have the given kNN (and rank) values
    (finished: its trainer.max_epochs is the number of epochs given, unless ``extra`` says otherwise)."""
    path.mkdir(parents=True)
    overrides = [f"seed={seed}", f"dimcl.weight={weight}", f"trainer.max_epochs={len(knn)}", *extra]
    cfg = load_config(resolve_recipe(f"fashion_mnist/{method}"), overrides)
    save_config(cfg, path / "config.yaml")
    with open(path / "metrics.jsonl", "w") as f:
        for epoch, value in enumerate(knn, 1):
            record = {"epoch": epoch, "loss": 1.0 / epoch, "knn_top1": value}
            if rank is not None:
                record["backbone_effective_rank"] = rank[epoch - 1]
            f.write(json.dumps(record) + "\n")
    for name, content in (files or {}).items():
        (path / name).write_text(json.dumps(content))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    # BYOL baseline, seeds 0-3 (final kNN 80, 82, 84, 90); seed 3 has no +DimCL partner.
    make_run(root / "byol" / "base" / "s2", "byol", 0, 2, [50, 84], rank=[3, 5])
    make_run(root / "byol" / "base" / "s0", "byol", 0, 0, [50, 80], rank=[3, 4],
             files={"linear.json": {"linear_top1": 70.0}})
    # With λ = 0 the other dimcl.* keys change nothing: still the same baseline.
    make_run(root / "byol" / "base" / "s3", "byol", 0, 3, [50, 90], rank=[3, 4], extra=["dimcl.temperature=0.5"])
    # Bookkeeping and speed keys differ: still the same experiment.
    make_run(root / "deeper" / "still" / "s1", "byol", 0, 1, [50, 82], rank=[3, 4],
             extra=["trainer.progress_bar=false", "data.root=/elsewhere", "trainer.compile=true"])
    # BYOL + DimCL, seeds 0-2: differences 1, 2, 1.5 against the baseline of the same seed.
    make_run(root / "byol" / "dimcl" / "s0", "byol", 0.1, 0, [55, 81], rank=[4, 6],
             files={"linear.json": {"linear_top1": 72.5}, "diversity.json": {"backbone_effective_rank": 9.0}})
    make_run(root / "byol" / "dimcl" / "s1", "byol", 0.1, 1, [55, 0], rank=[4, 6],
             files={"knn.json": {"knn_top1": 84.0}})  # the offline kNN file wins over the metrics
    make_run(root / "byol" / "dimcl" / "s2", "byol", 0.1, 2, [55, 85.5], rank=[4, 6])
    # SimCLR with one seed each.
    make_run(root / "simclr" / "base", "simclr", 0, 0, [40, 60])
    make_run(root / "simclr" / "dimcl", "simclr", 0.1, 0, [40, 63])
    (root / "not_a_run").mkdir()
    (root / "stray").mkdir()
    (root / "stray" / "config.yaml").write_text("seed: 0\n")  # a config without metrics: not a run
    return root


def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(math.tan(math.pi * 0.475))  # Cauchy: closed form
    assert t_quantile_975(2) == pytest.approx(0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)))  # closed form for 2 dof
    assert t_quantile_975(4) == pytest.approx(2.776, abs=1e-3)  # the textbook table
    assert t_quantile_975(30) > t_quantile_975(31) > t_quantile_975(40) > 2.02
    assert t_quantile_975(31) == pytest.approx(2.0395134, abs=1e-6)
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_std_and_paired_interval_by_hand():
    assert mean_std([80, 82, 84, 90]) == pytest.approx((84, math.sqrt((16 + 4 + 0 + 36) / 3)))
    assert mean_std([5.0]) == (5.0, None)
    mean, (low, high) = paired_interval([1.0, 2.0, 1.5])
    half = 4.302652730 * 0.5 / math.sqrt(3)  # sd of (1, 2, 1.5) is 0.5; t(0.975, 2) = 4.3027
    assert mean == pytest.approx(1.5) and low == pytest.approx(1.5 - half) and high == pytest.approx(1.5 + half)
    assert paired_interval([3.0]) == (3.0, None)


def test_groups_and_pairing(sweep):
    runs, notes = load_runs(sweep)
    assert len(runs) == 9 and len(notes) == 1 and "stray" in notes[0]
    groups = group_runs(runs)
    assert [(g.method, g.dimcl_weight, len(g.runs)) for g in groups] == [
        ("byol", 0.0, 4), ("byol", 0.1, 3), ("simclr", 0.0, 1), ("simclr", 0.1, 1)
    ]
    base, dimcl = groups[0], groups[1]
    assert [r.seed for r in base.runs] == [0, 1, 2, 3]
    assert base.summary("knn_top1") == pytest.approx((84, math.sqrt(56 / 3), 4))
    assert dimcl.summary("knn_top1") == pytest.approx((83.5, math.sqrt((2.5**2 + 0.5**2 + 2**2) / 2), 3))
    assert base.summary("linear_top1") == (70.0, None, 1)
    # diversity.json beats the last epoch's per-epoch figure
    assert dimcl.summary("backbone_effective_rank") == pytest.approx((7.0, math.sqrt(3), 3))
    assert "method.name=byol" in dimcl.label and "dimcl.weight=0.1" in dimcl.label

    comparisons = {(c.method, c.figure): c for c in compare_groups(groups)}
    knn = comparisons["byol", "knn_top1"]
    assert knn.seeds == [0, 1, 2]  # seed 3 has no partner
    assert knn.differences == pytest.approx([1.0, 2.0, 1.5])
    half = 4.302652730 * 0.5 / math.sqrt(3)
    assert knn.mean == pytest.approx(1.5) and knn.interval == pytest.approx((1.5 - half, 1.5 + half))
    linear = comparisons["byol", "linear_top1"]
    assert linear.seeds == [0] and linear.mean == pytest.approx(2.5) and linear.interval is None
    assert comparisons["simclr", "knn_top1"].mean == pytest.approx(3.0)
    assert ("simclr", "linear_top1") not in comparisons


def test_report_markdown_and_plots(sweep, tmp_path):
    out = tmp_path / "report" / "report.md"
    markdown = build_report(sweep, out)
    assert out.read_text() == markdown
    assert "9 run(s)" in markdown and "4 configuration(s)" in markdown
    assert f"84.00 ± {math.sqrt(56 / 3):.2f}" in markdown  # byol baseline kNN
    assert "70.00 (n=1)" in markdown  # linear: one run of four has it
    half = 4.302652730 * 0.5 / math.sqrt(3)
    assert f"| +1.50 | [{1.5 - half:+.2f}, {1.5 + half:+.2f}] |" in markdown
    assert "3 (0, 1, 2)" in markdown
    # the summary: means over the paired seeds 0-2 (base 80, 82, 84; +DimCL 81, 84, 85.5), Δ and its interval
    summary = markdown.split("## Summary: +DimCL against its baseline")[1].split("## ")[0]
    byol_row = next(line for line in summary.splitlines() if line.startswith("| byol |"))
    assert f"| 82.00 → 83.50, +1.50 [{1.5 - half:+.2f}, {1.5 + half:+.2f}] |" in byol_row
    assert "| 70.00 → 72.50, +2.50 |" in byol_row  # linear: one pair, no interval
    assert "λ=0.1, τ=0.1, InfoNCE" in byol_row and "| 0, 1, 2 |" in byol_row
    assert "n=1, no interval" in markdown
    # every run on its own: the offline kNN file's 84 for seed 1, no linear file, no epoch times
    runs = markdown.split("## Every run")[1].split("## ")[0]
    assert "| method.name=byol, dimcl.weight=0.1 | 1 | 84.00 | – | 6.0 | – |" in runs
    assert "| method.name=byol, dimcl.weight=0.0 | 0 | 80.00 | 70.00 | 4.0 | – |" in runs
    for name in ("knn_top1_byol.png", "effective_rank_byol.png", "knn_top1_simclr.png"):
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown
    assert not (out.parent / "effective_rank_simclr.png").exists()  # no per-epoch rank in those metrics


def test_the_legend_sits_under_the_axes_however_many_lines(tmp_path):
    # Nine BYOL configurations, as an ablation grid has: their long labels used to cover the lowest line.
    settings = [(w, []) for w in (0, 0.05, 0.1, 0.2, 0.4)]
    settings += [(0.1, [f"dimcl.temperature={t}"]) for t in (0.05, 0.2, 0.5)]
    settings += [(0.1, ["dimcl.hardness_aware=false"])]
    for i, (weight, extra) in enumerate(settings):
        make_run(tmp_path / f"r{i}", "byol", weight, 0, [50 + i, 60 + i, 70 - i], extra=extra)
    groups = group_runs(load_runs(tmp_path)[0])
    assert len(groups) == 9
    figure = _epoch_figure(groups, "knn_top1", "kNN top-1 (%)", "byol")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    (legend,) = figure.legends
    assert len(legend.get_texts()) == 9
    axes_box = figure.axes[0].get_tightbbox(renderer)  # the axes with their tick labels and axis labels
    legend_box = legend.get_window_extent(renderer)
    assert legend_box.y1 <= axes_box.y0  # wholly below the axes: no line is hidden
    assert legend_box.y0 >= 0 and legend_box.x0 >= 0 and legend_box.x1 <= figure.bbox.width  # and on the page
    assert _epoch_figure(groups, "no_such_key", "", "") is None


def test_default_location_and_empty_folder(sweep, tmp_path):
    build_report(sweep)
    assert (sweep / "report.md").is_file() and (sweep / "knn_top1_byol.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No run directories" in build_report(empty)


def test_runs_are_ordered_by_numeric_seed(tmp_path):
    runs = [Run(tmp_path / str(s), {"seed": s, "method.name": "byol", "dimcl.weight": 0.0}, [], {}) for s in (10, 2)]
    (group,) = group_runs(runs)
    assert [r.seed for r in group.runs] == [2, 10]


def test_unfinished_runs_are_left_out_unless_asked(sweep, tmp_path):
    # A third seed of SimCLR still training: 2 of its 8 epochs recorded, and a high early kNN.
    make_run(sweep / "simclr" / "base_s1", "simclr", 0, 1, [99, 99], extra=["trainer.max_epochs=8"])
    runs, notes = load_runs(sweep)
    assert len(runs) == 9 and not any(r.path.name == "base_s1" for r in runs)
    (note,) = [n for n in notes if "base_s1" in n]
    assert "unfinished (epoch 2 of 8" in note
    markdown = build_report(sweep, tmp_path / "r.md")
    assert "9 run(s)" in markdown and "99.00" not in markdown and "unfinished (epoch 2 of 8" in markdown

    runs, notes = load_runs(sweep, include_unfinished=True)
    assert len(runs) == 10 and any("base_s1" in n and "its last epoch's" in n for n in notes)
    markdown = build_report(sweep, tmp_path / "r2.md", include_unfinished=True)
    # its own configuration (another max_epochs), with its last epoch's kNN
    assert "10 run(s)" in markdown and "5 configuration(s)" in markdown and "| 99.00 |" in markdown


def test_a_config_saved_before_a_key_existed_groups_with_one_at_its_default(tmp_path):
    """Runs of an older dimcl lack the keys added since (multi-crop, wandb, ...): the report reads a missing key
    as its default, as resuming does, so they pair with newer runs of the same experiment."""
    import yaml

    root = tmp_path / "sweep"
    make_run(root / "old" / "base", "simclr", 0, 0, [60])
    make_run(root / "old" / "dimcl", "simclr", 0.1, 0, [62])
    for run in ("base", "dimcl"):  # as dimcl wrote them before these keys existed
        path = root / "old" / run / "config.yaml"
        saved = yaml.safe_load(path.read_text())
        del saved["augment"]["num_local_crops"], saved["augment"]["local_crop_scale"], saved["dimcl"]["local_pairs"]
        path.write_text(yaml.safe_dump(saved))
    make_run(root / "new" / "base", "simclr", 0, 1, [64])
    make_run(root / "new" / "dimcl", "simclr", 0.1, 1, [65])
    make_run(root / "multicrop" / "base", "simclr", 0, 2, [70], extra=["augment.num_local_crops=2"])
    groups = group_runs(load_runs(root)[0])
    assert [(g.dimcl_weight, [r.seed for r in g.runs]) for g in groups if g.config["augment.num_local_crops"] == 0] == [
        (0.0, [0, 1]), (0.1, [0, 1])
    ]
    assert len(groups) == 3  # the multi-crop run is another experiment
    knn = {(c.method, c.figure): c for c in compare_groups(groups)}["simclr", "knn_top1"]
    assert knn.seeds == [0, 1] and knn.differences == pytest.approx([2.0, 1.0])


def test_runs_beside_join_as_groups_of_their_own_paired_within_their_budget(tmp_path, capsys):
    from dimcl.cli import main

    longer, shorter = tmp_path / "longer", tmp_path / "shorter"
    for seed in (0, 1):  # 4 epochs: +DimCL 2 and 3 points up; 2 epochs: 1 point up at both seeds
        make_run(longer / f"base{seed}", "byol", 0, seed, [60, 70, 75, 80 + seed])
        make_run(longer / f"dimcl{seed}", "byol", 0.1, seed, [61, 72, 78, 82 + 2 * seed])
        make_run(shorter / f"base{seed}", "byol", 0, seed, [60, 70 + seed])
        make_run(shorter / f"dimcl{seed}", "byol", 0.1, seed, [61, 71 + seed])
    make_run(shorter / "simclr", "simclr", 0, 0, [50, 55])  # a method the longer runs lack: left out
    # an ablation the longer runs lack (another temperature): left out; with λ = 0 it is still the baseline
    make_run(shorter / "hotter", "byol", 0.1, 0, [40, 45], extra=["dimcl.temperature=0.5"])
    make_run(shorter / "base2", "byol", 0, 2, [60, 72], extra=["dimcl.temperature=0.5"])
    out = tmp_path / "report" / "report.md"
    assert main(["report", str(longer), "--out", str(out), "--beside", str(shorter)]) == 0
    markdown = out.read_text()
    assert f"4 run(s) under `{longer}` and 5 of the same arms under `{shorter}` in 4 configuration(s)" in markdown
    assert "simclr" not in markdown and "τ=0.5" not in markdown and "45.00" not in markdown
    summary = markdown.split("## Summary: +DimCL against its baseline")[1].split("## ")[0]
    rows = [line for line in summary.splitlines() if line.startswith("| byol |")]
    # each budget's +DimCL is paired with its own baseline: +2.50 over 4 epochs, +1.00 over 2
    assert len(rows) == 2 and any("trainer.max_epochs=4 | 0, 1 | 80.50 → 83.00, +2.50" in r for r in rows)
    assert any("trainer.max_epochs=2 | 0, 1 | 70.50 → 71.50, +1.00" in r for r in rows)
    shown = [run for run in load_runs(shorter)[0] if run.path.name != "hotter"]
    groups = group_runs(load_runs(longer)[0] + shown)
    byol = [g for g in groups if g.method == "byol"]
    assert sorted(g.label for g in byol) == sorted(
        f"method.name=byol, dimcl.weight={w}, trainer.max_epochs={e}" for w in (0.0, 0.1) for e in (2, 4))
    # the per-epoch figure holds the four lines
    figure = _epoch_figure(byol, "knn_top1", "kNN top-1 (%)", "byol")
    assert len(figure.legends[0].get_texts()) == 4
    capsys.readouterr()
    with pytest.raises(BadInputError, match="not a folder"):
        build_report(longer, out, beside=[tmp_path / "missing"])


def test_every_run_shows_its_training_time_the_sum_of_its_epochs(tmp_path):
    make_run(tmp_path / "r", "byol", 0, 0, [50, 60])
    metrics = tmp_path / "r" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({**r, "epoch_time_s": 10.4 * r["epoch"]}) + "\n" for r in records))
    runs = build_report(tmp_path, tmp_path / "report.md").split("## Every run")[1]
    assert "| method.name=byol, dimcl.weight=0.0 | 0 | 60.00 | 31 |" in runs  # 10.4 + 20.8
