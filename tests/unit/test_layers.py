"""The package's layers (ARCHITECTURE.md): each subpackage imports only from those below it.

Data flows one way, accept → parse → decide → resolve/filter → connect → splice → record, and the
import graph follows: a module that imported one from a higher layer would tie the sans-IO parser
to the config, or the policy to the sockets. The check reads the sources with `ast`, so it costs
nothing at run time and catches imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import connectproxy

# Lowest first. A subpackage may import from its own layer's modules and from any layer before it.
LAYERS: list[tuple[str, ...]] = [
    ("outcome",),
    ("wire",),
    ("matching",),
    ("config",),
    ("policy", "credentials"),
    ("observe",),
    ("net",),
    ("tunnel",),
    ("server",),
    ("configfile",),
    ("process",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ROOT_MODULES = {"__init__", "__main__"}


def _package_sources() -> list[Path]:
    root = Path(connectproxy.__file__).parent
    return sorted(root.rglob("*.py"))


def _part_of(module: str) -> str | None:
    """`connectproxy.wire.http` -> `wire`; None outside the package or for its root modules."""
    parts = module.split(".")
    if parts[0] != "connectproxy" or len(parts) < 2:
        return None
    return None if parts[1] in ROOT_MODULES else parts[1]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_every_subpackage_has_a_layer() -> None:
    root = Path(connectproxy.__file__).parent
    subpackages = {p.parent.relative_to(root).parts[0] for p in root.glob("*/__init__.py")}
    modules = {p.stem for p in root.glob("*.py")} - ROOT_MODULES
    assert subpackages | modules == set(RANK)


def test_no_module_imports_from_a_higher_layer() -> None:
    root = Path(connectproxy.__file__).parent
    upward: list[str] = []
    for path in _package_sources():
        relative = path.relative_to(root)
        own = relative.parts[0].removesuffix(".py")
        if own in ROOT_MODULES:
            continue
        for imported in _imports(path):
            other = _part_of(imported)
            if other is not None and other in RANK and RANK[other] > RANK[own]:
                upward.append(f"{relative} imports {imported} ({other} is above {own})")
    assert upward == []


def test_no_import_cycle_between_modules() -> None:
    root = Path(connectproxy.__file__).parent
    names = {
        ".".join(("connectproxy", *p.relative_to(root).with_suffix("").parts)): p
        for p in _package_sources()
    }
    graph = {
        name: {i for i in _imports(path) if i in names and i != name}
        for name, path in names.items()
    }
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle.extend([*trail, node, nxt])
                return True
            if nxt not in state and visit(nxt, [*trail, node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if node not in state and visit(node, []):
            break
    assert cycle == []
