"""``spec.server.readiness: Operator``: a slot serves the moment its llama-server
answers /health, before the kubelet's next probe marks its pod Ready.

Runs on the process node (``node_cluster``). The slot's pod carries the ready delay
annotation, which holds the node's probes back a few seconds (a model that long to
load, as the kubelet would see it); the tiny model itself loads in moments, so the
operator, asking /health itself, finds it answering long before the pod is Ready.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hybrid_compute.dev.pod_worker import READY_DELAY
from hybrid_compute.dev.tiny_models import write_tiny_model
from hybrid_compute.render.children import child_name
from tests.cluster.support import apply, phase, wait
from tests.conftest import OperatorHandle, TestCluster
from tests.serving.conftest import NodeCluster, pod_ready

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

PORT = 8080
PROBES_HELD_SECONDS = 6


@pytest.fixture(scope="module")
def operator(node_cluster: NodeCluster) -> Iterator[OperatorHandle]:
    yield node_cluster.start_operator()
    node_cluster.stop_operator()


@pytest.fixture
def namespace(k8s: TestCluster, node_cluster: NodeCluster) -> Iterator[str]:
    write_tiny_model(node_cluster.models / "tiny.gguf")
    name = f"ready-{uuid.uuid4().hex[:6]}"
    k8s.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        k8s.kubectl("delete", "modelslots,deployments", "--all", "-n", name, "--wait=false",
                    check=False)
        k8s.kubectl("wait", "--for=delete", "pods", "--all", "-n", name, "--timeout=60s",
                    check=False)
        k8s.kubectl("delete", "namespace", name, "--wait=false")


def _chat(url: str) -> dict[str, Any]:
    body = {"max_tokens": 2, "messages": [{"role": "user", "content": "Say hello."}]}
    request = urllib.request.Request(f"{url}/v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        reply: dict[str, Any] = json.loads(answer.read())
        return reply


def test_an_operator_readiness_slot_serves_before_the_kubelet_calls_its_pod_ready(
        k8s: TestCluster, node_cluster: NodeCluster, operator: OperatorHandle,
        namespace: str) -> None:
    alias = f"local/early-{namespace}"
    apply(k8s, namespace, [{
        "apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
        "metadata": {"name": "early"},
        "spec": {"alias": alias, "model": {"path": "tiny.gguf", "vram": "8Gi"},
                 "server": {"port": PORT, "readiness": "Operator"},
                 "podAnnotations": {READY_DELAY: f"{PROBES_HELD_SECONDS}s"}}}])
    wait(lambda: phase(k8s, namespace, "early") == "Ready", 60, "early Ready")
    [pod] = node_cluster.pods(namespace, "early")
    assert not pod_ready(pod), "the slot was Ready only once the kubelet said so"
    service = k8s.core.read_namespaced_service(child_name("early"), namespace)
    assert service.spec.publish_not_ready_addresses is True
    reply = _chat(node_cluster.service_url(namespace, child_name("early"), PORT))
    assert reply["choices"][0]["message"]["role"] == "assistant"
    wait(lambda: all(pod_ready(p) for p in node_cluster.pods(namespace, "early")),
         PROBES_HELD_SECONDS + 30, "the kubelet to call the pod Ready")
    assert phase(k8s, namespace, "early") == "Ready"


def test_a_kubelet_readiness_slot_waits_for_its_pod(
        k8s: TestCluster, node_cluster: NodeCluster, operator: OperatorHandle,
        namespace: str) -> None:
    apply(k8s, namespace, [{
        "apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
        "metadata": {"name": "probed"},
        "spec": {"alias": f"local/probed-{namespace}",
                 "model": {"path": "tiny.gguf", "vram": "8Gi"}, "server": {"port": PORT},
                 "podAnnotations": {READY_DELAY: "3s"}}}])
    wait(lambda: phase(k8s, namespace, "probed") == "Ready", 60, "probed Ready")
    [pod] = node_cluster.pods(namespace, "probed")
    assert pod_ready(pod)
    service = k8s.core.read_namespaced_service(child_name("probed"), namespace)
    assert not service.spec.publish_not_ready_addresses
