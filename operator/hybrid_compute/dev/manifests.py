"""Renders the Helm chart into ``manifests/base``, the plain YAML Argo CD can sync.

The chart is the one source: ``manifests/base`` is its default render, written
file by file as the templates are laid out, with Helm's own bookkeeping labels
left out (they would claim Helm manages objects it never saw). ``make
manifests`` rewrites the folder; the tests fail when it is stale.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hybrid_compute.dev.helm import ensure_helm

CHART_FOLDER = "charts/hybrid-compute"
BASE_FOLDER = "manifests/base"
RELEASE_NAME = "hybrid-compute"
RELEASE_NAMESPACE = "hybrid-compute"
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
_SOURCE_PREFIX = "# Source: "
_HEADER = ("# Generated from charts/hybrid-compute by `make manifests` "
           "(helm template with the default values); do not edit.\n")


class RenderError(RuntimeError):
    """helm could not render the chart; the message carries helm's own."""


def helm_template(root: Path, extra_args: Sequence[str] = (), release: str = RELEASE_NAME,
                  namespace: str = RELEASE_NAMESPACE) -> str:
    """``helm template`` of the chart, CRDs included (by default as the release
    ``hybrid-compute`` in the namespace of the same name)."""
    result = subprocess.run(
        [str(ensure_helm()), "template", release, str(root / CHART_FOLDER),
         "--namespace", namespace, "--include-crds", *extra_args],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"helm template failed: {result.stderr.strip()}")
    return result.stdout


def split_by_source(rendered: str) -> dict[str, list[dict[str, Any]]]:
    """The rendered objects grouped by the chart file each came from, in order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for chunk in rendered.split("\n---"):
        source = next((line[len(_SOURCE_PREFIX):].strip() for line in chunk.splitlines()
                       if line.startswith(_SOURCE_PREFIX)), None)
        document = yaml.safe_load(chunk)
        if source is None or not document:
            continue
        groups.setdefault(source.split("/", 1)[1], []).append(document)
    return groups


def without_helm_labels(document: dict[str, Any]) -> dict[str, Any]:
    """The object less the labels only Helm's own release tracking means anything for."""
    labels = document.get("metadata", {}).get("labels")
    if labels:
        for label in HELM_ONLY_LABELS:
            labels.pop(label, None)
    return document


def base_files(rendered: str) -> dict[str, str]:
    """File name (relative to ``manifests/base``) to content, kustomization included."""
    files: dict[str, str] = {}
    for source, documents in split_by_source(rendered).items():
        relative = source.removeprefix("templates/")
        body = yaml.safe_dump_all([without_helm_labels(d) for d in documents],
                                  sort_keys=False, default_flow_style=False)
        files[relative] = _HEADER + body
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": sorted(files)}
    files["kustomization.yaml"] = _HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    return files


def write_manifests(root: Path, check: bool = False) -> list[Path]:
    """Writes ``manifests/base`` from the chart; returns the files that changed
    (with ``check``, the files that would change, writing nothing)."""
    folder = root / BASE_FOLDER
    expected = base_files(helm_template(root))
    changed: list[Path] = []
    for relative, text in expected.items():
        path = folder / relative
        if not path.exists() or path.read_text() != text:
            changed.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    stale = [path for path in folder.rglob("*.yaml")
             if str(path.relative_to(folder)) not in expected]
    for path in stale:
        changed.append(path)
        if not check:
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Render the Helm chart into manifests/base.")
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 when manifests/base is stale")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[3]
    try:
        changed = write_manifests(root, check=args.check)
    except RenderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check and changed:
        print("manifests/base differs from the chart's render (run `make manifests`):",
              file=sys.stderr)
        for path in changed:
            print(f"  {path.relative_to(root)}", file=sys.stderr)
        return 1
    verb = "would change" if args.check else "wrote"
    print(f"{verb} {len(changed)} files" if changed else "manifests/base is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
