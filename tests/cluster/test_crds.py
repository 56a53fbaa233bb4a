"""The generated CRDs on the real API server: samples apply, bad objects are
rejected with a message that names the field, kubectl knows the kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid_compute.api import KINDS
from hybrid_compute.dev.bootstrap import sample_manifests
from tests.conftest import REPOSITORY_ROOT, TestCluster

pytestmark = pytest.mark.cluster

INVALID_FOLDER = Path(__file__).resolve().parent.parent / "data" / "invalid"


def expected_fields(path: Path) -> list[str]:
    """The ``# expect: FIELD`` lines at the top of a corpus file."""
    return [line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
            if line.startswith("# expect:")]


def assert_superset(stored: Any, applied: Any, path: str = "spec") -> None:
    """Everything applied reads back unchanged (stored may add defaults)."""
    if isinstance(applied, dict):
        assert isinstance(stored, dict), f"{path}: expected an object, got {stored!r}"
        for key, value in applied.items():
            assert key in stored, f"{path}.{key} was dropped by the API server"
            assert_superset(stored[key], value, f"{path}.{key}")
    else:
        assert stored == applied, f"{path}: applied {applied!r}, read back {stored!r}"


def test_samples_pass_server_side_dry_run(k8s: TestCluster, namespace: str) -> None:
    for path in sorted((REPOSITORY_ROOT / "manifests" / "samples").glob("*.yaml")):
        result = k8s.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path),
                             check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_samples_apply_and_read_back_unchanged_apart_from_defaults(
        k8s: TestCluster, namespace: str) -> None:
    samples = sample_manifests(REPOSITORY_ROOT)
    kinds = sorted({s["kind"] for s in samples})
    assert kinds == ["GpuWorkload", "ModelSlot", "RoutePolicy"], kinds
    names = {(s["kind"], s["metadata"]["name"]) for s in samples}
    for expected in [("ModelSlot", "fast"), ("ModelSlot", "quality"),
                     ("ModelSlot", "quality-alt"), ("ModelSlot", "embed"),
                     ("RoutePolicy", "default"), ("GpuWorkload", "tts-local"),
                     ("GpuWorkload", "image-generation"), ("GpuWorkload", "fine-tuning")]:
        assert expected in names, f"sample {expected} is missing"
    for sample in samples:
        k8s.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(sample))
        kind = next(k.crd for k in KINDS if k.crd.kind == sample["kind"])
        stored = k8s.custom.get_namespaced_custom_object(
            "hybridcompute.io", "v1alpha1", namespace, kind.plural, sample["metadata"]["name"])
        assert_superset(stored["spec"], sample["spec"])
        kind.spec_model.model_validate(stored["spec"])


def test_default_values_are_filled_in_by_the_api_server(k8s: TestCluster,
                                                        namespace: str) -> None:
    minimal = {"apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
               "metadata": {"name": "minimal", "namespace": namespace},
               "spec": {"alias": "local/tiny", "model": {"path": "tiny.gguf", "vram": "1Gi"}}}
    k8s.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(minimal))
    stored = k8s.custom.get_namespaced_custom_object(
        "hybridcompute.io", "v1alpha1", namespace, "modelslots", "minimal")["spec"]
    assert stored["device"] == "gpu"
    assert stored["activation"] == "Always"
    assert stored["server"]["port"] == 8080
    assert stored["server"]["ctxSize"] == 8192


def test_minimal_route_policy_is_accepted(k8s: TestCluster, namespace: str) -> None:
    """Every list left out: the CEL rules over lists must not fail on absent keys."""
    minimal = {"apiVersion": "hybridcompute.io/v1alpha1", "kind": "RoutePolicy",
               "metadata": {"name": "minimal", "namespace": namespace}, "spec": {}}
    k8s.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(minimal))
    stored = k8s.custom.get_namespaced_custom_object(
        "hybridcompute.io", "v1alpha1", namespace, "routepolicies", "minimal")["spec"]
    assert stored["routing"]["autoModel"] == "hybrid/auto"
    assert stored["litellm"]["configMapName"] == "litellm-config"


INVALID_CASES = sorted(INVALID_FOLDER.glob("*.yaml"))


def test_the_invalid_corpus_is_large_enough() -> None:
    assert len(INVALID_CASES) >= 20, f"only {len(INVALID_CASES)} invalid cases"
    for path in INVALID_CASES:
        assert expected_fields(path), f"{path.name} has no '# expect: FIELD' line"


@pytest.mark.parametrize("path", INVALID_CASES, ids=[p.stem for p in INVALID_CASES])
def test_invalid_object_is_rejected_naming_the_field(k8s: TestCluster, namespace: str,
                                                     path: Path) -> None:
    result = k8s.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path),
                         check=False)
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    for field in expected_fields(path):
        assert field in result.stderr, \
            f"{path.name}: expected the error to name {field!r}, got:\n{result.stderr}"


def test_kubectl_get_hybrid_lists_all_three_kinds(k8s: TestCluster) -> None:
    resources = k8s.kubectl("api-resources", "--categories=hybrid", "-o", "name").stdout.split()
    assert sorted(resources) == ["gpuworkloads.hybridcompute.io",
                                 "modelslots.hybridcompute.io",
                                 "routepolicies.hybridcompute.io"], resources


def test_kubectl_explain_describes_fields(k8s: TestCluster) -> None:
    text = k8s.kubectl("explain", "modelslot.spec.activation").stdout
    assert "OnDemand" in text and "idleTimeout" in text, text


def test_printer_columns_show_alias_model_device_phase_vram_node(
        k8s: TestCluster, namespace: str) -> None:
    slot = next(s for s in sample_manifests(REPOSITORY_ROOT) if s["metadata"]["name"] == "fast")
    k8s.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(slot))
    header = k8s.kubectl("get", "modelslots", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "ALIAS", "MODEL", "DEVICE", "PHASE", "VRAM", "NODE", "AGE"], header
    row = k8s.kubectl("get", "ms", "fast", "-n", namespace).stdout.splitlines()[1].split()
    assert row[1:4] == ["local/fast", "llama-3.1-8b-instruct-q6_k.gguf", "gpu"], row
