"""What the release workflow runs around a ``v*`` tag: the check that the tag, the
package, the chart and the image the chart names agree, and the chart's package.

``python -m hybrid_compute.dev.release check v0.2.0 --image-repository ghcr.io/o/x``
prints the version (the tag without its ``v``) or every mismatch, and
``... package-chart --dest dist`` packages the chart with the cached helm and prints
the archive's path; ``... helm`` prints that helm's path, for ``helm push``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from hybrid_compute.dev.helm import ensure_helm
from hybrid_compute.plan.settings import OPERATOR_IMAGE

CHART_FOLDER = Path("charts") / "hybrid-compute"
_VERSION = re.compile(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?")


def tag_version(tag: str) -> str:
    """The version a release tag names: ``v1.2.3`` (or ``v1.2.3-rc.1``) -> ``1.2.3``."""
    version = tag.removeprefix("v")
    if not tag.startswith("v") or _VERSION.fullmatch(version) is None:
        raise ValueError(f"release tag {tag!r} is not v<major>.<minor>.<patch>[-<pre>]")
    return version


def _yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def mismatches(root: Path, tag: str, image_repository: str) -> list[str]:
    """Every way the repository at ``root`` disagrees with releasing ``tag`` as the
    image ``image_repository:<version>``; empty when it may be released."""
    version = tag_version(tag)
    chart = _yaml(root / CHART_FOLDER / "Chart.yaml")
    values = _yaml(root / CHART_FOLDER / "values.yaml")
    with (root / "pyproject.toml").open("rb") as pyproject:
        package = tomllib.load(pyproject)["project"]["version"]
    found = {
        f"{CHART_FOLDER / 'Chart.yaml'} version": str(chart["version"]),
        f"{CHART_FOLDER / 'Chart.yaml'} appVersion (the image tag the chart runs)":
            str(chart["appVersion"]),
        "pyproject.toml version (the package in the image)": str(package),
    }
    problems = [f"{what} is {value}, the tag says {version}"
                for what, value in found.items() if value != version]
    repositories = {
        f"{CHART_FOLDER / 'values.yaml'} image.repository": values["image"]["repository"],
        "the operator's own image (--fetch-image default)": OPERATOR_IMAGE.rsplit(":", 1)[0],
    }
    problems += [f"{what} is {value}, the workflow pushes {image_repository}"
                 for what, value in repositories.items() if value != image_repository]
    return problems


def package_chart(root: Path, destination: Path) -> Path:
    """``helm package`` of the chart into ``destination``; the archive's path."""
    destination.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([str(ensure_helm(log=False)), "package", str(root / CHART_FOLDER),
                             "--destination", str(destination)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"helm package failed: {result.stderr.strip()}")
    chart = _yaml(root / CHART_FOLDER / "Chart.yaml")
    return destination / f"{chart['name']}-{chart['version']}.tgz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid_compute.dev.release",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="the tag, package, chart and image agree")
    check.add_argument("tag")
    check.add_argument("--image-repository", required=True,
                       help="where the workflow pushes the operator's image")
    package = commands.add_parser("package-chart", help="helm package the chart")
    package.add_argument("--dest", type=Path, default=Path("dist"))
    commands.add_parser("helm", help="print the cached helm's path (built when missing)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.command == "check":
        try:
            problems = mismatches(root, args.tag, args.image_repository)
        except ValueError as error:
            problems = [str(error)]
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(tag_version(args.tag))
    elif args.command == "package-chart":
        print(package_chart(root, args.dest))
    else:
        print(ensure_helm(log=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
