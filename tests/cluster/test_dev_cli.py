"""``hybrid-compute dev up/status/kubeconfig/down`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_compute.dev.cluster import DevCluster, _pids_mentioning

pytestmark = pytest.mark.cluster

CLUSTER = "cli-test"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybrid_compute", *args],
                          capture_output=True, text=True, timeout=300)


def kube_config_fingerprint() -> tuple[bool, float]:
    path = Path.home() / ".kube" / "config"
    return (path.exists(), path.stat().st_mtime if path.exists() else 0.0)


def test_dev_up_status_kubeconfig_and_down_leave_nothing_behind() -> None:
    before = kube_config_fingerprint()
    cluster = DevCluster(CLUSTER)
    try:
        up = cli("dev", "up", "--name", CLUSTER, "--no-samples")
        assert up.returncode == 0, up.stderr
        assert f"cluster '{CLUSTER}' ready in" in up.stdout, up.stdout
        assert f"export KUBECONFIG={cluster.kubeconfig}" in up.stdout
        print(up.stdout.splitlines()[0])

        status = cli("dev", "status", "--name", CLUSTER)
        assert status.returncode == 0, status.stdout + status.stderr
        described = json.loads(status.stdout)
        assert described["running"] is True
        assert all(p["alive"] for p in described["processes"].values()), described
        assert set(described["processes"]) >= {"etcd", "kube-apiserver", "kube-scheduler",
                                                "kube-controller-manager", "kwok", "operator"}

        path = cli("dev", "kubeconfig", "--name", CLUSTER)
        assert path.stdout.strip() == str(cluster.kubeconfig)

        nodes = cli("dev", "kubectl", "--name", CLUSTER, "get", "nodes", "-o", "name")
        assert nodes.stdout.split() == ["node/dreamteam"], nodes.stdout + nodes.stderr
    finally:
        down = cli("dev", "down", "--name", CLUSTER)
    assert down.returncode == 0, down.stderr
    assert _pids_mentioning(str(cluster.folder)) == []
    assert not cluster.folder.exists()
    assert kube_config_fingerprint() == before, "~/.kube/config was touched"
    status = cli("dev", "status", "--name", CLUSTER)
    assert status.returncode == 1 and json.loads(status.stdout)["running"] is False
