"""The package's layering, read from its source: no import cycles, an estimator that is pure arithmetic, and no
module over MAX_MODULE_LINES lines.

The import graph is static: every `import` / `from … import` in a module's source (module level, inside
functions, and under `if TYPE_CHECKING:`, since a type named across layers couples them as much as a call),
resolved to the most specific module of `vramplan` it names. A package's `__init__` is a node like any other
module (`from vramplan.spec import TrainSpec` is an edge to `vramplan.spec`); the parent packages Python
runs on the way to a submodule are not edges (`vramplan/__init__` re-exports `estimate` from api, so counting
them would put the front door in every cycle).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import heavy_imports_after

PACKAGE = Path(__file__).resolve().parent.parent / "vramplan"
# What the estimator may not depend on: stores, the hub, config files, rendering, searches, the CLI, torch
ESTIMATOR_FORBIDDEN = (
    "vramplan.sources",
    "vramplan.trust",
    "vramplan.report",
    "vramplan.plan",
    "vramplan.cli",
    "vramplan.cli_options",
    "vramplan.measure",
    "vramplan.api",
)
# issue 15 and STYLE.md: a module past ~400 lines holds two concerns; split it along a seam (a concern that stands
# alone, named for what it is), not by cutting it in two
MAX_MODULE_LINES = 400


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (`pkg/__init__.py` is `pkg`)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name `path` imports (absolute; relative imports resolved against `module`), wherever the
    statement stands. `from a.b import c` yields `a.b.c` (c may be a submodule or a name in a.b)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific module of `modules` that `name` lies in, or None outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        targets = {resolve(n, modules) for n in imported_names(path, module)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_and_type_checking_imports():
    graph = import_graph()
    assert "vramplan.measure.harness" in graph["vramplan.cli.harness"]  # imported inside `measure`
    assert "vramplan.plan.fit" in graph["vramplan.report.fit"]  # FitTable, under TYPE_CHECKING
    assert "vramplan.spec" in graph["vramplan.spec.parallel"]  # a package __init__ is a node


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("module", sorted(m for m in module_files() if m.startswith("vramplan.estimator")))
def test_the_estimator_is_pure_arithmetic(module: str):
    """estimator/ reads no store, no hub, no config file and renders nothing: its vramplan imports stay out of
    sources/, trust/, report/, plan/, the CLI and measure/, and outside vramplan it uses the standard library."""
    modules = module_files()
    names = imported_names(modules[module], module)
    inside = {resolve(n, modules) for n in names} - {None}
    assert sorted(m for m in inside if m.startswith(ESTIMATOR_FORBIDDEN)) == []
    outside = {n.split(".")[0] for n in names if not n.startswith("vramplan")}
    assert sorted(outside - set(sys.stdlib_module_names)) == []


def test_json_and_help_import_no_renderer_and_no_store():
    """`estimate --json` and `--help` never load rich (tables only), yaml (YAML inputs only) or platformdirs
    (the calibration store's default path; VRAMPLAN_STORE is set in tests, as a user may set it)."""
    lazy = ("rich", "yaml", "platformdirs")
    assert heavy_imports_after(["estimate", "llama-2-7b", "--json"], modules=lazy) == []
    assert heavy_imports_after(["--help"], modules=lazy) == []


def module_lines() -> dict[str, int]:
    """Lines of each module of the package, as `wc -l` counts them."""
    return {module: path.read_bytes().count(b"\n") for module, path in module_files().items()}


def test_the_line_count_reads_every_module():
    """The limit below is checked on the whole package, not an empty or truncated listing."""
    lines = module_lines()
    assert "vramplan.estimator.alloc_events" in lines
    assert "vramplan.spec.train" in lines
    assert len(lines) > 100
    assert max(lines.values()) > MAX_MODULE_LINES // 2


def test_no_module_is_over_the_line_limit():
    over = {module: n for module, n in module_lines().items() if n > MAX_MODULE_LINES}
    assert over == {}, f"over {MAX_MODULE_LINES} lines (split along a seam): {over}"
