"""The import graph of the `dataspace` package, from the source text alone.

    python tools/import_graph.py            # one line per package-level edge, then circles
    python tools/import_graph.py --modules  # one line per module-level edge

Every `import` and `from ... import` naming one of our modules counts, wherever it
stands (top level, inside a function, under `if TYPE_CHECKING`), because a circle
dodged by a late import is still a circle for the reader. Nothing is imported or run.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dataspace"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a dotted import target) lies in."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def lazy_names(path: Path) -> dict[str, str]:
    """A package ``__init__``'s names exported on first use (``dataspace.lazy``): the
    module each comes from, read from its ``if TYPE_CHECKING:`` imports."""
    if path.name != "__init__.py" or "lazy.exports" not in path.read_text():
        return {}
    names: dict[str, str] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in node.body:
                if isinstance(imp, ast.ImportFrom) and imp.module:
                    names.update({a.asname or a.name: imp.module for a in imp.names})
    return names


def imports_of(
    mod: str, path: Path, known: dict[str, Path], typing_too: bool = True
) -> list[tuple[str, int, bool]]:
    """(target module, line, inside a function) for each import of our own modules."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if not typing_too and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(
                child.test
            ):
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in child.names] or [base]
            for t in targets:
                if t.split(".")[0] != PACKAGE:
                    continue
                hit = resolve(t, known)
                if hit and t != hit:  # `from package import name`: a lazy name's module
                    hit = lazy_names(known[hit]).get(t[len(hit) + 1 :], hit)
                if hit and hit != mod:
                    found.append((hit, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


#: libraries slow to import (seconds, or hundreds of milliseconds): a module may import
#: one of these, or one of our modules that does, inside a function, and only these
HEAVY = (
    "torch", "opacus", "flwr", "great_expectations", "matplotlib",
    "duckdb", "pyarrow", "fastapi", "uvicorn", "h5py", "mcap",
)  # fmt: skip


def top_level_libraries(path: Path) -> set[str]:
    """Third-party top-level packages a module imports when it is imported (not inside a
    function, not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name.split(".")[0] for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                found.add(child.module.split(".")[0])
            visit(child)

    visit(tree)
    return found


def heavy_modules() -> set[str]:
    """Our modules whose import pulls a :data:`HEAVY` library, directly or through ours."""
    known = modules()
    heavy = {m for m, p in known.items() if top_level_libraries(p) & set(HEAVY)}
    eager = {
        m: {t for t, _, late in imports_of(m, p, known, typing_too=False) if not late}
        for m, p in known.items()
    }
    # importing a module runs its packages' __init__ first
    for m in known:
        parts = m.split(".")
        eager[m] |= {".".join(parts[:i]) for i in range(1, len(parts))} & set(known) - {m}
    changed = True
    while changed:
        changed = False
        for m, targets in eager.items():
            if m not in heavy and targets & heavy:
                heavy.add(m)
                changed = True
    return heavy


def package_of(mod: str) -> str:
    """`dataspace.audit.log` -> `audit`; a root module is its own package."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def graph(level: str) -> dict[str, dict[str, list[tuple[str, int, bool]]]]:
    known = modules()
    edges: dict[str, dict[str, list[tuple[str, int, bool]]]]
    edges = defaultdict(lambda: defaultdict(list))
    for mod, path in known.items():
        for target, line, late in imports_of(mod, path, known):
            a, b = (mod, target) if level == "modules" else (package_of(mod), package_of(target))
            if a != b:
                edges[a][b].append((f"{mod}:{line}", line, late))
    return edges


def circles(edges: dict[str, dict[str, list]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                strong(w)
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

    nodes = set(edges) | {b for a in edges for b in edges[a]}
    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", action="store_true", help="module-level edges")
    args = ap.parse_args()
    edges = graph("modules" if args.modules else "packages")
    late = sum(1 for a in edges for b in edges[a] for _, _, is_late in edges[a][b] if is_late)
    total = sum(len(edges[a][b]) for a in edges for b in edges[a])
    for a in sorted(edges):
        for b in sorted(edges[a]):
            sites = edges[a][b]
            n_late = sum(1 for s in sites if s[2])
            print(f"{a} -> {b}  ({len(sites)} imports, {n_late} inside functions)")
    found = circles(edges)
    level = "modules" if args.modules else "packages"
    print(f"\n{total} imports between {level}, {late} inside functions")
    print(f"{len(found)} circles")
    for c in found:
        print("  circle: " + " <-> ".join(c))
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
