"""No import circle among the modules of `experiments/` (imports inside functions included): a circle
hidden in a function-level import is how `loggers` <-> `sweep` and `report` <-> `report_plots` survived
the layering test (tests/test_layers.py checks the direction between packages, not within one)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path, package: str) -> set[str]:
    """The modules of `package` that a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith(package + ".")}


def import_graph(package: str) -> dict[str, set[str]]:
    files = {".".join(path.relative_to(ROOT).with_suffix("").parts): path
             for path in (ROOT / package).rglob("*.py")}
    files = {name.removesuffix(".__init__"): path for name, path in files.items()}
    return {name: imported_modules(path, package) & set(files) - {name} for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per back edge met by a depth-first walk (empty: the graph has none)."""
    found, state = [], {}

    def walk(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                found.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                walk(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    return found


def test_experiments_has_no_import_circle():
    assert circles(import_graph("experiments")) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_check_finds_a_circle(graph, expected):
    assert circles(graph) == expected


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from experiments import report_plots\n")
    assert imported_modules(module, "experiments") == {"experiments.report_plots"}
