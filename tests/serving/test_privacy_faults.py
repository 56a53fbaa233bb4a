"""Privacy under faults: a privacy-tagged request is answered locally, held, or
refused with a status that says why, and the stand-in cloud records none of it,
whatever breaks around it: the local model overflowing its context window, its
server hanging (LiteLLM's timeout, retries and fallbacks), the operator stopped,
LiteLLM restarted without the operator, the slot's pod crash-looping.

Runs on the process node (``node_cluster``) with the real LiteLLM proxy and real
llama-servers, because each fault is a real one: a SIGSTOPped server, a stopped
operator process, a deleted LiteLLM pod, a model file llama-server cannot load.
Every fault is also shown to carry an untagged request to the cloud where LiteLLM
or the router would send it there, so the private request's staying local is the
router's doing, not a cloud that was out of reach. Tests run in file order and
share one stack.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from hybrid_compute.dev.cloud_stand_in import STAND_IN_NOTE, CloudStandIn
from hybrid_compute.dev.openai_call import Reply
from tests.cluster.support import phase, wait
from tests.serving.conftest import NodeCluster, pod_pid, pod_ready
from tests.serving.litellm_stack import (
    MODEL_FILE,
    ROUTER_REFRESH,
    Stack,
    cloud_model,
    litellm_stack,
    model_slot,
    route_policy,
)

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

HOLD_TIMEOUT_SECONDS = 6
LOCAL_CONTEXT_TOKENS = 256
CALL_TIMEOUT_SECONDS = 4
"""LiteLLM's timeout per call to a model (the policy's ``router.timeout``)."""
LONG_TEXT = "privacy " * 2000
"""Far beyond fast's context window."""


@pytest.fixture(scope="module")
def stack(node_cluster: NodeCluster, cloud: CloudStandIn) -> Iterator[Stack]:
    policy = route_policy(
        [cloud_model(cloud.url, "cloud/fast", "cloud-fast"),
         cloud_model(cloud.url, "cloud/mid", "cloud-mid")],
        routing={"privacy": {"holdTimeout": f"{HOLD_TIMEOUT_SECONDS}s"}},
        # A retry, so that LiteLLM's own retries are part of what is proven.
        router={"numRetries": 1, "timeout": f"{CALL_TIMEOUT_SECONDS}s"})
    with litellm_stack(node_cluster, cloud, [
            model_slot("fast", "local/fast", default=True, fallback="cloud/fast",
                       model={"path": MODEL_FILE, "servedName": "fast", "vram": "5Gi"},
                       server={"port": 8080, "ctxSize": LOCAL_CONTEXT_TOKENS}),
            model_slot("coder", "local/coder", activation="OnDemand", idleTimeout="10m",
                       priority=200, fallback="cloud/mid",
                       model={"path": MODEL_FILE, "servedName": "coder", "vram": "16Gi"}),
            policy], prefix="privacy") as stack:
        yield stack


def _private(stack: Stack, model: str, content: str = "My private notes.") -> Reply:
    return stack.chat(model, content, tags=["private"])


