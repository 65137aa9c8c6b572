"""The package's import graph keeps its layers: imports point down, Dagster stays on top.

Every import statement of every module is read from the source (module level, function
bodies and ``TYPE_CHECKING`` blocks alike), so a cycle cannot hide inside a function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "cdc_pipelines"

# Bottom to top; a unit may import units of its own layer or below, never above.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "cqltypes"}),
    frozenset({"config", "settings"}),
    frozenset({"rows"}),
    frozenset({"ring", "replicated_table"}),
    frozenset(
        {
            "scylla",
            "postgres",
            "kafka",
            "connect",
            "quality",
            "observability",
            "devstack",
            "config_draft",
        }
    ),
    frozenset({"reconcile"}),
    frozenset({"defs"}),
    frozenset({"definitions", "demo", "commands", "cli"}),
)
DAGSTER_UNITS = frozenset({"defs", "definitions", "demo"})
# Subcommands import what they run when they run, so `cdc-pipelines config validate`
# does not load Dagster; everywhere else imports of the package sit at the top.
LAZY_IMPORT_UNITS = frozenset({"commands", "cli"})


def unit_of(module: Path) -> str:
    """The package (or top-level module) a file belongs to: ``rows``, ``config``, ``defs``…"""
    return module.relative_to(PACKAGE_ROOT).parts[0].removesuffix(".py")


def imported_modules(tree: ast.Module) -> Iterator[tuple[ast.stmt, str, bool]]:
    """(statement, imported module, whether it sits inside a function) for each import."""

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.stmt, str, bool]]:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child, alias.name, in_function
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                yield child, child.module, in_function
                for alias in child.names:  # `from cdc_pipelines import rows`
                    yield child, f"{child.module}.{alias.name}", in_function
            yield from visit(child, nested)

    yield from visit(tree, False)


def package_edges() -> dict[tuple[str, str], list[str]]:
    """unit → imported unit, with where each import is written."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        unit = unit_of(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for statement, module, _ in imported_modules(tree):
            parts = module.split(".")
            if parts[0] != "cdc_pipelines" or len(parts) < 2:
                continue
            if (
                not (PACKAGE_ROOT / parts[1]).exists()
                and not (PACKAGE_ROOT / f"{parts[1]}.py").exists()
            ):
                continue
            target = parts[1]
            where = f"{path.relative_to(PACKAGE_ROOT.parent)}:{statement.lineno}"
            places = edges.setdefault((unit, target), []) if target != unit else []
            if where not in places:
                places.append(where)
    return edges


def layer_of(unit: str) -> int:
    for number, units in enumerate(LAYERS):
        if unit in units:
            return number
    raise AssertionError(
        f"cdc_pipelines/{unit} is in no layer; add it to LAYERS in {Path(__file__).name} "
        "and to the Architecture section of the README"
    )


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(p) for p in PACKAGE_ROOT.rglob("*.py")} - {"__init__"}
    for unit in sorted(units):
        layer_of(unit)


def test_imports_only_point_down_or_across() -> None:
    upward = [
        f"{unit} (layer {layer_of(unit)}) imports {target} (layer {layer_of(target)}) at "
        + ", ".join(places)
        for (unit, target), places in sorted(package_edges().items())
        if layer_of(target) > layer_of(unit)
    ]
    assert upward == []


def test_no_two_packages_import_each_other() -> None:
    edges = package_edges()
    graph: dict[str, set[str]] = {}
    for unit, target in edges:
        graph.setdefault(unit, set()).add(target)

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return False

    cycles = sorted(
        f"{unit} -> {target} ({', '.join(places)}) and back"
        for (unit, target), places in edges.items()
        if reaches(target, unit)
    )
    assert cycles == []


def test_library_packages_do_not_import_dagster() -> None:
    offenders = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        if unit_of(path) in DAGSTER_UNITS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for statement, module, _ in imported_modules(tree):
            if module.split(".")[0].startswith("dagster"):
                offenders.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{statement.lineno}")
    assert offenders == []


def test_package_imports_sit_at_module_level() -> None:
    hidden = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        if unit_of(path) in LAZY_IMPORT_UNITS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for statement, module, in_function in imported_modules(tree):
            if in_function and module.startswith("cdc_pipelines"):
                hidden.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{statement.lineno}")
    assert sorted(set(hidden)) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import cdc_pipelines.rows.canonical\n", [("cdc_pipelines.rows.canonical", False)]),
        (
            "def f():\n    from cdc_pipelines.reconcile import verify\n",
            [("cdc_pipelines.reconcile", True), ("cdc_pipelines.reconcile.verify", True)],
        ),
        (
            "if TYPE_CHECKING:\n    from cdc_pipelines.kafka.offsets import CatchUp\n",
            [
                ("cdc_pipelines.kafka.offsets", False),
                ("cdc_pipelines.kafka.offsets.CatchUp", False),
            ],
        ),
    ],
)
def test_the_graph_reader_sees_every_kind_of_import(
    source: str, expected: list[tuple[str, bool]]
) -> None:
    found = [(module, nested) for _, module, nested in imported_modules(ast.parse(source))]
    assert found == expected
