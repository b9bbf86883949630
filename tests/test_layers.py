"""The package's layers: the core imports nothing above it, no import circle, imports at the top.

Layers, bottom to top: the core (every ``jhnas.*`` module not listed below), ``jhnas.experiments``,
``jhnas.cli``. ``jhnas/__init__.py`` loads its submodules lazily and is not a layer.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "jhnas"

#: Optional dependencies, imported where they are used (inside a function) so that jhnas works
#: without them; jhnas._nt_compat adapts neural-tangents to the installed JAX when it is asked for.
OPTIONAL = ("matplotlib", "neural_tangents", "torch", "jhnas._nt_compat")
ADAPTERS = ("jhnas._nt_compat",)


def _modules() -> dict[str, ast.Module]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(f.read_text())
    return out


def _imports(tree: ast.Module) -> set[str]:
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jhnas"):
            deps |= ({f"jhnas.{a.name}" for a in node.names} if node.module == "jhnas"
                     else {node.module})
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith("jhnas")}
    return deps


def _layer(module: str) -> int:
    return 2 if module == "jhnas.cli" else 1 if module.startswith("jhnas.experiments") else 0


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {d for d in _imports(t) if d in mods and d != m}
            for m, t in mods.items() if m != "jhnas"}


def test_no_import_from_a_lower_layer_to_a_higher_one():
    back = {m: sorted(d for d in deps if _layer(d) > _layer(m)) for m, deps in _graph().items()}
    assert not {m: d for m, d in back.items() if d}


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import circle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_imports_sit_at_the_top_except_optional_dependencies():
    inside = []
    for name, tree in _modules().items():
        if name in ADAPTERS:
            continue
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    what = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    if not (what or "").startswith(OPTIONAL):
                        inside.append(f"{name}:{node.lineno} {what}")
    assert not inside


def test_import_jhnas_is_light():
    """``import jhnas`` loads no JAX; a submodule loads on first use."""
    code = ("import sys, jhnas; assert 'jax' not in sys.modules; "
            "jhnas.ntk; assert 'jax' in sys.modules; print(jhnas.empirical_ntk_fn.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "empirical_ntk_fn"
