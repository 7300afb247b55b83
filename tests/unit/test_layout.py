"""The shape of the package: data flows one way, and modules talk through public names.

- ``common`` imports neither daemon, ``pipelines`` neither daemon, the forwarder nothing of
  the aggregator and the aggregator nothing of the forwarder;
- the module import graph has no cycle;
- no module imports another module's private (underscore) name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "logferry"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> Iterator[tuple[str, str | None]]:
    """(imported module, imported name or None) for every logferry import in ``name``,
    including those inside functions (lazy imports count as edges too)."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("logferry"):
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level:
                base = (
                    name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
                )
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module])
            if module.startswith("logferry"):
                for alias in node.names:
                    if f"{module}.{alias.name}" in MODULES:
                        yield f"{module}.{alias.name}", None
                    else:
                        yield module, alias.name


def _edges() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in _imports(name) if target in MODULES and target != name}
        for name in MODULES
    }


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("logferry.common", ("logferry.forwarder", "logferry.aggregator", "logferry.operator")),
        ("logferry.pipelines", ("logferry.forwarder", "logferry.aggregator", "logferry.operator")),
        ("logferry.forwarder", ("logferry.aggregator", "logferry.operator")),
        ("logferry.aggregator", ("logferry.forwarder", "logferry.operator")),
    ],
)
def test_data_flows_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    crossing = sorted(
        f"{name} -> {target}"
        for name, targets in _edges().items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
        if target.startswith(forbidden)
    )
    assert crossing == []


def test_the_import_graph_has_no_cycle() -> None:
    edges = _edges()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            # A package's __init__ importing its own submodules is how a package re-exports.
            if name != target and target.startswith(name + "."):
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_module_imports_a_private_name() -> None:
    private = sorted(
        f"{name}: {module}.{imported}"
        for name in MODULES
        for module, imported in _imports(name)
        if imported is not None and imported.startswith("_") and not imported.endswith("__")
    )
    assert private == []
