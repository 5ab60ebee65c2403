"""The dependency direction of ../DESIGN.md, checked on every import statement (function-level
ones included): `core` <- `toy_problems` <- `proofs_numeric`, `benchmarks` <- `notebooks`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "toy_problems", "proofs_numeric", "benchmarks", "notebooks")
ALLOWED = {  # what each package may import from the others
    "core": set(),
    "toy_problems": {"core"},
    "proofs_numeric": {"core", "toy_problems"},
    "benchmarks": {"core", "toy_problems"},
    "notebooks": {"core", "toy_problems", "proofs_numeric", "benchmarks"},
}
# The one sideways import: the Nash-MTL claim compares with the reference-style cvxpy solver that
# the performance report also times (docs/DECISIONS.md, "Result files and the numerical claims").
EXCEPTIONS = {("proofs_numeric/nash_transforms.py", "benchmarks.perf.nash_solver")}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        ):  # relative ones stay in their package
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        for module in _imports(path):
            top = module.split(".")[0]
            if (
                top in PACKAGES
                and top != package
                and top not in ALLOWED[package]
                and (where, module) not in EXCEPTIONS
            ):
                wrong.append(f"{where} imports {module}")
    assert not wrong, "imports against the dependency direction:\n" + "\n".join(wrong)


def test_the_check_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from benchmarks.harness import runs\n    import notebooks.support\n"
    )
    assert _imports(source) == {"benchmarks.harness", "notebooks.support"}
