"""Leader election on the real API server: two operator processes with
``--leader-election`` share one Lease; exactly one is ready and acts, and when it
is killed (no chance to hand the Lease back) the other takes over within two lease
durations and acts on the next change."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from hybrid_compute.control.leader_election import LEASE_NAME, ElectionTiming
from tests.cluster.support import alias, apply, read, slot, wait
from tests.conftest import TestCluster, operator_env

pytestmark = pytest.mark.cluster

TOKEN = "leader-election-test"
LEASE_SECONDS = ElectionTiming().lease_duration.total_seconds()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Replica:
    """One ``hybrid-compute run --leader-election`` process."""

    name: str
    process: subprocess.Popen[bytes]
    health_port: int
    api_port: int
    log: Path

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except (urllib.error.URLError, OSError):
            return 0, {}

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz",
                                        timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def applied_anything(self) -> bool:
        return " applied " in self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def replicas(k8s: TestCluster, namespace: str, sole_operator: None,
             tmp_path: Path) -> Iterator[list[Replica]]:
    """Two operators electing a leader through a Lease in the test's namespace."""
    started: list[Replica] = []
    try:
        for name in ("replica-a", "replica-b"):
            health_port, api_port = _free_port(), _free_port()
            log = tmp_path / f"{name}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [sys.executable, "-m", "hybrid_compute", "run",
                     f"--kubeconfig={k8s.kubeconfig}", f"--health-port={health_port}",
                     f"--api-port={api_port}", "--metrics-port=0", "--min-residency=2s",
                     "--leader-election", f"--leader-election-namespace={namespace}"],
                    stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, cwd=tmp_path,
                    env={**os.environ, **operator_env(k8s.cluster),
                         "KUBECONFIG": str(k8s.kubeconfig), "POD_NAME": name,
                         "HYBRID_COMPUTE_API_TOKEN": TOKEN})
            started.append(Replica(name, process, health_port, api_port, log))
        for replica in started:
            def up_or_gone(candidate: Replica = replica) -> bool:
                return candidate.healthy() or candidate.process.poll() is not None

            wait(up_or_gone, 60, f"{replica.name}'s /healthz")
            assert replica.process.poll() is None, (
                f"{replica.name} exited:\n{replica.log.read_text()[-3000:]}")
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                os.killpg(replica.process.pid, signal.SIGTERM)
                try:
                    replica.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    replica.kill()


def _lease_holder(k8s: TestCluster, namespace: str) -> str:
    lease = client.CoordinationV1Api(k8s.api).read_namespaced_lease(LEASE_NAME, namespace)
    return str(lease.spec.holder_identity or "")


def _model_argument(k8s: TestCluster, namespace: str) -> str:
    deployment = k8s.apps.read_namespaced_deployment("fast", namespace)
    args = deployment.spec.template.spec.containers[0].args
    return str(args[args.index("--model") + 1])


def _caught_up(k8s: TestCluster, namespace: str) -> bool:
    body = read(k8s, namespace, "fast")
    status = body.get("status") or {}
    return bool(status.get("observedGeneration") == body["metadata"]["generation"]
                and status.get("phase") == "Ready")


def test_one_replica_leads_and_the_other_takes_over_when_it_dies(
        k8s: TestCluster, namespace: str, replicas: list[Replica]) -> None:
    def one_ready() -> list[Replica] | None:
        ready = [r for r in replicas if r.ready()]
        return ready if len(ready) == 1 else None

    leader = wait(one_ready, 60, "exactly one ready replica")[0]
    standby = next(r for r in replicas if r is not leader)
    assert _lease_holder(k8s, namespace).startswith(f"{leader.name}_")
    for _ in range(10):  # it stays that way, not a moment's coincidence
        assert (leader.ready(), standby.ready()) == (True, False)
        time.sleep(0.2)

    apply(k8s, namespace, [slot("fast", alias(namespace, "fast"), "7Gi", default=True)])
    wait(lambda: _caught_up(k8s, namespace), 60, "the slot Ready with its Deployment")
    assert _model_argument(k8s, namespace).endswith("fast.gguf")
    assert leader.applied_anything(), "the leader wrote nothing"
    assert not standby.applied_anything(), (
        f"the standby acted:\n{standby.log.read_text()[-2000:]}")

    status, body = standby.get("/v1/state", TOKEN)
    assert status == 503, (status, body)
    assert body["error"].startswith("this operator replica is standing by; the leader is "
                                    f"{leader.name}_"), body
    assert leader.get("/v1/state", TOKEN)[0] == 200

    leader.kill()
    killed = time.monotonic()
    wait(standby.ready, 2 * LEASE_SECONDS + 5, "the standby to take over")
    took = time.monotonic() - killed
    assert took <= 2 * LEASE_SECONDS, f"took over after {took:.1f}s"
    assert _lease_holder(k8s, namespace).startswith(f"{standby.name}_")

    k8s.custom.patch_namespaced_custom_object(
        "hybridcompute.io", "v1alpha1", namespace, "modelslots", "fast",
        {"spec": {"model": {"path": "fast-v2.gguf"}}})
    wait(lambda: _model_argument(k8s, namespace).endswith("fast-v2.gguf"), 60,
         "the new leader to roll the slot's Deployment to the new model")
    wait(lambda: _caught_up(k8s, namespace), 60, "the new leader to write the slot's status")
    assert standby.applied_anything()
