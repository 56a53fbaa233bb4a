"""The layering contract of the package, read from the source with :mod:`ast`.

``api``, ``plan`` and ``render`` are pure: they import no I/O layer of the operator and
no client, server, socket or process module, so the plan can run and be tested without
a cluster. The top-level packages (and modules) import each other without cycles. Imports under
``if TYPE_CHECKING:`` run only for the type checker and are not counted.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "operator" / "hybrid_compute"

PURE_PACKAGES = ("api", "plan", "render")
FORBIDDEN_IN_PURE = (
    "hybrid_compute.control", "hybrid_compute.server", "kubernetes", "kopf", "urllib",
    "aiohttp", "socket", "http", "subprocess",
)


@dataclass(frozen=True)
class Import:
    """One import statement's target in a module of the package."""

    module: str
    """The importing module, e.g. ``hybrid_compute.api.common``."""
    target: str
    """What it imports: a module, or ``module.name`` for ``from module import name``."""
    line: int

    def __str__(self) -> str:
        return f"{self.module} imports {self.target} (line {self.line})"


def _module_name(package_root: Path, path: Path) -> str:
    parts = path.relative_to(package_root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(tree):
        if _is_type_checking_block(child):
            assert isinstance(child, ast.If)
            for node in child.orelse:
                yield node
                yield from _runtime_nodes(node)
            continue
        yield child
        yield from _runtime_nodes(child)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(package_root: Path) -> Iterator[Import]:
    """The runtime imports of every module under ``package_root``, at any depth of the
    module (function bodies included)."""
    for path in sorted(package_root.rglob("*.py")):
        module = _module_name(package_root, path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, path.name == "__init__.py", node)
                for alias in node.names:
                    yield Import(module, f"{source}.{alias.name}", node.lineno)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def forbidden_imports(package_root: Path) -> list[Import]:
    """Imports of the pure packages that reach an I/O layer or module."""
    pure = [f"{package_root.name}.{package}" for package in PURE_PACKAGES]
    return [found for found in imports(package_root)
            if any(_within(found.module, package) for package in pure)
            and any(_within(found.target, forbidden) for forbidden in FORBIDDEN_IN_PURE)]


def package_cycles(package_root: Path) -> list[list[Import]]:
    """Cycles between top-level packages (and modules, such as ``tls``), each as the
    imports that close it (one example import per edge)."""
    packages = {path.parent.name for path in package_root.glob("*/__init__.py")} | {
        path.stem for path in package_root.glob("*.py") if path.stem != "__init__"}

    def top_level(name: str) -> str | None:
        parts = name.split(".")
        if parts[0] != package_root.name or len(parts) < 2 or parts[1] not in packages:
            return None
        return parts[1]

    edges: dict[tuple[str, str], Import] = {}
    for found in imports(package_root):
        source, target = top_level(found.module), top_level(found.target)
        if source and target and source != target:
            edges.setdefault((source, target), found)
    graph = {package: sorted(t for s, t in edges if s == package) for package in packages}

    def reaches(start: str, goal: str) -> list[str] | None:
        """A path of packages from start to goal, by breadth-first search."""
        paths: list[list[str]] = [[start]]
        seen = {start}
        while paths:
            path = paths.pop(0)
            for following in graph[path[-1]]:
                if following == goal:
                    return [*path, goal]
                if following not in seen:
                    seen.add(following)
                    paths.append([*path, following])
        return None

    cycles: list[list[Import]] = []
    covered: set[frozenset[str]] = set()
    for package in sorted(packages):
        path = reaches(package, package)
        if path is None or frozenset(path) in covered:
            continue
        covered.add(frozenset(path))
        cycles.append([edges[pair] for pair in itertools.pairwise(path)])
    return cycles


def test_pure_packages_import_no_io() -> None:
    violations = forbidden_imports(PACKAGE_ROOT)
    assert not violations, "api, plan and render must stay pure:\n" + "\n".join(
        map(str, violations))


def test_top_level_packages_import_each_other_without_cycles() -> None:
    cycles = package_cycles(PACKAGE_ROOT)
    assert not cycles, "import cycles between packages:\n" + "\n".join(
        " -> ".join(str(found) for found in cycle) for cycle in cycles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "hybrid_compute" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "hybrid_compute"


def test_checker_reports_forbidden_imports_and_cycles(tmp_path: Path) -> None:
    package = _write(tmp_path, {
        "__init__.py": "",
        "api/__init__.py": "",
        "api/units.py": "from typing import TYPE_CHECKING\n"
                        "if TYPE_CHECKING:\n    import kubernetes\n"
                        "import decimal\n",
        "api/quantity.py": "def parse():\n    from kubernetes.utils import parse_quantity\n",
        "plan/__init__.py": "from hybrid_compute import control\n",
        "render/__init__.py": "",
        "render/children.py": "from ..server import metrics\nimport http.client\n",
        "control/__init__.py": "from hybrid_compute.server import metrics\nimport urllib\n",
        "server/__init__.py": "",
        "server/metrics.py": "from hybrid_compute.control import loop\n",
    })

    assert sorted(map(str, forbidden_imports(package))) == [
        "hybrid_compute.api.quantity imports kubernetes.utils.parse_quantity (line 2)",
        "hybrid_compute.plan imports hybrid_compute.control (line 1)",
        "hybrid_compute.render.children imports http.client (line 2)",
        "hybrid_compute.render.children imports hybrid_compute.server.metrics (line 1)",
    ]
    assert [[str(found) for found in cycle] for cycle in package_cycles(package)] == [[
        "hybrid_compute.control imports hybrid_compute.server.metrics (line 1)",
        "hybrid_compute.server.metrics imports hybrid_compute.control.loop (line 1)",
    ]]


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    package = _write(tmp_path, {
        "__init__.py": "",
        "api/__init__.py": "import decimal\n",
        "plan/__init__.py": "from hybrid_compute.api import units\n",
        "control/__init__.py": "import urllib.request\nfrom hybrid_compute import plan\n",
    })

    assert forbidden_imports(package) == []
    assert package_cycles(package) == []
