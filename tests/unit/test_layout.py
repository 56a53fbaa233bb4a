"""The shape of the code: the pure decision layer stays readable in small pieces."""

from __future__ import annotations

import ast
from pathlib import Path

import hybrid_compute.plan

MAX_FUNCTION_LINES = 80


def test_plan_functions_are_short() -> None:
    """No function in plan/ is longer than 80 lines, def line to last line."""
    package = Path(hybrid_compute.plan.__file__).parent
    too_long = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "functions over 80 lines: " + ", ".join(too_long)


def test_plan_keeps_no_module_level_caches() -> None:
    """Pure code keeps nothing between calls: what a plan hands to the next travels
    in the memo its caller owns."""
    package = Path(hybrid_compute.plan.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            target = node.target if isinstance(node, ast.AnnAssign) else None
            value = node.value if isinstance(node, ast.AnnAssign | ast.Assign) else None
            if isinstance(value, ast.Dict) and not value.keys and (
                    target is None or isinstance(target, ast.Name)):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, "empty module-level dicts (caches?): " + ", ".join(found)
