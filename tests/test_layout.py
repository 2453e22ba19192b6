"""The layout's rules, checked on every import statement of the package (module level and inside
functions): the library never imports the lab; the lab's optional dependencies stay out of the
library; no private name crosses a module; no import cycle outside ``peftlab.models``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "peftlab"
LAB = "peftlab.lab"
ENTRY_POINTS = {"peftlab.__main__"}  # ``python -m peftlab`` runs the lab's command line
LAB_ONLY_LIBRARIES = {"optuna", "matplotlib", "bm25s", "peft", "ray", "submitit"}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) of every import statement in the file that runs (those under
    ``if TYPE_CHECKING:`` only name types for a checker: no arrow at run time)."""
    out = []

    def visit(node):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def _targets(module: str, names: list[str]) -> set[str]:
    """The peftlab modules an import statement depends on (a submodule named in ``from pkg import x``)."""
    found = {module} if module in MODULES else set()
    found |= {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
    if found - {module} and all(f"{module}.{n}" in MODULES for n in names):
        found.discard(module)  # only submodules were named: the package's __init__ is not what is used
    return found


def _graph() -> dict[str, set[str]]:
    return {m: set().union(*(_targets(t, names) for t, names, _ in _imports(p))) - {m} for m, p in MODULES.items()}


def test_the_library_never_imports_the_lab_or_its_optional_dependencies():
    bad = []
    for module, path in MODULES.items():
        if module == LAB or module.startswith(LAB + ".") or module in ENTRY_POINTS:
            continue
        for target, _, line in _imports(path):
            if target == LAB or target.startswith(LAB + "."):
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
            if target.split(".")[0] in LAB_ONLY_LIBRARIES:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target} (a lab-only dependency)")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module():
    bad = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"), *(p for p in (ROOT / "tests").rglob("*.py") if "fixtures" not in p.parts)]:
        for target, names, line in _imports(path):
            if target.startswith(("peftlab", "test_", "conftest", "tiny_runs", "bench_helpers")):
                bad += [f"{path.relative_to(ROOT)}:{line}: {target}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_outside_models():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    outside = [c for c in cycles if not all(m.startswith("peftlab.models") for m in c)]
    assert not outside, outside


@pytest.mark.parametrize("rule", ["lab", "private", "cycle"])
def test_the_rules_catch_what_they_forbid(rule, tmp_path, monkeypatch):
    """Each rule fails on a made-up module that breaks it."""
    fake = tmp_path / "peftlab"
    (fake / "lab").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "lab" / "__init__.py").write_text("")
    (fake / "lab" / "tool.py").write_text("")
    (fake / "a.py").write_text({"lab": "def f():\n    from peftlab.lab import tool\n",
                                "private": "from peftlab.b import _hidden\n",
                                "cycle": "import peftlab.b\n"}[rule])
    (fake / "b.py").write_text("import peftlab.a\n_hidden = 1\n" if rule == "cycle" else "_hidden = 1\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    monkeypatch.setattr(__import__(__name__), "MODULES", {_module(p): p for p in fake.rglob("*.py")})
    check = {"lab": test_the_library_never_imports_the_lab_or_its_optional_dependencies,
             "private": test_no_private_name_crosses_a_module, "cycle": test_no_import_cycle_outside_models}[rule]
    with pytest.raises(AssertionError):
        check()
