"""The local control plane is a real one: RBAC, admission, scheduling and kwok pods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid_compute.dev import nodes
from tests.cluster.support import wait
from tests.conftest import TEST_CLUSTER_NAME, TestCluster

pytestmark = pytest.mark.cluster


def gpu_deployment(name: str, replicas: int, annotations: dict[str, str] | None = None
                   ) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {"containers": [{
                    "name": "llama-server",
                    "image": "ghcr.io/ggml-org/llama.cpp:server-cuda",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }]},
            },
        },
    }


def pods(k8s: TestCluster, namespace: str, app: str) -> list[Any]:
    return list(k8s.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def test_server_reports_the_pinned_kubernetes_version(k8s: TestCluster) -> None:
    version = json.loads(k8s.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.36.3", version["serverVersion"]
    assert version["clientVersion"]["gitVersion"] == "v1.36.3", version["clientVersion"]


def test_dreamteam_is_ready_with_four_gpu_shares_and_gfd_labels(k8s: TestCluster) -> None:
    node = k8s.core.read_node(nodes.DEFAULT_NODE_NAME)
    ready = {c.type: c.status for c in node.status.conditions}.get("Ready")
    assert ready == "True", f"dreamteam Ready={ready}"
    assert node.status.allocatable["nvidia.com/gpu"] == "4"
    labels = node.metadata.labels
    assert labels["nvidia.com/gpu.memory"] == "24576"
    assert labels["nvidia.com/gpu.count"] == "1"
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-GeForce-RTX-3090"


def test_gpu_pods_are_scheduled_until_the_shares_run_out(k8s: TestCluster,
                                                         namespace: str) -> None:
    k8s.cluster.apply([{**gpu_deployment("one", 1),
                        "metadata": {"name": "one", "namespace": namespace}}])
    running = wait(
        lambda: [p for p in pods(k8s, namespace, "one") if p.status.phase == "Running"],
        30, "a Running pod asking nvidia.com/gpu: 1")
    assert running[0].spec.node_name == nodes.DEFAULT_NODE_NAME

    k8s.cluster.apply([{**gpu_deployment("more", 4),
                        "metadata": {"name": "more", "namespace": namespace}}])

    def pending_with_reason() -> list[str]:
        events = k8s.core.list_namespaced_event(
            namespace, field_selector="reason=FailedScheduling").items
        return [e.message for e in events if "Insufficient nvidia.com/gpu" in e.message]

    messages = wait(pending_with_reason, 30, "FailedScheduling: Insufficient nvidia.com/gpu")
    assert "Insufficient nvidia.com/gpu" in messages[0]

    def phases() -> list[str]:
        return sorted(p.status.phase for p in pods(k8s, namespace, "more"))

    # The scheduler reports the fourth pod before the node has started the other
    # three: wait for them, then the fourth must still be Pending.
    wait(lambda: phases().count("Running") == 3, 30, "three of the four pods Running")
    assert phases() == ["Pending", "Running", "Running", "Running"], phases()


def test_stage_delays_from_annotations_slow_down_readiness_and_termination(
        k8s: TestCluster, namespace: str) -> None:
    annotations = {"pod-ready.stage.kwok.x-k8s.io/delay": "3s",
                   "pod-delete.stage.kwok.x-k8s.io/delay": "3s"}
    manifest = gpu_deployment("slow", 1, annotations)
    manifest["metadata"]["namespace"] = namespace
    k8s.cluster.apply([manifest])
    pod = wait(lambda: [p for p in pods(k8s, namespace, "slow") if p.status.pod_ip],
                   30, "a created pod")[0]
    assert pod.status.phase == "Pending", "ready delay did not hold the pod back"
    running = wait(
        lambda: [p for p in pods(k8s, namespace, "slow") if p.status.phase == "Running"],
        30, "the pod to become Running after its delay")[0]
    ready_at = running.status.start_time
    created_at = running.metadata.creation_timestamp
    assert (ready_at - created_at).total_seconds() >= 2.5, (created_at, ready_at)

    k8s.apps.patch_namespaced_deployment_scale(namespace=namespace, name="slow",
                                               body={"spec": {"replicas": 0}})
    terminating = wait(
        lambda: [p for p in pods(k8s, namespace, "slow") if p.metadata.deletion_timestamp],
        10, "the pod to be Terminating")
    assert terminating, "the pod vanished without a Terminating phase"
    wait(lambda: not pods(k8s, namespace, "slow"), 30, "the pod to be gone")


def test_two_gpu_profile_adds_whole_device_node(k8s: TestCluster) -> None:
    k8s.cluster.add_node("dreamteam-dual", "dual-rtx3090")
    k8s.cluster.wait_nodes_ready(timeout=30)
    node = k8s.core.read_node("dreamteam-dual")
    assert node.status.allocatable["nvidia.com/gpu"] == "2"
    assert node.metadata.labels["nvidia.com/gpu.count"] == "2"
    assert node.metadata.labels["nvidia.com/gpu.replicas"] == "1"
    k8s.core.delete_node("dreamteam-dual")


def test_rbac_is_enforced_for_unprivileged_identities(k8s: TestCluster) -> None:
    result = k8s.kubectl("auth", "can-i", "list", "pods",
                         "--as=system:serviceaccount:default:nobody", check=False)
    assert result.stdout.strip() == "no", result.stdout + result.stderr
    result = k8s.kubectl("get", "pods", "-A", "--as=someone", check=False)
    assert result.returncode != 0 and "forbidden" in result.stderr, result.stderr


def test_admission_webhooks_and_policies_are_available(k8s: TestCluster) -> None:
    resources = k8s.kubectl("api-resources", "--api-group=admissionregistration.k8s.io",
                            "-o", "name").stdout.split()
    assert "validatingwebhookconfigurations.admissionregistration.k8s.io" in resources
    assert "validatingadmissionpolicies.admissionregistration.k8s.io" in resources


def test_kubeconfig_is_private_to_the_cluster(k8s: TestCluster) -> None:
    config = yaml.safe_load(Path(k8s.kubeconfig).read_text())
    assert config["current-context"] == f"hybrid-compute-{TEST_CLUSTER_NAME}"
    assert str(k8s.kubeconfig).endswith(f"clusters/{TEST_CLUSTER_NAME}/kubeconfig")
    assert not str(k8s.kubeconfig).startswith(str(Path.home() / ".kube"))
