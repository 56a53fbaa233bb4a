"""The request side as the serving tests run it: a namespace on the process-node
cluster with the chart-shaped LiteLLM Deployment (the real proxy with the router
hook), ModelSlots whose pods are real llama-servers, a RoutePolicy whose cloud
models are the stand-in, and the operator; and how the tests talk to it."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hybrid_compute.dev import local_serving
from hybrid_compute.dev.cloud_stand_in import CloudStandIn
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME
from hybrid_compute.dev.openai_call import Reply, post_json
from hybrid_compute.dev.tiny_models import write_tiny_model
from tests.cluster.support import apply, phase, wait
from tests.conftest import OperatorHandle, TestCluster
from tests.serving.conftest import LITELLM_SELECTOR, NodeCluster, policy_config_hash

GROUP = "hybridcompute.io"
PORT = 8080
"""Each pod of the process node has an address of its own: every slot can use it."""
ROUTER_REFRESH = 2.5
"""The router reads the operator's state every 2 s."""
MODEL_FILE = "tiny.gguf"


@dataclass
class Stack:
    k8s: TestCluster
    node: NodeCluster
    operator: OperatorHandle
    namespace: str
    cloud: CloudStandIn
    master_key: str
    cloud_key: str

    @property
    def litellm_url(self) -> str:
        return self.node.litellm_url(self.namespace)

    def call(self, path: str, body: dict[str, Any], timeout: float = 60,
             headers: dict[str, str] | None = None, api_key: str | None = None) -> Reply:
        """POSTs ``body`` with ``api_key``, by default LiteLLM's master key."""
        return post_json(f"{self.litellm_url}{path}", body, api_key or self.master_key,
                         timeout, headers)

    def chat(self, model: str, content: str = "Say hello.", api_key: str | None = None,
             **metadata: Any) -> Reply:
        body: dict[str, Any] = {"model": model, "max_tokens": 8,
                                "messages": [{"role": "user", "content": content}]}
        if metadata:
            body["metadata"] = metadata
        return self.call("/v1/chat/completions", body, api_key=api_key)

    def policy(self) -> dict[str, Any]:
        found: dict[str, Any] = self.k8s.custom.get_namespaced_custom_object(
            GROUP, "v1alpha1", self.namespace, "routepolicies", "hybrid")
        return found

    def config_hash(self) -> str | None:
        return policy_config_hash(self.k8s, self.namespace)

    def ensure_ready(self, slot: str, alias: str) -> None:
        if phase(self.k8s, self.namespace, slot) != "Ready":
            self.operator.demand(alias)
            wait(lambda: phase(self.k8s, self.namespace, slot) == "Ready", 90,
                 f"{slot} Ready")
        time.sleep(ROUTER_REFRESH)

    def restart_litellm(self) -> None:
        """LiteLLM's pod deleted, as a node drain or an eviction would: its
        Deployment makes a new one, a new process."""
        before = self.wait_litellm_serving()
        self.k8s.kubectl("delete", "pod", "-n", self.namespace, "-l", LITELLM_SELECTOR,
                         "--wait=false")
        wait(lambda: self.node.litellm_serving(self.namespace, self.config_hash())
             not in (None, before), 240, "a new LiteLLM process serving")

    def wait_litellm_serving(self) -> int:
        """Until LiteLLM's one pod runs the current rendering; its pid."""
        wait(lambda: self.config_hash() is not None, 60, "a LiteLLM config rendered")
        return self.node.wait_litellm_serving(self.namespace, self.config_hash())


    def condition(self, type_: str) -> str | None:
        return policy_condition(self.k8s, self.namespace, type_)


def model_slot(name: str, alias: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelSlot", "metadata": {"name": name},
            "spec": {"alias": alias, "model": {"path": MODEL_FILE, "servedName": name},
                     "server": {"port": PORT}, "minResidency": "1s", **spec}}


def route_policy(cloud_models: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """The RoutePolicy ``hybrid``, reading LiteLLM's master key where
    :func:`local_serving.litellm_objects` puts it."""
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "RoutePolicy",
            "metadata": {"name": "hybrid"},
            "spec": {"cloudModels": cloud_models,
                     "litellm": {"masterKeySecretRef": {
                         "name": local_serving.MASTER_KEY_SECRET,
                         "key": local_serving.MASTER_KEY_KEY}},
                     **spec}}


def cloud_model(cloud_url: str, alias: str, name: str, **extra: Any) -> dict[str, Any]:
    """A cloud model the stand-in answers, free unless ``extra`` prices it."""
    return {"alias": alias, "model": f"openai/{name}", "apiBase": cloud_url,
            "inputCostPerMillion": 0, "outputCostPerMillion": 0, **extra}


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def policy_condition(k8s: TestCluster, namespace: str, type_: str) -> str | None:
    try:
        body = k8s.custom.get_namespaced_custom_object(GROUP, "v1alpha1", namespace,
                                                       "routepolicies", "hybrid")
    except Exception:
        return None
    conditions = {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}
    found: str | None = conditions.get(type_, {}).get("status")
    return found


@contextmanager
def litellm_stack(node: NodeCluster, cloud: CloudStandIn, objects: Sequence[dict[str, Any]],
                  operator_args: Sequence[str] = (), prefix: str = "serving",
                  cloud_key: str = "",
                  litellm_extras: local_serving.LiteLLMExtras | None = None,
                  ) -> Iterator[Stack]:
    """A fresh namespace holding ``objects`` (slots, the policy, Secrets, ConfigMaps)
    beside LiteLLM's Deployment (with what ``litellm_extras`` adds to it, as the
    chart's values would), served once ``fast`` is Ready, the policy Ready and
    LiteLLM runs its rendering; torn down with its pods, and the operator stopped."""
    k8s = node.k8s
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    write_tiny_model(node.models / MODEL_FILE)
    operator = node.start_operator(*operator_args)
    master_key = f"sk-master-{uuid.uuid4().hex}"
    k8s.kubectl("create", "namespace", namespace)
    try:
        apply(k8s, namespace, [
            *local_serving.litellm_objects(f"http://127.0.0.1:{operator.api_port}",
                                           operator.token, master_key, DEFAULT_NODE_NAME,
                                           litellm_extras or local_serving.LiteLLMExtras()),
            *objects])
        wait(lambda: phase(k8s, namespace, "fast") == "Ready", 90, "fast Ready")
        wait(lambda: policy_condition(k8s, namespace, "Ready") == "True", 120,
             "RoutePolicy Ready")
        stack = Stack(k8s, node, operator, namespace, cloud, master_key, cloud_key)
        stack.wait_litellm_serving()
        yield stack
    finally:
        k8s.release_namespace(namespace)
        node.stop_operator()
