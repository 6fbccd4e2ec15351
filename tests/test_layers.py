"""The layers import downward only: offrl -> experiments -> algorithms -> envs. `envs` imports
none of the others, not even inside a function; `algorithms` never imports `experiments` or
`offrl`; `experiments` never imports `offrl` (the public Python module, the topmost layer)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"envs": ("algorithms", "experiments", "offrl"), "algorithms": ("experiments", "offrl"),
             "experiments": ("offrl",)}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages imported anywhere in the file (module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer):
    upward = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & set(FORBIDDEN[layer]))
              for path in sorted((ROOT / layer).rglob("*.py"))}
    assert {file: names for file, names in upward.items() if names} == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from experiments.generate import generate\n")
    assert imported_packages(module) == {"experiments"}
