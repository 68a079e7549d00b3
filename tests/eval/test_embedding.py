"""Embedding maps (``dimcl analyze --embedding``): the figure and its data, the fixed image set, the missing-umap
message, the sweep grid's key."""

from __future__ import annotations

import gzip
import json
import shutil
import sys

import numpy as np
import pytest
import yaml

from dimcl import cli
from dimcl.errors import ConfigError
from dimcl.eval.embedding import EMBEDDING_SEED, embedding_files
from dimcl.sweep import load_grid
from dimcl.train.run_writer import check_run_folder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def analyze(args: list[str], capsys) -> tuple[int, str]:
    """``dimcl analyze ARGS`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main(["analyze", "--images", "16", *args])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    return code, capsys.readouterr().err


def copy_run(run, to, **config):
    """A copy of a run directory with some top-level / ``data`` keys of its config.yaml changed."""
    shutil.copytree(run, to)
    saved = yaml.safe_load((to / "config.yaml").read_text())
    for key, value in config.items():
        section, _, name = key.rpartition(".")
        (saved[section] if section else saved)[name] = value
    (to / "config.yaml").write_text(yaml.safe_dump(saved))
    return to


def test_the_map_has_a_point_per_image_with_its_label_and_the_same_images_every_time(
        tiny_byol_run, tiny_fashion_mnist, tmp_path, capsys):
    run = copy_run(tiny_byol_run, tmp_path / "run")
    code, err = analyze(["--ckpt", str(run), "--embedding", "tsne", "--embedding-images", "30"], capsys)
    assert code == 0, err
    figure, data = embedding_files("tsne")
    assert (run / figure).read_bytes().startswith(PNG_MAGIC)
    made = json.loads((run / data).read_text())
    assert (made["method"], made["images"], made["seed"]) == ("tsne", 30, EMBEDDING_SEED)
    points = made["points"]
    indices = [p["index"] for p in points]
    assert len(points) == 30 and len(set(indices)) == 30 and all(0 <= i < 48 for i in indices)
    assert indices != list(range(30))  # a seeded draw from the whole split, not its first images
    assert all(np.isfinite([p["x"], p["y"]]).all() for p in points)
    # Each point has its image's label, read here from the test split's own file.
    with gzip.open(tiny_fashion_mnist / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    assert [p["label"] for p in points] == [int(labels[i]) for i in indices]
    assert made["class_names"][0] == "T-shirt/top"
    # The analyze result records what was made.
    assert json.loads((run / "diversity.json").read_text())["embedding"] | {"time_s": 0} == {
        "method": "tsne", "images": 30, "seed": EMBEDDING_SEED, "figure": figure, "data": data, "time_s": 0}

    # The map and the plots are dimcl's files: a new run may start over them (pretrain --overwrite).
    check_run_folder(run, resume=False, overwrite=True)

    # A second call maps the same images to the same places.
    again = tmp_path / "again"
    assert analyze(["--ckpt", str(run), "--embedding", "tsne", "--embedding-images", "30", "--out", str(again)],
                   capsys)[0] == 0
    assert json.loads((again / data).read_text())["points"] == points
    # A run of another seed, evaluated on a seeded subset of the split, maps the same images of the split.
    other = copy_run(tiny_byol_run, tmp_path / "seed1", seed=1, **{"data.eval_subset": 20})
    assert analyze(["--ckpt", str(other), "--embedding", "tsne", "--embedding-images", "30"], capsys)[0] == 0
    other_points = json.loads((other / data).read_text())["points"]
    assert [(p["index"], p["label"]) for p in other_points] == [(p["index"], p["label"]) for p in points]


def test_umap_without_umap_learn_is_bad_input_naming_the_extra(tiny_byol_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` raises ImportError, as when it is missing
    run = copy_run(tiny_byol_run, tmp_path / "run")
    code, err = analyze(["--ckpt", str(run), "--embedding", "umap"], capsys)
    assert code == 2
    assert "pip install 'dimcl[umap]'" in err and "Traceback" not in err
    assert not (run / "diversity.json").exists()  # said before any work
    code, err = analyze(["--ckpt", str(run), "--embedding", "tsne", "--embedding-images", "3"], capsys)
    assert code == 2 and "--embedding-images got 3" in err


def test_a_sweep_grid_asks_for_a_map(tmp_path):
    def grid(**stages):
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({"recipe": "fashion_mnist/byol", "grid": {"seed": [0]}, **stages}))
        return path

    spec = load_grid(grid(embedding="tsne", embedding_images=500))
    assert "analyze" in spec.evaluations
    assert spec.options["analyze"] == {"embedding": "tsne", "embedding_images": 500}
    with pytest.raises(ConfigError, match="'embedding' got 'pca'.*tsne, umap"):
        load_grid(grid(embedding="pca"))
    with pytest.raises(ConfigError, match="'embedding_images' got 0.*positive int"):
        load_grid(grid(embedding="tsne", embedding_images=0))
