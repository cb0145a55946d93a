"""The package's architecture, checked by reading its imports and source.

- Dependencies point one way (the table below); nothing imports ``cli``; no import cycles.
- Private Keras internals and ``keras.models.clone_model`` appear in ``graph.py`` only.
- ``compress``, ``deploy`` and ``training`` never probe layers with ``hasattr``: they rely on
  the layer contract (``layers.CompressedLayer``).
"""

import ast
import pathlib
import re

import pytest

import keras_eigenconv

ROOT = pathlib.Path(keras_eigenconv.__file__).parent

# component -> the components it may import (besides itself)
ALLOWED = {
    "decompositions": set(),
    "_table": set(),
    "_io": set(),  # the atomic writer: standard library only, importable from anywhere
    # the CLI process's log silencing (standard library only), run first by the package
    # __init__ through _cli_start; a no-op for library use
    "_quiet": set(),
    "_cli_start": {"_quiet"},
    "graph": set(),
    "cost": {"graph", "_table"},
    "layers": {"decompositions", "cost", "graph"},
    "compress": {"layers", "decompositions", "cost", "graph", "_table"},
    "deploy": {"layers", "decompositions", "cost", "graph", "_table", "_io"},
    # tune_implementations times training steps with deploy's TrainStepTimer
    "training": {"layers", "decompositions", "cost", "graph", "deploy", "_table"},
    "analysis": {"decompositions", "cost", "graph", "_table", "_io"},
    # latency budgets join compress (plan, build) and deploy (LiteRT timing), which never
    # import each other: the joining lives above both
    # (and the train target builds through training.tune_implementations)
    "latency": {"compress", "deploy", "training", "graph", "_table"},
    "zoo": {"layers"},
    "demo": {
        "analysis",
        "compress",
        "deploy",
        "latency",
        "training",
        "zoo",
        "cost",
        "_table",
        "_io",
    },
    "cli": {
        "latency",
        "analysis",
        "compress",
        "deploy",
        "training",
        "zoo",
        "demo",
        "layers",
        "cost",
        "graph",
        "decompositions",
        "_table",
        "_io",
        "_quiet",
    },
}
PRIVATE_KERAS = re.compile(
    r"\._inbound_nodes|\._outbound_nodes|\._keras_history|\._nodes_by_depth|"
    r"\._flatten_layers|\._tracker|keras\.src\b|clone_model\("
)


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(["keras_eigenconv", *parts])
        yield name, path, path.name == "__init__.py"


def _imports(name, path, is_package):
    """Absolute names of the keras_eigenconv modules ``path`` imports (anywhere in it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if is_package else name.rsplit(".", 1)[0]
    known = {n for n, _, _ in _modules()}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("keras_eigenconv"):
                for a in node.names:  # "from pkg import submodule" imports the submodule
                    out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("keras_eigenconv"))
    return {m for m in out if m in known}


def _component(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = {name: _imports(name, path, pkg) for name, path, pkg in _modules()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_dependencies_point_one_way(module):
    comp = _component(module)
    if comp in ("__init__", "__main__"):
        assert comp == "__main__" or "keras_eigenconv.cli" not in GRAPH[module]
        return
    allowed = ALLOWED[comp] | {comp}
    bad = {m for m in GRAPH[module] if _component(m) not in allowed and m != "keras_eigenconv"}
    assert not bad, f"{module} ({comp}) imports {sorted(bad)}; allowed: {sorted(allowed)}"
    if comp != "cli":  # the CLI imports the root to register every layer before loading
        assert "keras_eigenconv" not in GRAPH[module], f"{module} imports the package root"


def test_no_import_cycles():
    # a module's package __init__ is part of importing it: count those edges too
    edges = {m: set(deps) for m, deps in GRAPH.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in edges.get(m, ()):
            if d == m or (m.startswith(d + ".") and d != "keras_eigenconv"):
                continue  # a package re-exporting its own submodules
            if state.get(d) == "open":
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_private_keras_internals_and_clone_model_live_in_graph_only():
    offenders = []
    for name, path, _ in _modules():
        if name == "keras_eigenconv.graph":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE_KERAS.search(code) and "graph.clone_model(" not in code:
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_stages_use_the_contract_not_hasattr():
    for stage in ("compress", "deploy", "training"):
        for path in (ROOT / stage).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "hasattr(" not in text, path


def test_the_atomic_writer_uses_the_standard_library_only():
    import sys

    tree = ast.parse((ROOT / "_io.py").read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    names.discard("__future__")
    assert names <= set(sys.stdlib_module_names), sorted(names - set(sys.stdlib_module_names))
