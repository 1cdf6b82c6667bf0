"""The package's import layers, read statically from the source (every ``import``, at any depth).

Two rules:
- library code (``molequi.models``, ``calculators``, ``data``, ``nn``, ``so3``, ``graph``, ``qc``,
  ``simulate``, ``tasks``, ``interop``) never imports the trainer (``molequi.train``) or the command line
  (``molequi.cli``);
- the module graph of ``molequi`` has no cycle (imports inside functions count: a lazy import only hides a
  cycle, it does not remove it).

``import a.b.c`` and ``from a.b import c`` are edges to the deepest *module* they name (``a.b.c`` when it is
a module, else ``a.b``); importing a submodule does not count as importing its parent package's
``__init__`` (Python runs it, but it is the package's table of contents, not a dependency of meaning).
"""

from __future__ import annotations

import ast
from pathlib import Path

import molequi

PACKAGE = Path(molequi.__file__).resolve().parent
LIBRARY = ("models", "calculators", "data", "nn", "so3", "graph", "qc", "simulate", "tasks", "interop")
FORBIDDEN = ("molequi.train", "molequi.cli")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The deepest module of the package that ``name`` (a dotted import target) names, else None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_map(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its source, relative imports resolved)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
                # `from pkg import submodule` names the submodule; `from mod import func` names mod
                resolved = [c for c in candidates[:-1] if c in modules]
                candidates = resolved or [base]
            else:
                continue
            for target in candidates:
                hit = _resolve(target, modules)
                if hit is not None and hit != name:
                    targets.add(hit)
        graph[name] = targets
    return graph


def layer_violations(graph: dict[str, set[str]], library=LIBRARY, forbidden=FORBIDDEN) -> list[str]:
    """'a imports b' for every library module a importing a forbidden layer b."""
    prefixes = tuple(f"molequi.{p}" for p in library)
    out = []
    for module, targets in sorted(graph.items()):
        if not any(module == p or module.startswith(p + ".") for p in prefixes):
            continue
        for target in sorted(targets):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                out.append(f"{module} imports {target}")
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


# ------------------------------------------------------------------------------------------------- checks
def test_the_checker_catches_a_forbidden_import_and_a_cycle():
    """The checker on synthetic graphs: a model importing the trainer, a 2-module and a 3-module cycle."""
    bad = {"molequi.models.mace": {"molequi.train.run", "molequi.nn.mlp"}, "molequi.train.run": set(),
           "molequi.nn.mlp": set(), "molequi.cli.main": {"molequi.train.run"}}
    assert layer_violations(bad) == ["molequi.models.mace imports molequi.train.run"]
    assert find_cycles(bad) == []
    cyclic = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert find_cycles(cyclic) == [["a", "b"], ["c", "d", "e"]]


def test_the_import_map_sees_function_level_and_relative_imports(tmp_path):
    """A synthetic package: `from molequi.train import x` inside a function under models/ is found."""
    pkg = tmp_path / "molequi"
    for sub in ("models", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "run.py").write_text("from ..models import mace\n")
    (pkg / "models" / "mace.py").write_text("def f():\n    from molequi.train import run\n    return run\n")
    graph = import_map(pkg)
    assert graph["molequi.models.mace"] == {"molequi.train.run"}
    assert graph["molequi.train.run"] == {"molequi.models.mace"}
    assert layer_violations(graph) == ["molequi.models.mace imports molequi.train.run"]
    assert find_cycles(graph) == [["molequi.models.mace", "molequi.train.run"]]


def test_library_never_imports_the_trainer_or_the_cli():
    assert layer_violations(import_map()) == []


def test_no_import_cycles_in_the_package():
    graph = import_map()
    assert len(graph) > 50, "the walk found too few modules"
    assert find_cycles(graph) == []
