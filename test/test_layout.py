"""The shape of the package, as docs/DESIGN.md draws it: imports only go down the flow, no
import circles, no file over 500 lines, no function over 80 lines.

Read from the source with ``ast`` (nothing is imported), so a move that breaks the layering
fails here before anyone reads the diff.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segfast_ros"

#: The rooms in the order of the flow: a room may import the rooms before it, never one after.
#: Rooms that share a rank (the two adapters) may not import each other either.
ROOMS: tuple[tuple[str, ...], ...] = (
    ("spec", "profiles", "topics"),
    ("runtime",),
    ("modeling",),
    ("export",),
    ("model_args",),
    ("masks",),
    ("segany",),
    ("segevery",),
    ("tracking",),
    ("spatial",),
    ("pipeline",),
    ("ros", "replay"),
    ("bench",),
    ("demo",),
    ("distill",),
    ("fleet",),
    ("cli",),
)

#: Imports against the flow that are there on purpose, (importer, imported room).
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        # The development backend: runs the torch model behind the runtime's interface, and
        # imports torch and modeling only when it is asked for.
        ("segfast_ros.runtime.torch_backend", "modeling"),
    }
)

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "segfast_ros" else None


def _rank(room: str) -> int:
    for rank, rooms in enumerate(ROOMS):
        if room in rooms:
            return rank
    raise AssertionError(f"room {room!r} is not in test_layout.ROOMS: place it in the flow")


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules that ``module`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import mod`` imports the module; ``from mod import name``, the module
            names = [
                f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name != "segfast_ros":
                out.add(name)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_room_has_a_place_in_the_flow() -> None:
    for module in MODULES:
        room = _room(module)
        if room is not None:
            _rank(room)


def test_imports_only_go_down_the_flow() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        room = _room(module)
        for target in targets:
            other = _room(target)
            if room is None or other is None or other == room:
                continue
            if _rank(other) >= _rank(room) and (module, other) not in ALLOWED:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the flow (see docs/DESIGN.md):\n" + "\n".join(wrong)


def test_no_import_circles() -> None:
    """Depth-first search over module imports; any back edge is a circle."""
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_are_small(module: str) -> None:
    path = MODULES[module]
    source = path.read_text()
    lines = source.count("\n")
    assert lines <= MAX_FILE_LINES, f"{path.name}: {lines} lines (at most {MAX_FILE_LINES})"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"
