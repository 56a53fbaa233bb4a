"""End to end on a real kind cluster: the operator installed by the chart runs the
llama.cpp image for a CPU ModelSlot, and the slot answers a chat completion.

Run by ``tests/e2e/kind/run.sh`` on a machine with Docker (it builds the image,
creates the cluster, installs the chart and sets HYBRID_COMPUTE_E2E_KUBECONFIG).
Without Docker there is no kind cluster, and these tests are skipped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

KUBECONFIG = os.environ.get("HYBRID_COMPUTE_E2E_KUBECONFIG")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not KUBECONFIG, reason=(
        "needs a kind cluster made by tests/e2e/kind/run.sh, which needs a Docker "
        "engine; the cluster and serving tests cover the rest without one")),
]
NAMESPACE = "hybrid-compute"
GROUP, VERSION = "hybridcompute.io", "v1alpha1"


@pytest.fixture(scope="module")
def api() -> client.ApiClient:
    return config.new_client_from_config(config_file=KUBECONFIG)


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_the_operator_is_available(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    deployments = apps.list_namespaced_deployment(
        NAMESPACE, label_selector="app.kubernetes.io/component=operator").items
    assert deployments, "the chart installed no operator Deployment"
    assert all((d.status.available_replicas or 0) >= 1 for d in deployments)


@pytest.fixture
def cpu_slot(api: client.ApiClient) -> Iterator[str]:
    custom = client.CustomObjectsApi(api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelSlot",
            "metadata": {"name": "e2e-tiny", "namespace": NAMESPACE},
            "spec": {"alias": "local/e2e", "device": "cpu", "activation": "Always",
                     "model": {"path": "tiny.gguf"},
                     "server": {"ctxSize": 1024, "threads": 1}}}
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelslots", body)
    try:
        yield "e2e-tiny"
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "modelslots",
                                               "e2e-tiny")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_cpu_slot_runs_llama_server_and_answers(api: client.ApiClient,
                                                  cpu_slot: str) -> None:
    custom = client.CustomObjectsApi(api)

    def ready() -> bool:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE,
                                                   "modelslots", cpu_slot)
        return (body.get("status") or {}).get("phase") == "Ready"

    _wait(ready, 600, f"{cpu_slot} Ready (image pull and model load)")
    port = _free_port()
    forward = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(KUBECONFIG), "-n", NAMESPACE, "port-forward",
         f"service/{cpu_slot}", f"{port}:8080"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        payload = json.dumps({"model": "local/e2e", "max_tokens": 8,
                              "messages": [{"role": "user", "content": "hi"}]}).encode()

        def answer() -> dict[str, Any] | None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions", data=payload,
                headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    body: dict[str, Any] = json.loads(response.read())
                    return body
            except OSError:
                return None

        body = _wait(answer, 60, "a completion through the slot's Service")
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] >= 1
    finally:
        forward.terminate()
        forward.wait(10)
