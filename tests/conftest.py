"""Shared fixtures. Cluster tests (marker ``cluster``) run against the project's own
local control plane, started once per session (or reused when already up)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from hybrid_compute import kube
from hybrid_compute.dev.bootstrap import bootstrap_manifests
from hybrid_compute.dev.cluster import DevCluster

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
TEST_CLUSTER_NAME = "test"


class TestCluster:
    """The running test cluster: kubectl, API clients and helpers."""

    __test__ = False

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig
        self.api = kube.load_client(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True):  # type: ignore[no-untyped-def]
        return self.cluster.kubectl(*args, input_text=input_text, check=check)


def refuse_foreign_kubeconfig(cluster: DevCluster) -> None:
    """Tests may only ever talk to the cluster this suite started."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    if config.get("current-context") != cluster.context_name or server != cluster.server:
        raise RuntimeError(
            f"refusing to run cluster tests against {server} "
            f"(context {config.get('current-context')!r}): not the test cluster")
    if not server.startswith("https://127.0.0.1:"):
        raise RuntimeError(f"refusing a non-loopback test cluster at {server}")


@pytest.fixture(scope="session")
def k8s() -> Iterator[TestCluster]:
    """The local control plane with the CRDs installed and the dreamteam node Ready."""
    cluster = DevCluster(TEST_CLUSTER_NAME)
    seconds = cluster.up(manifests=bootstrap_manifests(REPOSITORY_ROOT, samples=False),
                         log=True)
    refuse_foreign_kubeconfig(cluster)
    print(f"\ntest cluster ready in {seconds:.1f}s at {cluster.server}")
    yield TestCluster(cluster)
    if os.environ.get("HYBRID_COMPUTE_KEEP_TEST_CLUSTER") != "1":
        cluster.down(quiet=True)


@pytest.fixture
def namespace(k8s: TestCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    readable = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())
    name = f"t-{readable[:40].strip('-')}-{uuid.uuid4().hex[:6]}"
    k8s.kubectl("create", "namespace", name)
    yield name
    k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)
