"""The import structure (docs/design.md, "Parts and dependencies"), checked on the source: every import of every
module, including lazy imports inside functions and type-only imports, since each one is a dependency of the code.

* no import cycle inside ``alignbench/``;
* the contract ``alignbench/api.py`` imports no other harness module except ``config`` and ``errors``;
* the harness (``alignbench/``, the report included) never imports ``methods/`` or ``tasks/``;
* methods and tasks never import each other, and a method never imports another method (tasks may share the
  private ``tasks/_*.py`` modules, which the registry does not load as tasks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> the package it installs as (pyproject.toml: package-dir)
PACKAGES = {"alignbench": "alignbench", "methods": "alignbench.methods", "tasks": "alignbench.tasks"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts = PACKAGES[parts[0]].split(".") + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in ``path`` (relative imports resolved; ``from X import Y`` counts
    ``X.Y`` when it is a module, else ``X``)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - node.level + 1]
                mod = ".".join(prefix + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a package path: the deepest project module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    known = project_modules()
    return {n: imports_of(n, p, known) for n, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def top(name: str) -> str:
    """The part a module belongs to: "methods", "tasks", or "alignbench" (the harness, report included)."""
    for part in ("methods", "tasks"):
        if name == f"alignbench.{part}" or name.startswith(f"alignbench.{part}."):
            return part
    return "alignbench"


def test_the_graph_sees_known_imports():
    g = graph()  # a parser that missed imports would pass every rule below: check it sees some
    assert "alignbench.config" in g["alignbench.api"]
    assert "alignbench.trainer" in g["alignbench.runner"]  # a lazy import inside a function
    assert "alignbench.report.schema" in g["alignbench.report.winrates"]  # a relative import
    assert "alignbench.tasks._presets" in g["alignbench.tasks.imdb"]  # a plugin's import of a shared private module
    assert top("alignbench.methods.dpo") == "methods" and top("alignbench.report") == "alignbench"


def test_no_import_cycle_in_the_harness():
    g = graph()
    harness = {n: {m for m in deps if top(m) == "alignbench"} for n, deps in g.items() if top(n) == "alignbench"}
    assert cycles(harness) == []


def test_the_contract_imports_only_config_and_errors():
    assert graph()["alignbench.api"] <= {"alignbench.config", "alignbench.errors"}


def test_the_harness_never_imports_methods_or_tasks():
    bad = {n: sorted(m for m in deps if top(m) in ("methods", "tasks"))
           for n, deps in graph().items() if top(n) == "alignbench"}
    assert {n: d for n, d in bad.items() if d} == {}


def test_methods_and_tasks_never_import_each_other():
    bad = []
    for n, deps in graph().items():
        for m in deps:
            if top(n) == "methods" and top(m) in ("methods", "tasks") and m != "alignbench.methods":
                bad.append((n, m))
            if top(n) == "tasks" and (top(m) == "methods" or (top(m) == "tasks" and m != "alignbench.tasks"
                                                                 and not m.split(".")[-1].startswith("_"))):
                bad.append((n, m))
    assert bad == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_plugins_install_inside_the_alignbench_namespace(tmp_path):
    """A folder holding its own tasks.py and methods/ neither shadows alignbench's plugins nor is shadowed."""
    import os
    import subprocess
    import sys

    (tmp_path / "tasks.py").write_text("raise RuntimeError('the local tasks.py was imported')\n")
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "__init__.py").write_text("raise RuntimeError('the local methods/ was imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "alignbench", "list"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "dpo" in out.stdout and "exact" in out.stdout and "Traceback" not in out.stderr
    import alignbench.methods.dpo

    assert Path(alignbench.methods.dpo.__file__).resolve() == ROOT / "methods" / "dpo.py"
