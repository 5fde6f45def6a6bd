"""Dependencies point one way (DESIGN.md, "Packages"): a test that fails if a circle
of our own modules or an upward import comes back.

Reads the source with ``tools/import_graph.py`` (imports anywhere in a module count,
inside functions too); nothing is imported.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
assert _spec and _spec.loader
import_graph = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = import_graph
_spec.loader.exec_module(import_graph)

#: DESIGN.md's table, bottom first: a package may import only packages of a lower rank
#: (and its own modules). Packages of one rank do not import each other.
RANK = {
    "errors": 0,
    "net": 1,
    "lazy": 0,
    "accountant": 0,
    "audit": 1,
    "schema": 2,
    "site": 3,
    "auth": 4,
    "policy": 4,
    "quality": 5,
    "connectors": 6,
    "federated": 6,
    "assurance": 7,
    "hub": 8,
    "demo": 9,
    "cli": 10,
    "__main__": 11,
}


def test_every_package_has_a_rank() -> None:
    packages = {import_graph.package_of(m) for m in import_graph.modules()} - {"dataspace"}
    assert packages <= set(RANK), f"add {sorted(packages - set(RANK))} to RANK and DESIGN.md"


def test_no_upward_or_sideways_import() -> None:
    edges = import_graph.graph("packages")
    wrong = [
        f"{a} -> {b} at {', '.join(site for site, _, _ in edges[a][b])}"
        for a in edges
        for b in edges[a]
        if a != "dataspace" and b != "dataspace" and RANK[b] >= RANK[a]
    ]
    assert not wrong, "imports against DESIGN.md's direction:\n" + "\n".join(wrong)


def test_no_circle_of_modules() -> None:
    found = import_graph.circles(import_graph.graph("modules"))
    assert not found, "circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_sees_a_circle() -> None:
    """The checker itself: a made-up circle is found, a chain is not."""
    assert import_graph.circles({"a": {"b": []}, "b": {"a": []}}) == [["a", "b"]]
    assert import_graph.circles({"a": {"b": []}, "b": {"c": []}}) == []


def test_imports_inside_functions_are_for_heavy_libraries_only() -> None:
    """An import of ours inside a function defers a heavy library (torch, Flower, Great
    Expectations, DuckDB, ...: ``import_graph.HEAVY``), never dodges a circle, and says
    so in a comment just above it. The CLI defers every area but the lightest so that
    ``--help`` and argument errors come first (its package docstring says so once)."""
    known = import_graph.modules()
    heavy = import_graph.heavy_modules()
    wrong = []
    for mod, path in known.items():
        lines = path.read_text().splitlines()
        for target, line, late in import_graph.imports_of(mod, path, known):
            if not late:
                continue
            if target not in heavy:
                wrong.append(f"{mod}:{line} imports {target} (light) inside a function")
            elif not mod.startswith("dataspace.cli"):
                near = " ".join(lines[max(0, line - 4) : line]).lower()
                if "heavy" not in near:
                    wrong.append(f"{mod}:{line} imports {target} late without a 'heavy' comment")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_audit_package_needs_only_cryptography() -> None:
    """An auditor's tools run anywhere: ``dataspace.audit`` imports the standard library,
    cryptography and rfc8785 (and our bottom modules), nothing else, anywhere in it."""
    allowed = set(sys.stdlib_module_names) | {"cryptography", "rfc8785", "dataspace"}
    wrong = {}
    for mod, path in import_graph.modules().items():
        if mod.startswith("dataspace.audit"):
            libs = _all_libraries(path) - allowed
            if libs:
                wrong[mod] = sorted(libs)
    assert not wrong, wrong


def _all_libraries(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found
