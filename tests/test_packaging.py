"""The package as users get it: an sdist and a wheel carry the recipes, and an installed wheel runs from anywhere.

The wheel is built from the unpacked sdist (what ``pip install dimcl-*.tar.gz`` does), installed into a fresh
venv that borrows the already installed torch through a ``.pth`` line, and run from outside the repository.
Nothing is downloaded: the build runs without isolation and pip without an index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, write_fashion_mnist

import dimcl
from dimcl.recipes import list_recipes, recipes_dir

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """An sdist and a wheel of the working tree, and the wheel built from that sdist."""
    root = tmp_path_factory.mktemp("packaging")
    tree = root / "tree"  # a copy, so that building writes no build/ or egg-info into the checkout
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = root / "dist"
    names = []
    for hook in ("build_sdist", "build_wheel"):  # one process each: setuptools keeps state between the hooks
        # setuptools logs to stdout too: the file name comes back on a line of its own
        code = f"import sys; from setuptools import build_meta as b; print('BUILT', b.{hook}(sys.argv[1]))"
        out = _run([sys.executable, "-c", code, str(dist)], cwd=tree).stdout
        names.append(next(line for line in out.splitlines() if line.startswith("BUILT ")).split()[1])
    sdist_name, wheel_name = names
    with tarfile.open(dist / sdist_name) as tar:
        tar.extractall(root / "unpacked", filter="data")
    (unpacked,) = (root / "unpacked").iterdir()
    from_sdist = root / "from_sdist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", str(from_sdist), str(unpacked)], cwd=root)
    (wheel_from_sdist,) = from_sdist.glob("*.whl")
    return {"sdist": dist / sdist_name, "wheel": dist / wheel_name, "wheel_from_sdist": wheel_from_sdist}


def test_sdist_and_wheels_carry_every_recipe_byte_for_byte(built):
    recipes = {name: (recipes_dir() / f"{name}.yaml").read_bytes() for name in list_recipes()}
    assert len(recipes) >= 30 and "fashion_mnist/byol" in recipes
    with tarfile.open(built["sdist"]) as tar:
        members = {m.name.split("/src/dimcl/configs/", 1)[1][:-5]: m for m in tar.getmembers()
                   if "/src/dimcl/configs/" in m.name and m.name.endswith(".yaml")}
        assert {k: tar.extractfile(m).read() for k, m in members.items()} == recipes
    for wheel in (built["wheel"], built["wheel_from_sdist"]):
        assert wheel.name == f"dimcl-{dimcl.__version__}-py3-none-any.whl"
        with zipfile.ZipFile(wheel) as z:
            inside = {n[len("dimcl/configs/"):-5]: z.read(n) for n in z.namelist()
                      if n.startswith("dimcl/configs/") and n.endswith(".yaml")}
        assert inside == recipes, wheel.name


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel built from the sdist; torch and the rest come from this environment."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # pip of this environment installs into the new one; the new one does not see this one yet, so the
    # editable dimcl here cannot count as "already installed"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", str(built["wheel_from_sdist"])], cwd=env_dir)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=env_dir).stdout.strip())
    # A plain path line: this environment's packages come after the venv's own, and their .pth files
    # (the editable install's path to src/) are not processed.
    (site / "borrowed.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    return env_dir


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DIMCL_CONFIGS", "PYTHONPATH")}


def test_installed_wheel_lists_the_recipes_and_its_version(installed, tmp_path):
    where = _run([str(installed / "bin" / "python"), "-c", "import dimcl; print(dimcl.__file__)"],
                 cwd=tmp_path, env=_clean_env()).stdout.strip()
    assert Path(where).is_relative_to(installed), where  # the wheel's copy, not the checkout's
    dimcl_command = str(installed / "bin" / "dimcl")
    assert _run([dimcl_command, "--version"], cwd=tmp_path, env=_clean_env()).stdout.strip() == \
        f"dimcl {dimcl.__version__}"
    listed = _run([dimcl_command, "list"], cwd=tmp_path, env=_clean_env()).stdout
    assert str(installed) in listed  # the recipes folder inside the venv
    for name in list_recipes():
        assert f"  {name}\n" in listed, name


def test_installed_wheel_pretrains_a_bundled_recipe_outside_the_repository(installed, tmp_path):
    data = write_fashion_mnist(tmp_path / "fashion_mnist")
    run = tmp_path / "run"
    proc = _run([str(installed / "bin" / "dimcl"), "pretrain", "-c", "fashion_mnist/byol", "-o", str(run),
                 *TINY_RUN, f"data.root={data}", "trainer.max_epochs=1"], cwd=tmp_path, env=_clean_env())
    assert "epoch 1/1" in proc.stdout
    assert (run / "backbone.safetensors").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