def _fast_pid(stack: Stack) -> int:
    pods = [p for p in stack.node.pods(stack.namespace, "fast")
            if pod_ready(p) and not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pid = pod_pid(pods[0])
    assert pid is not None
    return pid


def _answered_by_the_cloud(answer: Reply) -> bool:
    return answer.status == 200 and STAND_IN_NOTE in json.dumps(answer.body)


def test_a_private_request_beyond_the_local_context_window_never_reaches_the_cloud(
        stack: Stack) -> None:
    stack.cloud.clear()
    private = _private(stack, "local/fast", LONG_TEXT)
    assert private.status == 400, private.body
    assert "context" in json.dumps(private.body).lower(), private.body
    assert stack.cloud.calls == [], "a private request overflowing the local model left"
    stack.cloud.clear()
    ordinary = stack.chat("local/fast", LONG_TEXT)
    assert _answered_by_the_cloud(ordinary), (
        "an untagged request beyond the context window should take LiteLLM's fallback "
        f"to the cloud: {ordinary.status} {ordinary.body}")
    assert stack.cloud.models_called() == ["cloud-fast"]


def test_a_hung_local_server_sends_untagged_requests_to_the_fallback_never_private_ones(
        stack: Stack) -> None:
    """fast's llama-server stopped (SIGSTOP): it accepts connections and never answers,
    so LiteLLM times out, retries, and would fall back to cloud/fast."""
    pid = _fast_pid(stack)
    os.kill(pid, signal.SIGSTOP)
    try:
        stack.cloud.clear()
        started = time.monotonic()
        private = _private(stack, "local/fast")
        waited = time.monotonic() - started
        assert stack.cloud.calls == [], "LiteLLM's fallback carried a private request out"
        assert private.status >= 400, private.body
        assert waited >= CALL_TIMEOUT_SECONDS, "it was not even tried on the local model"
        stack.cloud.clear()
        ordinary = stack.chat("local/fast")
        assert _answered_by_the_cloud(ordinary), (ordinary.status, ordinary.body)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait(lambda: phase(stack.k8s, stack.namespace, "fast") == "Ready", 60, "fast Ready again")


def test_with_the_operator_stopped_private_requests_are_served_locally_or_refused(
        stack: Stack) -> None:
    """The router keeps the last state it read: fast is known Ready and serves; coder
    is known in Standby and nobody can load it, so a private request for it is held
    for the policy's hold timeout and refused with 503, where an untagged one is
    bridged to coder's fallback."""
    time.sleep(ROUTER_REFRESH)
    # A request makes the router read the operator's state: fast Ready, coder Standby.
    assert stack.chat("local/fast").status == 200
    stack.operator.stop(kill=True)
    try:
        time.sleep(ROUTER_REFRESH)  # past the router's refresh: its state is now stale
        stack.cloud.clear()
        served = _private(stack, "local/fast")
        assert (served.status, served.route, served.served_by) == (200, "local", "local/fast"), \
            served.body
        started = time.monotonic()
        refused = _private(stack, "local/coder")
        waited = time.monotonic() - started
        assert refused.status == 503, refused.body
        assert "never leave the box" in json.dumps(refused.body), refused.body
        assert HOLD_TIMEOUT_SECONDS <= waited < HOLD_TIMEOUT_SECONDS + 10
        assert stack.cloud.calls == []
        bridged = stack.chat("local/coder")
        assert (bridged.route, bridged.served_by) == ("bridged", "cloud/mid"), bridged.headers
        assert _answered_by_the_cloud(bridged)
    finally:
        stack.operator.start()


def test_litellm_restarted_while_the_operator_is_away_keeps_private_requests_local(
        stack: Stack) -> None:
    """A new LiteLLM that has never reached the operator knows only the rendered
    config: a private request goes to the local model's Service, served when its pod
    runs, and an error (never the cloud) when it does not."""
    stack.operator.stop(kill=True)
    try:
        stack.restart_litellm()
        stack.cloud.clear()
        served = _private(stack, "local/fast")
        assert (served.status, served.route, served.served_by) == (200, "local", "local/fast"), \
            served.body
        unloaded = _private(stack, "local/coder")
        assert unloaded.status >= 500, unloaded.body
        assert stack.cloud.calls == [], "a private request reached the cloud"
    finally:
        stack.operator.start()
    time.sleep(ROUTER_REFRESH)


def test_a_crash_looping_slot_holds_private_requests_and_refuses_them_with_503(
        stack: Stack) -> None:
    """coder's model is a file llama-server cannot load: its pod crash-loops and the
    slot never turns Ready; a private request is held, then refused, and an
    untagged one is bridged."""
    (stack.node.models / "broken.gguf").write_bytes(b"not a model" * 1000)
    stack.k8s.custom.patch_namespaced_custom_object(
        "hybridcompute.io", "v1alpha1", stack.namespace, "modelslots", "coder",
        {"spec": {"model": {"path": "broken.gguf", "vram": "16Gi"}}})
    stack.operator.demand("local/coder")

    def crashed() -> bool:
        pods = stack.node.pods(stack.namespace, "coder")
        return any(((p.get("status") or {}).get("containerStatuses") or [{}])[0]
                   .get("restartCount", 0) >= 1 for p in pods)

    wait(crashed, 90, "coder's llama-server crashed and restarted")
    time.sleep(ROUTER_REFRESH)
    stack.cloud.clear()
    refused = _private(stack, "local/coder")
    assert refused.status == 503, refused.body
    assert "never leave the box" in json.dumps(refused.body), refused.body
    assert stack.cloud.calls == []
    assert phase(stack.k8s, stack.namespace, "coder") != "Ready"
    bridged = stack.chat("local/coder")
    assert (bridged.route, bridged.served_by) == ("bridged", "cloud/mid"), bridged.headers
