"""Imports point down, and there are no import cycles in ``src/tidings``.

The layers, lowest first (docs/architecture.md has the module map)::

    errors, clock, protocol/messages          the vocabulary
    protocol/*, auth, conflation              sans-I/O: bytes in, bytes out
    brokers/*, channels, control, config...   engines and configuration
    hub                                       fan-out of prepared bytes
    node, map_channels                        owns hub + engines; broker events land here
    session/*                                 one client, over any transport
    transports/*, server/feeds/*              adapters; subscribers that are not sessions
    server/*                                  the HTTP edge, routes, server API
    application, cli, the package itself      what users touch

A module may import its own layer or lower ones, never a higher one. Imports
under ``if TYPE_CHECKING:`` are for annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).parents[2] / "src" / "tidings"

LAYERS: dict[str, int] = {
    "tidings.errors": 0,
    "tidings.clock": 0,
    "tidings.version": 0,
    "tidings.protocol.messages": 0,
    "tidings.protocol": 1,
    "tidings.auth": 1,
    "tidings.conflation": 1,
    "tidings.brokers": 2,
    "tidings.channels": 2,
    "tidings.control": 2,
    "tidings.config": 2,
    "tidings.maps_config": 2,
    "tidings.jwks": 2,
    "tidings.metrics": 2,
    "tidings.tracing": 2,
    "tidings.logs": 2,
    "tidings.hub": 3,
    "tidings.hooks": 3,
    "tidings.node": 4,
    "tidings.map_channels": 4,
    "tidings.session": 5,
    "tidings.transports": 6,
    "tidings.server.feeds": 6,
    "tidings.listener": 6,
    "tidings.server": 7,
    "tidings.application": 8,
    "tidings.asyncapi": 8,
    "tidings.handlers": 8,
    "tidings.testing": 8,
    "tidings.loading": 8,
    "tidings.server.workers": 8,
    "tidings.cli": 8,
    "tidings.bench": 8,
    "tidings.__main__": 8,
    "tidings": 8,
}
"""Longest prefix wins: ``tidings.server.feeds.events`` is layer 6, ``tidings.server.api`` 7."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def layer_of(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module} has no layer: add it to LAYERS")


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The tidings modules a file imports when it runs (not under TYPE_CHECKING)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                for statement in node.orelse:
                    self.visit(statement)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names if alias.name.startswith("tidings"))

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if not node.module or not node.module.startswith("tidings"):
                return
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in SOURCE.rglob("*.py")}
    modules = set(paths)
    return {name: runtime_imports(path, modules) - {name} for name, path in paths.items()}


def test_every_module_has_a_layer() -> None:
    for module in import_graph():
        layer_of(module)


def test_imports_point_down() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = import_graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of dependencies.
    edges = {
        module: {t for t in targets if not (module.startswith(t + ".") and t in graph)}
        for module, targets in graph.items()
    }
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[str] = []

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(" -> ".join([*visiting[visiting.index(module) :], module]))
            return
        visiting.append(module)
        for target in sorted(edges.get(module, ())):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    assert not cycles, "\n".join(cycles)


def test_hub_and_protocol_know_nothing_of_sessions_brokers_or_sockets() -> None:
    graph = import_graph()
    for module in ("tidings.hub", "tidings.protocol.codec", "tidings.protocol.wire"):
        banned = {t for t in graph[module] if t.startswith(("tidings.session", "tidings.brokers"))}
        assert not banned, f"{module} imports {banned}"
    for path in (SOURCE / "protocol").glob("*.py"):
        assert "import asyncio" not in path.read_text(), f"{path.name} must stay sans-I/O"
