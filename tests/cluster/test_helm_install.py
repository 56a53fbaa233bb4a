"""``helm install`` of the chart into the local control plane succeeds (kwok plays
the kubelet, so its Deployments and the GPU agent DaemonSet become Ready), and
``helm uninstall`` leaves nothing of the release behind, cluster-scoped objects
included.

The test cluster already has the CRDs (installed by the cluster bootstrap, not by
helm), so the release is installed with ``crds.enabled=false``; the CRD templates
themselves are checked by the server-side dry run in test_chart_render.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from hybrid_compute.dev.helm import ensure_helm
from tests.conftest import REPOSITORY_ROOT, TestCluster

pytestmark = pytest.mark.cluster

CHART = REPOSITORY_ROOT / "charts" / "hybrid-compute"
INSTANCE_LABEL = "app.kubernetes.io/instance"
NAMESPACED_KINDS = ("deployments,daemonsets,services,serviceaccounts,configmaps,roles,"
                    "rolebindings,pods")
CLUSTER_KINDS = "clusterroles,clusterrolebindings"


def _helm(k8s: TestCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ensure_helm()), "--kubeconfig", str(k8s.kubeconfig), *args],
                          capture_output=True, text=True, timeout=300)


def _names(k8s: TestCluster, kinds: str, release: str, namespace: str | None) -> list[str]:
    scope = ["-n", namespace] if namespace else []
    result = k8s.kubectl("get", kinds, *scope, "-l", f"{INSTANCE_LABEL}={release}",
                         "-o", "json")
    items = json.loads(result.stdout)["items"]
    return [f"{i['kind']}/{i['metadata']['name']}" for i in items
            if i["metadata"].get("deletionTimestamp") is None or i["kind"] != "Pod"]


def test_helm_install_succeeds_and_uninstall_removes_the_release(
        k8s: TestCluster, namespace: str) -> None:
    release = f"hc-{namespace.rsplit('-', 1)[-1]}"
    installed = _helm(k8s, "install", release, str(CHART), "--namespace", namespace,
                      "--set", "crds.enabled=false", "--wait", "--timeout", "180s")
    try:
        assert installed.returncode == 0, installed.stderr
        status = _helm(k8s, "status", release, "--namespace", namespace, "-o", "json")
        assert json.loads(status.stdout)["info"]["status"] == "deployed"
        present = _names(k8s, NAMESPACED_KINDS, release, namespace)
        for expected in ("Deployment/", "DaemonSet/", "Service/", "ServiceAccount/",
                         "Role/", "RoleBinding/"):
            assert any(name.startswith(expected) for name in present), (expected, present)
        cluster_scoped = _names(k8s, CLUSTER_KINDS, release, None)
        assert any(n.startswith("ClusterRole/") for n in cluster_scoped), cluster_scoped
        ready = json.loads(k8s.kubectl("get", "deployments", "-n", namespace, "-l",
                                       f"{INSTANCE_LABEL}={release}", "-o", "json").stdout)
        for deployment in ready["items"]:
            wanted = deployment["spec"].get("replicas", 1)
            assert deployment["status"].get("readyReplicas", 0) == wanted, \
                deployment["metadata"]["name"]
    finally:
        removed = _helm(k8s, "uninstall", release, "--namespace", namespace, "--wait",
                        "--timeout", "120s")
    assert removed.returncode == 0, removed.stderr
    assert _names(k8s, NAMESPACED_KINDS.replace(",pods", ""), release, namespace) == []
    assert _names(k8s, CLUSTER_KINDS, release, None) == []
    listed = _helm(k8s, "list", "--namespace", namespace, "-q")
    assert release not in listed.stdout.split()
