"""The package keeps the layers of docs/architecture.md: every import (at module level or inside a
function) runs from a room to a room on a lower layer or stays in its room, no two modules import each
other in a cycle, and every module lives in a room of the table. The table is read from the document."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitrobust"
DOC = ROOT / "docs" / "architecture.md"


def layer_table(text: str) -> dict[str, int]:
    """{room: layer} from the ```layers block: lines 'N room room ...'."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    table = {}
    for line in block.group(1).splitlines():
        number, *rooms = line.split()
        for room in rooms:
            assert room not in table, f"room {room} is listed twice"
            table[room] = int(number)
    return table


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(mods: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(importing module, imported vitrobust module, line) for every import statement anywhere in a file.
    `from pkg import name` counts as importing pkg.name when that is a module, else pkg."""
    edges = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                if target == "vitrobust" or target.startswith("vitrobust."):
                    while target not in mods and "." in target:
                        target = target.rsplit(".", 1)[0]
                    edges.append((name, target, node.lineno))
    return edges


def upward(edges, table) -> list[str]:
    bad = []
    for src, dst, line in edges:
        a, b = room(src), room(dst)
        if a != b and not table[b] < table[a]:
            bad.append(f"{src}:{line} imports {dst} ({a} is on layer {table[a]}, {b} on layer {table[b]})")
    return bad


def cycles(edges) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for src, dst, _ in edges:
        if src != dst:
            graph.setdefault(src, set()).add(dst)
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


@pytest.fixture(scope="module")
def table() -> dict[str, int]:
    return layer_table(DOC.read_text())


def test_every_module_is_in_a_room_of_the_table(table):
    unplaced = sorted({room(m) for m in modules()} - set(table))
    assert not unplaced, f"rooms missing from docs/architecture.md's layer table: {unplaced}"


def test_no_import_runs_upward(table):
    bad = upward(imports(modules()), table)
    assert not bad, "imports against the layers of docs/architecture.md:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(imports(modules()))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checker_finds_upward_imports_cycles_and_function_level_imports(tmp_path):
    pkg = tmp_path / "vitrobust"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("from vitrobust.low import a\n")
    (pkg / "low" / "a.py").write_text("def f():\n    from vitrobust import high\n")  # upward, inside a function
    (pkg / "low" / "b.py").write_text("from vitrobust.low import c\n")
    (pkg / "low" / "c.py").write_text("from . import b\n")  # relative, closes a cycle
    (pkg / "high.py").write_text("import vitrobust.low.a\n")
    edges = imports(modules(pkg))
    table = {"low": 1, "high": 2, "__init__": 3}
    assert upward(edges, table) == ["vitrobust.low.a:2 imports vitrobust.high (low is on layer 1, high on layer 2)"]
    assert sorted(cycles(edges)) == [["vitrobust.high", "vitrobust.low.a", "vitrobust.high"],  # via the function
                                     ["vitrobust.low.b", "vitrobust.low.c", "vitrobust.low.b"]]
    assert layer_table("```layers\n0 errors\n1 a b\n```") == {"errors": 0, "a": 1, "b": 1}
