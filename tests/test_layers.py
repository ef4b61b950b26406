"""The import contract of src/ and benches/ (docs/architecture.md): no import
cycle, and no module imports one of a layer above its own.

The graph is read from the sources (every import statement, those inside
functions too), so a lazy import counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# From the top down; a module may import its own layer and those below it.
LAYERS = [
    # command lines, the server's too
    ["rdirdb.cli", "rdirdb.__main__", "rdirdb.demo", "rdirdb.tools", "rdirdb.server.cli", "rdirdb.server.__main__"],
    ["rdirdb.server"],
    ["rdirdb.rdir.client"],
    ["rdirdb.rdir.dispatcher", "rdirdb.rdir.repair"],
    ["rdirdb.rdir.embedded", "rdirdb.rdir.remote"],
    ["rdirdb.rdir.backend", "rdirdb.rdir.registry"],
    ["rdirdb.rdir.store"],
    ["rdirdb._", "rdirdb.errors", "rdirdb.progress"],  # the native modules, errors, helpers
]
# SharedBase stands beside rdir: it may import the bottom layer only, and rdir
# nothing of it.
SHAREDBASE = "rdirdb.sharedbase"
BOTTOM = len(LAYERS) - 1
# Packages whose __init__ only names their parts (rdirdb's imports its facades lazily).
FACADES = {"rdirdb", "rdirdb.rdir"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    for path in (ROOT / "benches").glob("*.py"):
        found[f"benches.{path.stem}"] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` (and native ones) that ``path`` imports."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known
                       or alias.name.startswith("_") and base == "rdirdb" else base for alias in node.names]
        else:
            continue
        for target in targets:
            if name.startswith("benches.") and f"benches.{target}" in known:
                target = f"benches.{target}"
            if target in known or target.startswith("rdirdb._"):
                out.add(target)
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") or p.endswith("_") and module.startswith(p)
               for p in prefixes):
            return i
    return None


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_layer_imports_one_above_it():
    wrong = []
    for module, targets in _graph().items():
        if module.startswith("benches.") or module in FACADES:
            continue  # the benchmarks and the package's lazy facade stand above everything
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if module.startswith(SHAREDBASE):
                if not (target.startswith(SHAREDBASE) or there == BOTTOM):
                    wrong.append((module, target))
            elif target.startswith(SHAREDBASE):
                if here != 0:
                    wrong.append((module, target))
            elif here is None or there is None:
                wrong.append((module, target, "not in a layer"))
            elif there < here:
                wrong.append((module, target))
    assert wrong == []


def test_every_module_is_in_a_layer():
    """A new module must be placed in the contract above."""
    unplaced = [m for m in _graph() if not m.startswith(("benches.", SHAREDBASE)) and m not in FACADES
                and _layer(m) is None]
    assert unplaced == []
