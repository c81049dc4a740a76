"""The house rules, checked on the import graph of ``include/`` (every import, also those inside functions).

The architecture, bottom to top. A module may import its own domain and any domain of a lower layer, never a
sibling domain of its own layer or anything above it:

    core                                   config, errors, the chat format, shared statistics, names
    warehouse · datasets · registry        the three stores: SQL warehouse, DVC dataset versions, MLflow
    curation · training                    logs -> datasets; datasets -> trained weights or API jobs
    evaluation                             scoring models on a test split (uses training's outputs)
    deployment · governance · serving      gate and aliases; when to train; the gateway
    pipeline                               one module per DAG: the only layer that orchestrates domains
    ftops.mcp_server                       the MCP server: tools for an assistant over the pipeline
    ftops_airflow                          Airflow glue for the DAG files
    ftops_dev                              simulator and benchmark baselines (tests, demo, benchmarks)
    ftops.cli                              the command line

The library never imports Airflow; DAG files never import the development package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "include"

LAYERS: list[tuple[str, ...]] = [
    ("ftops.core",),
    ("ftops.warehouse", "ftops.datasets", "ftops.registry"),
    ("ftops.curation", "ftops.training"),
    ("ftops.evaluation",),
    ("ftops.deployment", "ftops.governance", "ftops.serving"),
    ("ftops.pipeline",),
    ("ftops.mcp_server",),
    ("ftops_airflow",),
    ("ftops_dev",),
    ("ftops.cli",),
]
MAX_MODULE_LINES = 420  # "no module much over 400 lines"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(INCLUDE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in INCLUDE.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``path`` imports (``from a.b import c`` counts ``a.b.c`` if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in known:
                found.add(name)
    return found


def _domain(module: str) -> str:
    for layer in LAYERS:
        for domain in layer:
            if module == domain or module.startswith(domain + "."):
                return domain
    raise AssertionError(f"{module} belongs to no declared domain: add it to LAYERS")


def _layer(domain: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if domain in layer)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def test_every_module_belongs_to_a_domain() -> None:
    for module in _modules():
        if module != "ftops":  # the package root holds nothing
            _domain(module)


def test_no_import_goes_up_or_sideways() -> None:
    wrong = []
    for module, imported in _graph().items():
        if module == "ftops":
            continue
        here = _domain(module)
        for target in imported:
            if target == "ftops":
                continue
            there = _domain(target)
            if there != here and _layer(there) >= _layer(here):
                wrong.append(f"{module} -> {target} ({here} may not import {there})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", ["ftops", "ftops_dev"])
def test_library_never_imports_airflow(package: str) -> None:
    offenders = []
    for path in (INCLUDE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("airflow", "ftops_airflow")]
    assert not offenders


def test_dags_never_import_the_development_package() -> None:
    for path in [*(ROOT / "dags").glob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        assert "ftops_dev" not in path.read_text(), path


def test_modules_stay_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_the_graph_is_not_empty() -> None:
    """The checks above would pass on a graph the parser failed to read: make sure it read one."""
    graph = _graph()
    assert len(graph) > 30
    assert "ftops.core.config" in graph["ftops.pipeline.curate"]
    assert _domain("ftops.pipeline.curate") == "ftops.pipeline"
