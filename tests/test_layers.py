"""The package's floor plan: each layer imports only the layers below it, and no module
imports itself back through others (the rules are written in each package's docstring)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ss4rec

SRC = Path(ss4rec.__file__).resolve().parent

# Layer -> the layers (and top-level modules) it must never import. Read with the packages'
# docstrings, which state what each layer owns.
FORBIDDEN = {
    "config": {"ssm", "data", "models", "training", "pipeline", "evaluation", "drift", "commands", "cli"},
    "ssm": {"data", "models", "training", "pipeline", "evaluation", "drift", "commands", "cli"},
    "data": {"models", "training", "pipeline", "evaluation", "drift", "commands", "cli"},
    "models": {"training", "pipeline", "evaluation", "drift", "commands", "cli"},
    "training": {"pipeline", "evaluation", "drift", "commands", "cli"},
    "pipeline": {"evaluation", "drift", "commands", "cli"},
    "evaluation": {"drift", "commands", "cli"},
    "drift": {"commands", "cli"},
}
# Where a lazy import (inside a function) is the design: the command boundary keeps
# `ss4rec --help` free of torch, and the RecBole hooks import our classes only when RecBole asks.
LAZY_ALLOWED = {"ss4rec", "ss4rec.cli", "ss4rec.compat", "ss4rec.__main__"}
# Optional packages: imported where they are used, inside a guard.
OPTIONAL = ("wandb", "mamba_ssm", "causal_conv1d", "selective_scan_cuda")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(path: Path):
    """(imported module, line, lazy?) for every import in ``path``: lazy is inside a function
    and outside a ``try`` guard."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f)}
    # inside a try: a guarded import that may fail (an optional or broken package) on purpose
    guarded = {id(n) for f in functions for t in ast.walk(f) if isinstance(t, ast.Try) for n in ast.walk(t)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from ss4rec.training import distributed` names a module too
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in nested and id(node) not in guarded


def ss4rec_edges():
    for source, path in MODULES.items():
        for name, line, lazy in imports_of(path):
            if name in MODULES and name != source:
                yield source, name, line, lazy


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_layers_import_only_downwards():
    wrong = [f"{MODULES[s].relative_to(SRC.parent)}:{line} imports {t}"
             for s, t, line, _ in ss4rec_edges()
             if layer(t) in FORBIDDEN.get(layer(s), ()) and s not in LAZY_ALLOWED]
    assert not wrong, "layer rule broken:\n" + "\n".join(wrong)


def test_import_graph_is_acyclic():
    graph: dict[str, set[str]] = {}
    for s, t, _, _ in ss4rec_edges():
        if s != "ss4rec" and t != "ss4rec":  # the package root only re-exports, lazily
            graph.setdefault(s, set()).add(t)
    # A module's package __init__ runs before it: a parent package importing its child is no circle.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_library_imports_are_at_the_top():
    lazy = [f"{MODULES[s].relative_to(SRC.parent)}:{line} imports {t} inside a function"
            for s, t, line, is_lazy in ss4rec_edges()
            if is_lazy and s not in LAZY_ALLOWED and layer(s) != "commands"]
    assert not lazy, "\n".join(lazy)


def test_every_module_imports():
    """Every module imports, in a fresh interpreter (a broken or order-dependent import fails here)."""
    names = [m for m in MODULES if m != "ss4rec.__main__"]
    done = subprocess.run([sys.executable, "-c", "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)",
                           *names], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_package_states_its_rules():
    for package in {"config", "ssm", "data", "models", "training", "pipeline", "evaluation", "drift", "commands"}:
        doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "Layer rule" in doc, f"ss4rec/{package}/__init__.py: say what it owns and may import"
