"""Fixtures for the serving tests: the real LiteLLM proxy and real llama-server
processes (both built once into the cache by ``make serving``), tiny GGUF models
written here, and the stand-in cloud.

Two ways to run them beside the control plane, chosen per test module:

- on the suite's kwok cluster (``k8s``), where slots' pods are only simulated and
  the tests start llama-servers on fixed ports themselves: enough where a test
  needs the operator's decisions and the request path, not a real load;
- on a cluster of its own whose GPU node is the process node (``node_cluster``):
  every slot's pod runs a real llama-server that loads its model, its readiness is
  that server's ``/health``, and deleting the pod stops the process, so swaps,
  drains and evaluations are real.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybrid_compute.api.labels import SLOT_LABEL
from hybrid_compute.dev import llmtools
from hybrid_compute.dev.bootstrap import bootstrap_manifests
from hybrid_compute.dev.cloud_stand_in import CloudStandIn
from hybrid_compute.dev.cluster import DevCluster
from hybrid_compute.dev.process_node import RECORDS_FILE
from hybrid_compute.dev.service_proxy import proxy_prefix
from hybrid_compute.dev.tiny_models import write_tiny_model
from tests.conftest import (
    REPOSITORY_ROOT,
    TEST_CLUSTER_NAME,
    OperatorHandle,
    TestCluster,
    operator_env,
    refuse_foreign_kubeconfig,
)

NODE_CLUSTER_NAME = f"{TEST_CLUSTER_NAME}-process"
NODE_OPERATOR_ARGS = ("--min-residency=2s",)
"""The suite's operator settings; Services are reached through the node's proxy."""


@pytest.fixture(scope="session")
def serving_tools() -> llmtools.ServingTools:
    tools = llmtools.installed()
    if tools is None:
        pytest.fail("the LiteLLM proxy and llama-server are not built: run `make serving` "
                    "(`make test` does it first)")
    return tools


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def cloud() -> Iterator[CloudStandIn]:
    with CloudStandIn() as stand_in:
        yield stand_in


class LlamaServer:
    """One llama-server process on a loopback port."""

    def __init__(self, binary: Path, model: Path, port: int, log: Path,
                 embedding: bool = False) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        args = [str(binary), "--model", str(model), "--host", "127.0.0.1",
                "--port", str(port), "--ctx-size", "2048", "--parallel", "2",
                "--threads", "1", "--metrics"]
        if embedding:
            args += ["--embeddings", "--pooling", "mean"]
        self.log = log
        self.process = subprocess.Popen(args, stdout=log.open("ab"),
                                        stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"llama-server on {self.port} not healthy: {self.log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
        self.cluster.stop_operator()
        self.cluster.start_operator(extra_args=[*NODE_OPERATOR_ARGS, *extra_args],
                                    extra_env=operator_env(self.cluster))
        state = self.cluster.state()
        assert state is not None
        return OperatorHandle(self.cluster, state.ports["operator-health"],
                              state.ports["operator-api"],
                              self.cluster.api_token_file.read_text().strip(),
                              state.ports["operator-metrics"])

    def stop_operator(self) -> None:
        self.cluster.stop_operator()


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
