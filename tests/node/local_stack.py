"""The local cluster as ``make dev`` runs it, started for one test module: the
process node plays dreamteam's kubelet with real llama-server and LiteLLM
processes, the samples' random-weight models load for real and the cloud
stand-in answers the cloud aliases. Each module that uses it names a cluster of
its own (after the suite's cluster name), never the suite's, and stops it at the
end."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from hybrid_compute.api.labels import SLOT_LABEL
from hybrid_compute.dev import llmtools, local_serving
from hybrid_compute.dev.cluster import DevCluster
from hybrid_compute.dev.openai_call import Reply, post_json
from hybrid_compute.dev.process_node import RECORDS_FILE
from tests.cluster.support import phase, read, wait
from tests.conftest import REPOSITORY_ROOT, TestCluster, refuse_foreign_kubeconfig

NAMESPACE = local_serving.NAMESPACE
LITELLM_START_SECONDS = 240
"""LiteLLM starts in a minute or so on a small machine; until then the proxy
answers 503 (no Ready pod) and the first config may still be rolling out."""


@dataclass
class LocalStack:
    cluster: DevCluster
    k8s: TestCluster
    endpoint: local_serving.Endpoint
    up_seconds: float

    def chat(self, model: str, content: str = "Say hello.", timeout: float = 120,
             **metadata: Any) -> Reply:
        body: dict[str, Any] = {"model": model, "max_tokens": 8,
                                "messages": [{"role": "user", "content": content}]}
        if metadata:
            body["metadata"] = metadata
        return post_json(f"{self.endpoint.base_url}/chat/completions", body,
                         self.endpoint.api_key, timeout)

    def first_local_answer(self) -> Reply:
        """The first ``hybrid/auto`` answer served by a local model, once LiteLLM is up."""
        answer: Reply = wait(
            lambda: (a := self.chat("hybrid/auto", "hi")).route == "local" and a,
            LITELLM_START_SECONDS, "hybrid/auto served locally")
        return answer

    def pods(self, slot: str) -> list[dict[str, Any]]:
        response = self.k8s.core.list_namespaced_pod(
            NAMESPACE, label_selector=f"{SLOT_LABEL}={slot}", _preload_content=False)
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    def records(self) -> list[dict[str, Any]]:
        path = self.cluster.process_node_folder() / RECORDS_FILE
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def phase(self, slot: str) -> str | None:
        return phase(self.k8s, NAMESPACE, slot)

    def slot_spec(self, slot: str) -> dict[str, Any]:
        spec: dict[str, Any] = read(self.k8s, NAMESPACE, slot)["spec"]
        return spec

    def patch_slot(self, slot: str, spec: dict[str, Any]) -> None:
        """A JSON merge patch of the slot's spec (None removes a field)."""
        self.cluster.kubectl("patch", "modelslot", slot, "-n", NAMESPACE, "--type=merge",
                             "-p", json.dumps({"spec": spec}))

    def demand(self, alias: str) -> None:
        """What the router tells the operator when a request for ``alias`` comes."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.cluster.operator_api_port}/v1/demand", method="POST",
            data=json.dumps({"alias": alias}).encode(),
            headers={"Authorization": f"Bearer {self.cluster.api_token_file.read_text()}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202

    def cloud_calls(self) -> list[dict[str, Any]]:
        state = self.cluster.state()
        assert state is not None
        url = f"http://127.0.0.1:{state.ports[local_serving.CLOUD_PROCESS]}/calls"
        with urllib.request.urlopen(url, timeout=5) as response:
            calls: list[dict[str, Any]] = json.loads(response.read())
        return calls


@contextmanager
def local_stack(name: str) -> Iterator[LocalStack]:
    """``dev up`` on a fresh cluster called ``name``, with fast Ready; ``dev down`` after."""
    if llmtools.installed() is None:
        pytest.fail("the LiteLLM proxy and llama-server are not built: run `make serving`")
    cluster = DevCluster(name)
    cluster.down(quiet=True)
    try:
        seconds = local_serving.up(cluster, REPOSITORY_ROOT)
        refuse_foreign_kubeconfig(cluster)
        stack = LocalStack(cluster, TestCluster(cluster), local_serving.endpoint(cluster),
                           seconds)
        print(f"\ncluster {name} up in {seconds:.1f}s")
        wait(lambda: stack.phase("fast") == "Ready", 120, "fast Ready")
        yield stack
    finally:
        cluster.down(quiet=True)
