"""The shape of the code (docs/architecture.md): imports go one way up the layers, with no circles, no
function is longer than a screenful and no file longer than one idea needs. Read from the source with
``ast``; nothing is imported."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"

#: the layers of docs/architecture.md, bottom first: a module may import its own layer and those below
LAYERS = (
    ("dimcl.version", "dimcl.errors", "dimcl.files", "dimcl.yaml_files", "dimcl.names", "dimcl.schedules",
     "dimcl.seeds", "dimcl.distributed", "dimcl.provenance"),
    ("dimcl.config_checks", "dimcl.config", "dimcl.experiment"),
    ("dimcl.data", "dimcl.models", "dimcl.losses"),
    ("dimcl.methods",),
    ("dimcl.recipes", "dimcl.run_dir", "dimcl.checkpoint", "dimcl.build", "dimcl.trained"),
    ("dimcl.eval",),
    ("dimcl.train",),
    ("dimcl.baselines", "dimcl.export", "dimcl.sweep", "dimcl.report", "dimcl.demo"),
    ("dimcl.cli", "dimcl.docs", "dimcl"),
)
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The dimcl modules ``name`` imports, at the top or inside functions (``from a import b`` counts ``a``
    and, when ``a.b`` is a module, ``a.b``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in MODULES and m != name}


def _layer(name: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{name} is in no layer: add it to LAYERS here and to docs/architecture.md"
    return best[0]


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_imports_go_down_the_layers():
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name in sorted(MODULES)
        for target in sorted(_imports(name))
        if _layer(target) > _layer(name)
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = {name: _imports(name) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target] if target in path else [name, target]
            if target not in state:
                found = visit(target, [*path, target])
                if found:
                    return found
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            circle = visit(name, [name])
            assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_checker_sees_a_circle(tmp_path, monkeypatch):
    """The circle test is not vacuous: two modules that import each other are found."""
    (tmp_path / "a.py").write_text("from dimcl.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from dimcl.a import y\n")
    monkeypatch.setitem(MODULES, "dimcl.a", tmp_path / "a.py")
    monkeypatch.setitem(MODULES, "dimcl.b", tmp_path / "b.py")
    assert _imports("dimcl.a") == {"dimcl.b"} and _imports("dimcl.b") == {"dimcl.a"}
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circles()


def test_no_long_functions():
    long = []
    for name, path in sorted(MODULES.items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into their phases):\n" + "\n".join(long)


def test_no_long_files():
    long = [f"{path.relative_to(SRC)}: {lines} lines" for path in sorted(MODULES.values())
            if (lines := len(path.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long, f"files over {MAX_FILE_LINES} lines (one idea per file: move a part out):\n" + "\n".join(long)
