"""Imports point down the layers (docs/architecture.md): no package below the composition root
imports `franka_rl`, and the teleop device modules form no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOWER_PACKAGES = ("robot_env", "sim", "teleop", "agent", "reward_classifier")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth (function-local imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_no_lower_package_imports_the_composition_root():
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for package in LOWER_PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module == "franka_rl" or module.startswith("franka_rl.")
    ]
    assert offenders == []


def test_teleop_modules_import_no_cycle():
    modules = {path.stem: path for path in (REPO / "teleop").glob("*.py") if path.stem != "__init__"}
    graph = {
        name: {module.split(".")[1] for _, module in imported_modules(path)
               if module.startswith("teleop.") and module.split(".")[1] in modules}
        for name, path in modules.items()
    }

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = sorted(name for name in graph if reaches(name, name, {name}))
    assert cycles == [], f"teleop modules in an import cycle: {cycles} ({graph})"


def test_the_check_sees_function_local_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from franka_rl.cli import main\n")
    assert imported_modules(sample) == [(2, "franka_rl.cli")]
