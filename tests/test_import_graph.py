"""The import graph of batchadmin: no cycle between any two modules, and the layers point one way.

Read from the source with ``ast``, not by importing: every import counts, including those inside
functions (a function-level import that closes a circle is still a circle); imports under
``if TYPE_CHECKING:`` do not, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from django.test import SimpleTestCase

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "batchadmin"
# Modules of the pages: what people see and do. The engine and lib never import them.
PAGES = ("views", "forms", "urls", "admin", "filters", "templatetags", "management")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py") if "migrations" not in p.parts
    }


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The batchadmin modules ``name`` imports (``from pkg import mod`` names the module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    found.add(full)
                elif base in known:
                    found.add(base)
    found.discard(name)
    # Importing batchadmin.x.y runs batchadmin/__init__.py and batchadmin/x/__init__.py too,
    # but those hold nothing that imports back (the celery app), so they are not edges here.
    return {m for m in found if m != PACKAGE}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def is_page(module: str) -> bool:
    parts = module.split(".")
    return any(part in PAGES or part.endswith("_views") for part in parts[1:])


class ImportGraphTestCase(SimpleTestCase):
    def test_it_reads_function_level_imports(self):
        edges = graph()
        # engine/apps.py imports the worker inside ready(): the graph must see it.
        assert "batchadmin.engine.worker" in edges["batchadmin.engine.apps"]

    def test_no_two_modules_import_each_other_even_through_others(self):
        assert cycles(graph()) == []

    def test_it_finds_a_cycle_when_there_is_one(self):
        assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

    def test_lib_imports_nothing_of_batchadmin_but_lib(self):
        for name, deps in graph().items():
            if name.startswith(f"{PACKAGE}.lib."):
                outside = {d for d in deps if not d.startswith(f"{PACKAGE}.lib.")}
                assert outside <= {f"{PACKAGE}.celery"}, (name, outside)

    def test_the_engine_imports_no_page_and_nothing_of_the_alerts(self):
        for name, deps in graph().items():
            if name.startswith(f"{PACKAGE}.engine."):
                bad = {d for d in deps if is_page(d) or d.startswith(f"{PACKAGE}.alerts")}
                assert not bad, (name, bad)

    def test_models_import_no_engine_and_no_page(self):
        for name, deps in graph().items():
            if name.endswith(".models"):
                bad = {d for d in deps if is_page(d) or d.startswith(f"{PACKAGE}.engine")}
                assert not bad, (name, bad)
