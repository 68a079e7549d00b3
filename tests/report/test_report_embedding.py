"""The report's embedding-map section: per method, base against +DimCL, the first seed that has a map."""

from __future__ import annotations

import json

from dimcl.config import save_config
from dimcl.eval.embedding import embedding_files
from dimcl.recipes import load_config, resolve_recipe
from dimcl.report import build_report


def make_run(path, weight, seed, map_bytes=None, recorded=True):
    """A finished one-epoch BYOL run directory; with ``map_bytes`` its t-SNE figure, recorded in its
    diversity.json as ``dimcl analyze --embedding tsne`` records it (or left unrecorded)."""
    path.mkdir(parents=True)
    save_config(load_config(resolve_recipe("fashion_mnist/byol"),
                            [f"seed={seed}", f"dimcl.weight={weight}", "trainer.max_epochs=1"]), path / "config.yaml")
    (path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0, "knn_top1": 50.0}) + "\n")
    if map_bytes is not None:
        figure, data = embedding_files("tsne")
        (path / figure).write_bytes(map_bytes)
        made = {"method": "tsne", "images": 2000, "seed": 2309, "figure": figure, "data": data}
        (path / "diversity.json").write_text(json.dumps({"backbone_effective_rank": 3.0,
                                                         **({"embedding": made} if recorded else {})}))


def test_each_arm_shows_the_map_of_its_first_seed_that_has_one(tmp_path):
    root = tmp_path / "sweep"
    make_run(root / "base0", 0, 0, b"base seed 0")
    make_run(root / "base1", 0, 1, b"base seed 1")
    make_run(root / "dimcl0", 0.1, 0, b"stale map", recorded=False)  # a later analyze made no map: not shown
    make_run(root / "dimcl1", 0.1, 1, b"dimcl seed 1")
    make_run(root / "dimcl2", 0.1, 2, b"dimcl seed 2")
    out = tmp_path / "report"
    markdown = build_report(root, out / "report.md")
    section = markdown.split("## Embedding maps", 1)[1].split("\n## ", 1)[0]
    assert "### byol: t-SNE" in section
    header, _, images = (line for line in section.splitlines() if line.startswith("|"))
    assert header.index("base") < header.index("+DimCL")
    base_link, dimcl_link = (cell.split("](")[1].split(")")[0] for cell in images.strip("|").split("|"))
    assert (out / base_link).read_bytes() == b"base seed 0"
    assert (out / dimcl_link).read_bytes() == b"dimcl seed 1"
    assert "seed 0, 2000 images" in images and "seed 1, 2000 images" in images


def test_no_map_no_section(tmp_path):
    make_run(tmp_path / "sweep" / "base", 0, 0)
    assert "Embedding maps" not in build_report(tmp_path / "sweep")
