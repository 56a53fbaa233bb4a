"""A swap never cuts a request: the outgoing slot drains first.

Runs on the process node (``node_cluster``), not kwok: each slot's pod is a real
llama-server, so deleting the outgoing pod too early would really cut the answer
(SIGTERM ends the process), and the incoming slot's load is a real load whose
readiness is its /health. Two slots share the simulated GPU; the outgoing one
serves a slower random-weight model, so a long answer takes seconds. While a long
completion runs on it, a demand for the other slot evicts it: the operator must
keep its pod until llama-server's /slots says the request is done, and only then
scale it to 0; the incoming llama-server starts only after the outgoing one exited.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hybrid_compute.dev.tiny_models import TinyShape, write_tiny_model
from tests.cluster.support import apply, phase, read, wait
from tests.conftest import OperatorHandle, TestCluster
from tests.serving.conftest import NodeCluster, pod_pid, pod_ready

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

PORT = 8080
"""Each pod of the process node has an address of its own: every slot can use it."""
SLOW_SHAPE = TinyShape(layers=4, embedding=512, heads=8, kv_heads=8, feed_forward=2048,
                       context=4096)
"""About 17M parameters: a few hundred tokens per second on one thread, so a
900-token answer lasts several seconds."""
LONG_ANSWER_TOKENS = 900


def _slot(name: str, alias: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
            "metadata": {"name": name},
            "spec": {"alias": alias, "server": {"port": PORT}, "minResidency": "1s", **spec}}


def _busy(url: str) -> int:
    with urllib.request.urlopen(f"{url}/slots", timeout=2) as answer:
        return sum(1 for s in json.loads(answer.read()) if s.get("is_processing"))


class LongCompletion(threading.Thread):
    """A completion that keeps llama-server (at ``url``, its pod's own address)
    busy; records when it finished."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.finished_at: datetime.datetime | None = None
        self.status: int | None = None
        self.body: dict[str, Any] = {}

    def run(self) -> None:
        payload = json.dumps({
            "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": LONG_ANSWER_TOKENS, "ignore_eos": True}).encode()
        request = urllib.request.Request(f"{self.url}/v1/chat/completions",
                                         data=payload,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            self.status = answer.status
            self.body = json.loads(answer.read())
        self.finished_at = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def operator(node_cluster: NodeCluster) -> Iterator[OperatorHandle]:
    yield node_cluster.start_operator()
    node_cluster.stop_operator()


@pytest.fixture
def namespace(k8s: TestCluster, node_cluster: NodeCluster) -> Iterator[str]:
    write_tiny_model(node_cluster.models / "slow.gguf", SLOW_SHAPE, name="slow")
    write_tiny_model(node_cluster.models / "tiny.gguf")
    name = f"drain-{uuid.uuid4().hex[:6]}"
    k8s.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        k8s.release_namespace(name)


def test_a_request_in_flight_finishes_before_the_outgoing_pod_is_deleted(
        k8s: TestCluster, operator: OperatorHandle, node_cluster: NodeCluster,
        namespace: str) -> None:
    suffix = namespace.rsplit("-", 1)[-1]
    apply(k8s, namespace, [
        _slot("outgoing", f"local/outgoing-{suffix}",
              model={"path": "slow.gguf", "vram": "16Gi"}, drain={"timeout": "60s"}),
        _slot("incoming", f"local/incoming-{suffix}", activation="OnDemand",
              idleTimeout="10m", priority=300, model={"path": "tiny.gguf", "vram": "16Gi"}),
    ])
    wait(lambda: phase(k8s, namespace, "outgoing") == "Ready", 120, "outgoing Ready")
    [outgoing] = node_cluster.pods(namespace, "outgoing")
    assert pod_ready(outgoing)
    outgoing_pid = pod_pid(outgoing)
    url = f"http://{outgoing['status']['podIP']}:{PORT}"

    completion = LongCompletion(url)
    completion.start()
    wait(lambda: _busy(url) > 0, 10, "the long completion to start")
    operator.demand(f"local/incoming-{suffix}")

    # Until the completion is done, the outgoing slot drains and its pod stays.
    phases_seen: set[str | None] = set()
    deleted_at: datetime.datetime | None = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and deleted_at is None:
        phases_seen.add(phase(k8s, namespace, "outgoing"))
        current = k8s.core.list_namespaced_pod(
            namespace, field_selector=f"metadata.name={outgoing['metadata']['name']}").items
        if not current or current[0].metadata.deletion_timestamp is not None:
            deleted_at = datetime.datetime.now(datetime.UTC)
        time.sleep(0.05)
    completion.join(120)
    assert deleted_at is not None, "the outgoing pod was never deleted"
    assert "Draining" in phases_seen, f"the slot never drained: {phases_seen}"
    assert completion.status == 200, completion.body
    usage = completion.body["usage"]
    assert usage["completion_tokens"] == LONG_ANSWER_TOKENS, "the answer was cut short"
    assert completion.finished_at is not None and completion.finished_at <= deleted_at, (
        f"the pod was deleted at {deleted_at:%T.%f}, before the request finished at "
        f"{completion.finished_at:%T.%f}")

    # The deletion really ended the process: after the answer, not before; and the
    # incoming llama-server started only once the outgoing one had exited.
    exited = wait(lambda: node_cluster.exited(outgoing_pid), 60, "outgoing llama-server gone")
    assert completion.finished_at.timestamp() <= exited["at"]

    wait(lambda: phase(k8s, namespace, "incoming") == "Ready", 120, "incoming Ready")
    [incoming] = node_cluster.pods(namespace, "incoming")
    incoming_started = node_cluster.started(pod_pid(incoming))
    assert exited["at"] < incoming_started["at"], "the incoming model loaded beside the outgoing"
    assert incoming_started["argv"][incoming_started["argv"].index("--model") + 1].endswith(
        "tiny.gguf")
    status = read(k8s, namespace, "incoming")["status"]
    phases = status["lastSwapPhases"]
    assert phases["drain"] > 0.5, phases
    assert {"unload", "schedule", "containerStart", "modelLoad"} <= set(phases), phases
    total = sum(v for k, v in phases.items() if k != "routeRestored")
    assert total == pytest.approx(status["lastSwapSeconds"], abs=0.05)
