"""The chart's RBAC on the real API server: the operator, running as the chart's
ServiceAccount with nothing but the chart's roles, does its whole job, and that
identity cannot read a Secret."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.control import kube
from hybrid_compute.control.leader_election import LEASE_NAME
from hybrid_compute.dev.manifests import helm_template
from hybrid_compute.dev.toolchain import default_toolchain
from tests.cluster.support import alias, operator_healthy, slot
from tests.conftest import OPERATOR_ARGS, REPOSITORY_ROOT, TestCluster, operator_env

pytestmark = pytest.mark.cluster

RELEASE = "rbac-proof"
SERVICE_ACCOUNT = f"{RELEASE}-hybrid-compute"
IDENTITY_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
PEERING_KINDS = ("CustomResourceDefinition", "ClusterKopfPeering")


@dataclass(frozen=True)
class RestrictedOperator:
    """The operator process running as the chart's ServiceAccount."""

    kubeconfig: Path
    api: client.ApiClient
    log: Path

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(default_toolchain().binary("kubectl")), *args],
                              capture_output=True, text=True,
                              env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def chart_objects(namespace: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    rendered = helm_template(REPOSITORY_ROOT, release=RELEASE, namespace=namespace)
    objects = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]
    return [d for d in objects if d["kind"] != "CustomResourceDefinition"
            or d["spec"]["group"] == "kopf.dev"]


