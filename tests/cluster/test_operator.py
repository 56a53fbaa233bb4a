"""The operator process runs against the real API server and reacts to objects."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from hybrid_compute.api import GROUP, VERSION
from tests.conftest import OperatorHandle, TestCluster

pytestmark = pytest.mark.cluster


def slot(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelSlot",
        "metadata": {"name": name},
        "spec": {"alias": "local/fast", "model": {"path": "m.gguf", "vram": "7Gi"}, **spec},
    }


def read_slot(k8s: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = k8s.custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelslots", name)
    return result


def wait_status(k8s: TestCluster, namespace: str, name: str, generation: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = read_slot(k8s, namespace, name)
        if (body.get("status") or {}).get("observedGeneration") == generation:
            return body
        time.sleep(0.25)
    raise AssertionError(f"status never observed generation {generation}: {body.get('status')}")


def test_health_endpoint_answers(operator: OperatorHandle) -> None:
    url = f"http://127.0.0.1:{operator.health_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200


def test_operator_accepts_a_slot_and_tracks_its_generation(
        k8s: TestCluster, namespace: str, operator: OperatorHandle) -> None:
    manifest = slot("fast")
    manifest["metadata"]["namespace"] = namespace
    k8s.cluster.apply([manifest])

    body = wait_status(k8s, namespace, "fast", 1)
    accepted = {c["type"]: c for c in body["status"]["conditions"]}["Accepted"]
    assert accepted["status"] == "True" and accepted["observedGeneration"] == 1
    assert body["status"]["phase"] in ("Loading", "Ready"), body["status"]
    first_transition = accepted["lastTransitionTime"]

    manifest["spec"]["priority"] = 300
    k8s.cluster.apply([manifest])
    body = wait_status(k8s, namespace, "fast", 2)
    accepted = {c["type"]: c for c in body["status"]["conditions"]}["Accepted"]
    assert accepted["observedGeneration"] == 2
    assert accepted["lastTransitionTime"] == first_transition, \
        "lastTransitionTime moved although the status did not flip"


def test_status_is_written_by_one_field_manager_with_server_side_apply(
        k8s: TestCluster, namespace: str, operator: OperatorHandle) -> None:
    manifest = slot("managed")
    manifest["metadata"]["namespace"] = namespace
    k8s.cluster.apply([manifest])
    wait_status(k8s, namespace, "managed", 1)
    fields = read_slot(k8s, namespace, "managed")["metadata"]["managedFields"]
    status_managers = {(f["manager"], f["operation"]) for f in fields
                       if f.get("subresource") == "status"}
    assert status_managers == {("hybrid-compute", "Apply")}, status_managers
