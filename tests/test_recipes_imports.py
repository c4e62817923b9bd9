"""The import graph of the package: no cycles, and every arrow points down the layers.

Layers, bottom up: ``ptobj.extras``; ``objectives`` and ``kernels`` (nothing else of ours);
``data_pipeline`` (objectives); ``models`` (kernels, objectives); ``hf`` (objectives, data_pipeline:
the objectives inside Hugging Face training, beside ``models``); then inside ``recipes`` the
training engine (the floor: none of the rest of recipes), export, evaluation, post-training,
experiments and the training command. Function-local imports count as arrows. No module
imports a bare ``objectives`` / ``kernels`` / ... (the names the package keeps to itself).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("objectives", "data_pipeline", "models", "kernels", "recipes")

# each group: the groups it may import (besides itself)
LOWER = ("ptobj.extras", "ptobj.objectives", "ptobj.kernels", "ptobj.data_pipeline", "ptobj.models")
ALLOWED = {
    "ptobj.extras": (),
    "ptobj.objectives": ("ptobj.extras",),
    "ptobj.kernels": ("ptobj.extras",),
    "ptobj.data_pipeline": ("ptobj.extras", "ptobj.objectives"),
    "ptobj.models": ("ptobj.extras", "ptobj.kernels", "ptobj.objectives"),
    "ptobj.hf": ("ptobj.extras", "ptobj.objectives", "ptobj.data_pipeline"),
    "ptobj.recipes.engine": LOWER + ("ptobj.recipes",),
    "ptobj.recipes.export": LOWER + ("ptobj.recipes", "ptobj.recipes.engine"),
    "ptobj.recipes.evaluation": LOWER + ("ptobj.recipes", "ptobj.recipes.engine", "ptobj.recipes.export"),
    "ptobj.recipes.posttrain": LOWER + ("ptobj.recipes", "ptobj.recipes.engine", "ptobj.recipes.export",
                                        "ptobj.recipes.evaluation"),
    "ptobj.recipes.experiments": LOWER + ("ptobj.recipes", "ptobj.recipes.engine"),
    "ptobj.recipes.train": LOWER + ("ptobj.recipes", "ptobj.recipes.engine", "ptobj.recipes.evaluation"),
    "ptobj.recipes": ("ptobj.extras",),
    "ptobj.cli": ("ptobj",),
    "ptobj.__main__": ("ptobj.cli",),
    "ptobj": (),
}


def module_files(folder: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``*.py`` under ``folder`` (the package ``package``)."""
    out = {}
    for path in sorted(folder.rglob("*.py")):
        parts = [package, *path.relative_to(folder).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_names(path: Path, name: str) -> list[str]:
    """Every module name ``path`` (module ``name``) imports anywhere in its body, relative
    imports resolved, ``from a import b`` as ``a.b``."""
    here = name if path.stem == "__init__" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                   # relative: from the package folder up
                parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out += [f"{base}.{a.name}" for a in node.names]
    return out


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``import pkg.mod.attr`` -> ``pkg.mod``)."""
    modules = module_files(folder, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for t in imported_names(path, name):
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def group_of(module: str) -> str:
    """The layer a module belongs to: the longest key of ALLOWED it lies in."""
    best = max((g for g in ALLOWED if module == g or module.startswith(g + ".")), key=len, default=None)
    assert best is not None, f"{module}: in no layer of ALLOWED; place it"
    return best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        group = group_of(module)
        for t in sorted(targets):
            tg = group_of(t)
            if tg != group and tg not in ALLOWED[group]:
                out.append(f"{module} imports {t} ({group} may import only {', '.join(ALLOWED[group]) or 'nothing'})")
    return out


GRAPH = import_graph(ROOT / "ptobj", "ptobj")


def test_the_package_has_no_import_cycles():
    assert len(GRAPH) > 80 and GRAPH["ptobj.recipes.train"]       # the walk found the package and its imports
    found = cycles(GRAPH)
    assert not found, "import cycles: " + "; ".join(
        " <-> ".join(g) + " (" + ", ".join(f"{a} -> {sorted(GRAPH[a] & set(g))}" for a in g) + ")" for g in found)


def test_every_import_points_down_the_layers():
    assert not layer_violations(GRAPH), "\n".join(layer_violations(GRAPH))


def test_no_module_imports_a_bare_part_name():
    bare = [f"{path.relative_to(ROOT)}: imports {t}" for name, path in module_files(ROOT / "ptobj", "ptobj").items()
            for t in imported_names(path, name) if t.partition(".")[0] in PARTS]
    assert not bare, "\n".join(bare)


def test_an_upward_import_inside_a_function_is_found(tmp_path):
    pkg = tmp_path / "ptobj"
    (pkg / "recipes" / "engine").mkdir(parents=True)
    for f in ("__init__.py", "recipes/__init__.py", "recipes/engine/__init__.py", "recipes/export.py"):
        (pkg / f).write_text("")
    (pkg / "recipes" / "engine" / "runs.py").write_text("def f():\n    from ptobj.recipes.export import g\n")
    graph = import_graph(pkg, "ptobj")
    assert graph["ptobj.recipes.engine.runs"] == {"ptobj.recipes.export"}
    assert layer_violations(graph) == ["ptobj.recipes.engine.runs imports ptobj.recipes.export (ptobj.recipes.engine "
                                       f"may import only {', '.join(ALLOWED['ptobj.recipes.engine'])})"]


def test_a_function_local_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("from . import a\nimport pkg.b\n")
    (pkg / "d.py").write_text("from .c import a\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a", "pkg.b"},
                     "pkg.d": {"pkg.c"}}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    assert cycles(import_graph(pkg, "pkg")) == []