def token_kubeconfig(k8s: TestCluster, token: str, path: Path) -> Path:
    """The test cluster's kubeconfig with the ServiceAccount's token as the user."""
    config = yaml.safe_load(k8s.kubeconfig.read_text())
    user = config["contexts"][0]["context"]["user"]
    config["users"] = [{"name": user, "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture
def restricted_operator(k8s: TestCluster, namespace: str, sole_operator: None,
                        tmp_path: Path) -> Iterator[RestrictedOperator]:
    """The chart's identity and peering objects applied with the release in
    ``namespace``; ``hybrid-compute run`` started with a token of that identity."""
    identity = chart_objects(namespace, IDENTITY_KINDS)
    peering = chart_objects(namespace, PEERING_KINDS)
    assert {d["kind"] for d in identity} == set(IDENTITY_KINDS)
    k8s.cluster.apply(identity + peering)
    token = k8s.kubectl("create", "token", SERVICE_ACCOUNT, "-n", namespace,
                        "--duration=1h").stdout.strip()
    kubeconfig = token_kubeconfig(k8s, token, tmp_path / "kubeconfig")
    log = tmp_path / "operator.log"
    health_port = _free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "hybrid_compute", "run", f"--kubeconfig={kubeconfig}",
             f"--health-port={health_port}", f"--api-port={_free_port()}",
             "--metrics-port=0", *OPERATOR_ARGS,
             # As in the chart: the Lease in the release's namespace, under its Role.
             "--leader-election", f"--leader-election-namespace={namespace}"],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=tmp_path,
            env={**os.environ, **operator_env(k8s.cluster), "KUBECONFIG": str(kubeconfig),
                 "HYBRID_COMPUTE_API_TOKEN": "rbac-proof"})
    try:
        _wait_for("the restricted operator's /healthz",
                  lambda: operator_healthy(health_port) or process.poll() is not None)
        assert process.poll() is None, f"the operator exited:\n{log.read_text()[-3000:]}"
        yield RestrictedOperator(kubeconfig, kube.load_client(str(kubeconfig)), log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        cluster_scoped = [d for d in identity + peering if "namespace" not in d["metadata"]]
        for document in reversed(cluster_scoped):
            k8s.kubectl("delete", document["kind"].lower(), document["metadata"]["name"],
                        "--ignore-not-found", "--wait=false", check=False)


def route_policy(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "hybridcompute.io/v1alpha1", "kind": "RoutePolicy",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {
            "cloudModels": [{"alias": "cloud/fast", "model": "groq/llama-3.1-8b-instant",
                             "apiKeySecretRef": {"name": "cloud-api-keys",
                                                 "key": "GROQ_API_KEY"}}],
            "fallbacks": [{"alias": alias(namespace, "fast"), "to": ["cloud/fast"]}],
            "litellm": {"configMapName": "litellm-config", "deploymentName": "litellm",
                        "masterKeySecretRef": {"name": "litellm-secrets",
                                               "key": "LITELLM_MASTER_KEY"}},
        },
    }


def gpu_workload(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "hybridcompute.io/v1alpha1", "kind": "GpuWorkload",
        "metadata": {"name": "tts", "namespace": namespace},
        "spec": {"class": "TTS", "vram": "2Gi", "preemptible": True, "kind": "Job",
                 "template": {"spec": {"restartPolicy": "Never", "containers": [
                     {"name": "tts", "image": "registry.example.com/tts:1"}]}}},
    }


def test_the_charts_rbac_is_enough_to_operate_and_keeps_secrets_out_of_reach(
        k8s: TestCluster, namespace: str, restricted_operator: RestrictedOperator) -> None:
    k8s.kubectl("create", "secret", "generic", "cloud-api-keys", "-n", namespace,
                "--from-literal=GROQ_API_KEY=not-a-real-key")
    litellm = [d for d in yaml.safe_load_all(helm_template(
        REPOSITORY_ROOT, release=RELEASE, namespace=namespace)) if d
        and d["kind"] == "Deployment" and d["metadata"]["name"] == "litellm"]
    fast = slot("fast", alias(namespace, "fast"), "7Gi", default=True, fallback="cloud/fast")
    k8s.cluster.apply([*litellm, {**fast, "metadata": {"name": "fast", "namespace": namespace}},
                       gpu_workload(namespace), route_policy(namespace)])

    def slot_ready() -> dict[str, Any] | None:
        body: dict[str, Any] = k8s.custom.get_namespaced_custom_object(
            "hybridcompute.io", "v1alpha1", namespace, "modelslots", "fast")
        return body if body.get("status", {}).get("phase") == "Ready" else None

    ready = _wait_for("slot fast to be Ready", slot_ready, timeout=90)
    assert ready["status"]["observedGeneration"] == ready["metadata"]["generation"]
    k8s.apps.read_namespaced_deployment("fast", namespace)
    k8s.core.read_namespaced_service("fast", namespace)

    def workload_started() -> str | None:
        body = k8s.custom.get_namespaced_custom_object(
            "hybridcompute.io", "v1alpha1", namespace, "gpuworkloads", "tts")
        phase: str | None = body.get("status", {}).get("phase")
        return phase if phase in ("Admitted", "Running", "Succeeded") else None

    _wait_for("workload tts to be admitted", workload_started)
    client.BatchV1Api(k8s.api).read_namespaced_job("tts", namespace)

    def litellm_configured() -> bool:
        deployment = k8s.apps.read_namespaced_deployment("litellm", namespace)
        annotations = deployment.spec.template.metadata.annotations or {}
        return "hybridcompute.io/config-hash" in annotations

    _wait_for("the operator's LiteLLM ConfigMap and rollout annotation", litellm_configured)
    config_map = k8s.core.read_namespaced_config_map("litellm-config", namespace)
    assert "not-a-real-key" not in json.dumps(config_map.data)

    # The same identity cannot read Secrets, neither the one LiteLLM uses nor any other.
    restricted = client.CoreV1Api(restricted_operator.api)
    for attempt in (lambda: restricted.read_namespaced_secret("cloud-api-keys", namespace),
                    lambda: restricted.list_namespaced_secret(namespace),
                    lambda: restricted.list_secret_for_all_namespaces()):
        with pytest.raises(ApiException) as refused:
            attempt()
        assert refused.value.status == 403
    for verb, target, expected in (
            ("get", "secrets", "no"), ("list", "secrets", "no"), ("watch", "secrets", "no"),
            ("patch", "configmap/some-other-config", "no"),
            ("patch", "configmap/litellm-config", "yes"),
            ("delete", "modelslots.hybridcompute.io", "no")):
        answer = restricted_operator.kubectl("auth", "can-i", verb, target, "-n", namespace)
        assert answer.stdout.strip() == expected, f"can-i {verb} {target}: {answer.stdout}"

    # kopf's peering keep-alive went through: the operator sees its peers.
    def peering_status() -> dict[str, Any] | None:
        body: dict[str, Any] = k8s.custom.get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "hybrid-compute")
        return body.get("status") or None

    assert _wait_for("the operator's keep-alive in ClusterKopfPeering hybrid-compute",
                     peering_status, timeout=30)
    lease = client.CoordinationV1Api(k8s.api).read_namespaced_lease(LEASE_NAME, namespace)
    assert lease.spec.holder_identity, "the operator acted without holding the Lease"

    log = restricted_operator.log.read_text()
    # A word of its own: a port such as 40387 in the log is no refusal.
    assert "Forbidden" not in log and not re.search(r"\b403\b", log), (
        f"the operator met a permission it lacks:\n{log[-3000:]}")
