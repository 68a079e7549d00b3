"""The documentation site (mkdocs.yml, tools/mkdocs_hooks.py, tools/griffe_roles.py,
tools/griffe_field_comments.py): its navigation is docs/README.md's list and holds every page; the API pages
show every public name, each documented with its arguments, and the fields' ``#:`` comments; and ``mkdocs
build --strict`` fails on a link to a missing page or a docstring reference that does not resolve. The whole
site is built by ``make docs`` (.ci/run); the builds here need the docs extra."""

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import dimcl.losses
import dimcl.methods
import dimcl.models

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load("mkdocs_hooks")


def test_the_nav_is_docs_readme_and_holds_every_page():
    nav = hooks.nav_from_index((DOCS / "README.md").read_text())
    pages = [page for _, page in hooks._titled_pages(nav)]
    assert pages[0] == "README.md" and len(pages) == len(set(pages))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*") if p.suffix in (".md", ".ipynb")}
    assert set(pages) == on_disk, f"pages that docs/README.md does not link: {sorted(on_disk - set(pages))}"
    sections = {k: v for entry in nav for k, v in entry.items() if isinstance(v, list)}  # titles keep their case
    assert {"kNN": "eval-knn.md"} in sections["Evaluations"]


def test_nav_rules():
    text = "# t\n\n- [The method](method.md): words\n- Evaluations: [kNN](a.md),\n  [linear probe](b.md).\n" \
           "- Reference, generated (`x`): [the `dimcl` command](cli.md)\n- no link here\n"
    assert hooks.nav_from_index(text) == [
        {"Home": "README.md"}, {"The method": "method.md"},
        {"Evaluations": [{"kNN": "a.md"}, {"Linear probe": "b.md"}]},
        {"Reference": [{"The dimcl command": "cli.md"}]},
    ]


def test_the_home_page_starts_with_the_readme_quick_start():
    start = hooks.home_start((REPO / "README.md").read_text())
    assert start.startswith("# dimcl") and "## Quick start" in start and "make demo" in start
    assert "](docs/" not in start  # links into docs/ are the site's
    # an anchor of a later README section (not on the home page) keeps its text; one of the quick start stays
    readme = "# t\n\nSee [the results](#results-on-the-cpu-x) and [start](#quick-start-two-commands).\n\n" \
             "## Quick start: two commands\n\nmake demo\n\n## Results on the CPU: x\n"
    assert "See the results and [start](#quick-start-two-commands)." in hooks.home_start(readme)


API_PAGES = {"losses.md": dimcl.losses, "methods.md": dimcl.methods, "models.md": dimcl.models}


@pytest.mark.parametrize("page", sorted(API_PAGES))
def test_the_api_pages_show_every_public_name_documented_with_its_arguments(page):
    module = API_PAGES[page]
    text = (DOCS / "api" / page).read_text()
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert name in text, f"docs/api/{page} does not show {module.__name__}.{name}"
        doc = inspect.getdoc(obj) or ""
        assert doc, f"{name} has no docstring"
        if not obj.__module__.startswith(module.__name__):
            continue  # shown there, documented where it lives (DimCLConfig: dimcl.config)
        try:
            signature = inspect.signature(obj)
        except ValueError:  # a TypedDict (MethodOutput): its docstring lists its keys
            continue
        if any(p not in ("self", "args", "kwargs") for p in signature.parameters):
            assert "Args:" in doc, f"{name}'s docstring does not document its arguments (Args:)"
        if inspect.isfunction(obj) and signature.return_annotation not in (None, "None"):
            assert "Returns:" in doc, f"{name}'s docstring does not say what it returns (Returns:)"


def _build(root: Path, readme: str, pages: dict[str, str], src: Path = REPO / "src") -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of a small site with the repository's mkdocs.yml, hooks and extensions."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("# x\n\n## Quick start\n\n`make test`\n")
    (root / "docs" / "README.md").write_text(readme)
    for name, text in pages.items():
        (root / "docs" / name).write_text(text)
    config = (REPO / "mkdocs.yml").read_text().replace("tools/", f"{REPO}/tools/")
    (root / "mkdocs.yml").write_text(config.replace("paths: [src]", f"paths: [{src}]"))
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict"], cwd=root, capture_output=True,
                          text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_strict_build_passes_a_good_site_and_fails_a_link_to_a_missing_page(tmp_path):
    index = "# d\n\n- [A page](a.md): it.\n"
    good = _build(tmp_path / "good", index, {"a.md": "# A\n\n[home](README.md)\n"})
    assert good.returncode == 0, good.stderr
    bad = _build(tmp_path / "bad", index, {"a.md": "# A\n\n[gone](missing.md)\n"})
    assert bad.returncode != 0 and "missing.md" in bad.stderr
    unlisted = _build(tmp_path / "unlisted", index, {"a.md": "# A\n", "b.md": "# B\n"})
    assert unlisted.returncode != 0 and "b.md" in unlisted.stderr


def test_the_strict_build_fails_a_docstring_reference_that_does_not_resolve(tmp_path):
    package = tmp_path / "src" / "dimcl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Pkg."""\n')
    (package / "losses.py").write_text(
        '"""Losses."""\n\n\ndef good() -> None:\n    """See :func:`bad_name`, :func:`good` and :mod:`dimcl`."""\n')
    index = "# d\n\n- [API](api.md): it.\n"
    result = _build(tmp_path / "site", index, {"api.md": "# API\n\n::: dimcl.losses\n"}, src=tmp_path / "src")
    assert result.returncode != 0
    unresolved = [line for line in result.stderr.splitlines() if "does not resolve" in line]
    assert len(unresolved) == 1 and ":func:`bad_name`" in unresolved[0], result.stderr


def test_field_comments_are_the_docstrings_of_their_attributes(tmp_path):
    griffe = pytest.importorskip("griffe")
    field_comments = _load("griffe_field_comments")
    assert field_comments.comment_above(["x = 1", "#: first", "    #: second", "y: int = 2"], 4) == "first\nsecond"
    assert field_comments.comment_above(["# a plain comment", "x = 1"], 2) == ""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(
        '"""P."""\n\n#: the table\nTABLE = {}\n\n\nclass C:\n    """C."""\n\n'
        '    #: where it stands\n    #: lowest first\n    order: int = 0\n'
        '    #: not this one\n    named: str = ""\n    """its own docstring"""\n    bare: int = 1\n')
    loader = griffe.GriffeLoader(search_paths=[str(tmp_path)],
                                 extensions=griffe.load_extensions(field_comments.FieldComments()))
    pkg = loader.load("pkg")
    assert pkg["TABLE"].docstring.value == "the table"
    assert pkg["C.order"].docstring.value == "where it stands\nlowest first"
    assert pkg["C.named"].docstring.value == "its own docstring"
    assert pkg["C.bare"].docstring is None
