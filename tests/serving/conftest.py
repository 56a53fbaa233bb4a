"""Fixtures for the serving tests: the real LiteLLM proxy and real llama-server
processes (both built once into the cache by ``make serving``), the stand-in
cloud, and a cluster of their own whose GPU node is the process node
(``node_cluster``): every pod runs for real (a slot's llama-server loads its
model and its readiness is that server's ``/health``; LiteLLM's Deployment runs
the proxy with its ConfigMap and Secrets), and deleting a pod stops its process,
so swaps, drains, rollouts and evaluations are real.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybrid_compute.api.labels import CONFIG_HASH_ANNOTATION, SLOT_LABEL
from hybrid_compute.dev import llmtools, local_serving
from hybrid_compute.dev.bootstrap import bootstrap_manifests
from hybrid_compute.dev.cloud_stand_in import CloudStandIn
from hybrid_compute.dev.cluster import DevCluster
from hybrid_compute.dev.process_node import RECORDS_FILE
from hybrid_compute.dev.service_proxy import proxy_prefix
from tests.cluster.support import wait
from tests.conftest import (
    REPOSITORY_ROOT,
    TEST_CLUSTER_NAME,
    OperatorHandle,
    TestCluster,
    refuse_foreign_kubeconfig,
    start_operator,
)

NODE_CLUSTER_NAME = f"{TEST_CLUSTER_NAME}-process"
NODE_OPERATOR_ARGS = ("--min-residency=2s",)
"""The suite's operator settings; Services are reached through the node's proxy."""
LITELLM_SELECTOR = ",".join(f"{k}={v}" for k, v in local_serving.LITELLM_LABELS.items())


@pytest.fixture(scope="session")
def serving_tools() -> llmtools.ServingTools:
    tools = llmtools.installed()
    if tools is None:
        pytest.fail("the LiteLLM proxy and llama-server are not built: run `make serving` "
                    "(`make test` does it first)")
    return tools


@pytest.fixture(scope="session")
def cloud() -> Iterator[CloudStandIn]:
    with CloudStandIn() as stand_in:
        yield stand_in


def pod_pid(pod: dict[str, Any]) -> int | None:
    """The process id of a process-node pod's (first) container, while it runs."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    container_id = statuses[0].get("containerID") or ""
    return int(container_id.removeprefix("process://")) if container_id else None


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@dataclass
class NodeCluster:
    """A local cluster whose GPU node ``dreamteam`` is the process node, with the
    CRDs; its pods mount ``models`` as their model folder."""

    k8s: TestCluster
    models: Path

    @property
    def cluster(self) -> DevCluster:
        return self.k8s.cluster

    def service_url(self, namespace: str, service: str, port: int) -> str:
        """``http://{service}.{namespace}.svc:{port}`` through the node's proxy."""
        proxy = self.cluster.service_proxy_port
        assert proxy is not None
        return f"{proxy_prefix(proxy)}/{namespace}/{service}/{port}"

    def pods(self, namespace: str, slot: str) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"{SLOT_LABEL}={slot}")
        items: list[dict[str, Any]] = self.cluster.api_get(
            f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")["items"]
        return items

    def records(self) -> list[dict[str, Any]]:
        """Every start and exit of a process on the node, in order."""
        path = self.cluster.process_node_folder() / RECORDS_FILE
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def started(self, pid: int | None) -> dict[str, Any]:
        return next(r for r in self.records() if r["event"] == "started" and r["pid"] == pid)

    def exited(self, pid: int | None) -> dict[str, Any] | None:
        return next((r for r in self.records() if r["event"] == "exited" and r["pid"] == pid),
                    None)

    def start_operator(self, *extra_args: str) -> OperatorHandle:
        """The operator as the suite runs it, on this cluster; stop it with
        ``stop_operator``."""
        return start_operator(self.cluster, (*NODE_OPERATOR_ARGS, *extra_args))

    def stop_operator(self) -> None:
        self.cluster.stop_operator()

    def litellm_url(self, namespace: str) -> str:
        """The chart-shaped LiteLLM Deployment's Service, through the node's proxy."""
        return self.service_url(namespace, local_serving.LITELLM_NAME,
                                local_serving.LITELLM_PORT)

    def litellm_pods(self, namespace: str) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(LITELLM_SELECTOR)
        items: list[dict[str, Any]] = self.cluster.api_get(
            f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")["items"]
        return items

    def litellm_serving(self, namespace: str, config_hash: str | None) -> int | None:
        """The pid of LiteLLM's one pod when it runs the config rendered as
        ``config_hash`` and answers its readiness probe; None until then."""
        pods = self.litellm_pods(namespace)
        if len(pods) != 1 or pods[0]["metadata"].get("deletionTimestamp"):
            return None
        annotations = pods[0]["metadata"].get("annotations") or {}
        if config_hash is None or annotations.get(CONFIG_HASH_ANNOTATION) != config_hash:
            return None
        return pod_pid(pods[0]) if pod_ready(pods[0]) else None

    def wait_litellm_serving(self, namespace: str, config_hash: str | None,
                             timeout: float = 240) -> int:
        """Waits for :meth:`litellm_serving`; returns LiteLLM's pid."""
        wait(lambda: self.litellm_serving(namespace, config_hash) is not None, timeout,
             f"LiteLLM serving the config rendered as {config_hash}")
        pid = self.litellm_serving(namespace, config_hash)
        assert pid is not None
        return pid

    def litellm_starts(self, namespace: str) -> list[int]:
        """The pids of every LiteLLM process the node started in ``namespace``."""
        return [r["pid"] for r in self.records()
                if r["event"] == "started" and r.get("namespace") == namespace
                and r["pod"].startswith(f"{local_serving.LITELLM_NAME}-")]

    def pod_logs(self, namespace: str) -> str:
        """Everything the containers of ``namespace``'s pods wrote on the node."""
        pods = self.cluster.process_node_folder() / "pods"
        return "".join(path.read_text(errors="replace")
                       for path in sorted(pods.glob(f"{namespace}_*/*.log")))


@pytest.fixture(scope="session")
def k8s(node_cluster: NodeCluster) -> TestCluster:
    """The serving tests' cluster: the process node's, not the suite's kwok one."""
    return node_cluster.k8s


def policy_config_hash(k8s: TestCluster, namespace: str, name: str = "hybrid") -> str | None:
    """The hash of the LiteLLM config the operator rendered for a RoutePolicy."""
    policy = k8s.custom.get_namespaced_custom_object("hybridcompute.io", "v1alpha1",
                                                     namespace, "routepolicies", name)
    found: str | None = (policy.get("status") or {}).get("configHash")
    return found


@pytest.fixture(scope="session")
def node_cluster(serving_tools: llmtools.ServingTools,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """Started once for the session (and stopped at its end), beside the suite's
    kwok cluster."""
    cluster = DevCluster(NODE_CLUSTER_NAME)
    cluster.down(quiet=True)
    models = tmp_path_factory.mktemp("node-models")
    try:
        seconds = cluster.up(manifests=bootstrap_manifests(REPOSITORY_ROOT, samples=False),
                             gpu_node_backend="process", models=models, log=True)
        refuse_foreign_kubeconfig(cluster)
        print(f"\nprocess-node cluster ready in {seconds:.1f}s at {cluster.server}")
        yield NodeCluster(TestCluster(cluster), models)
    finally:
        cluster.down(quiet=True)
