"""``manifests/`` (what Argo CD syncs) is the chart's render: the base equals the
default values, the k3s overlay equals the chart with ``ci/k3s-values.yaml``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid_compute.dev.manifests import (
    BASE_FOLDER,
    CHART_FOLDER,
    helm_template,
    without_helm_labels,
    write_manifests,
)
from hybrid_compute.dev.toolchain import ensure_toolchain

ROOT = Path(__file__).resolve().parents[2]
Key = tuple[str, str, str, str]


@pytest.fixture(scope="module")
def kubectl() -> Path:
    """The control plane's kubectl, whose ``kustomize`` is what Argo CD runs."""
    return ensure_toolchain().binary("kubectl")


def by_identity(documents: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    objects: dict[Key, dict[str, Any]] = {}
    for document in documents:
        metadata = document["metadata"]
        key = (document["apiVersion"], document["kind"], metadata.get("namespace", ""),
               metadata["name"])
        assert key not in objects, f"{key} appears twice"
        objects[key] = without_helm_labels(document)
    return objects


def kustomize(kubectl: Path, folder: str) -> dict[Key, dict[str, Any]]:
    result = subprocess.run([str(kubectl), "kustomize", str(ROOT / folder)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return by_identity([d for d in yaml.safe_load_all(result.stdout) if d])


def chart(*extra_args: str) -> dict[Key, dict[str, Any]]:
    return by_identity([d for d in yaml.safe_load_all(helm_template(ROOT, extra_args)) if d])


def assert_same(built: dict[Key, dict[str, Any]], rendered: dict[Key, dict[str, Any]]) -> None:
    assert sorted(built) == sorted(rendered), (
        f"only in manifests: {sorted(set(built) - set(rendered))}; "
        f"only in the chart: {sorted(set(rendered) - set(built))}")
    for key, expected in rendered.items():
        assert built[key] == expected, f"{key} differs from the chart's render"


def test_the_base_files_are_up_to_date() -> None:
    stale = write_manifests(ROOT, check=True)
    assert stale == [], f"{BASE_FOLDER} is stale (run `make manifests`): {stale}"


def test_the_base_builds_to_the_charts_default_render(kubectl: Path) -> None:
    assert_same(kustomize(kubectl, BASE_FOLDER), chart())


def test_the_k3s_overlay_is_the_chart_with_k3s_values(kubectl: Path) -> None:
    built = kustomize(kubectl, "manifests/overlays/k3s")
    namespace = built.pop(("v1", "Namespace", "", "hybrid-compute"))
    assert namespace["metadata"]["name"] == "hybrid-compute"
    assert_same(built, chart("-f", str(ROOT / CHART_FOLDER / "ci" / "k3s-values.yaml")))
    agent = built[("apps/v1", "DaemonSet", "hybrid-compute", "hybrid-compute-gpu-agent")]
    assert agent["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


def test_nothing_in_git_holds_a_field_the_operator_writes() -> None:
    """Fields the operator owns must stay out of Git, or Argo CD would see a diff
    every time the operator writes them."""
    base = ROOT / BASE_FOLDER
    documents = [d for path in sorted(base.rglob("*.yaml")) if path.name != "kustomization.yaml"
                 for d in yaml.safe_load_all(path.read_text()) if d]
    for document in documents:
        name = f"{document['kind']} {document['metadata']['name']}"
        assert "status" not in document, name
        if document["kind"] == "ConfigMap":
            assert document["metadata"]["name"] != "litellm-config", name
        if document["kind"] == "Deployment":
            template = document["spec"]["template"]
            annotations = template["metadata"].get("annotations") or {}
            assert "hybridcompute.io/config-hash" not in annotations, name
            for entry in template["spec"]["containers"]:
                assert not [e for e in entry.get("env", []) if e["name"].startswith("HC_")], name
