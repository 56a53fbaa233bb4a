"""The local control plane's pure parts: node profiles, build inputs, error messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_compute.dev import nodes, toolchain

KUBERNETES_GO_MOD = """module k8s.io/kubernetes

require (
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/kube-scheduler => ./staging/src/k8s.io/kube-scheduler
\tgithub.com/example/x => github.com/example/y v1.0.0
)
"""


def test_staging_modules_are_read_from_the_kubernetes_go_mod() -> None:
    assert toolchain.parse_staging_modules(KUBERNETES_GO_MOD) == [
        "k8s.io/api", "k8s.io/client-go", "k8s.io/kube-scheduler"]


def test_version_ldflags_name_the_pinned_release() -> None:
    flags = toolchain._kubernetes_ldflags()
    assert f"k8s.io/component-base/version.gitVersion=v{toolchain.KUBERNETES_VERSION}" in flags
    assert "k8s.io/component-base/version.gitMinor=36" in flags


def test_cache_folder_is_outside_the_repository_and_keyed_by_versions(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYBRID_COMPUTE_CACHE", str(tmp_path))
    root = toolchain.default_toolchain().root
    assert root.parent == tmp_path
    assert toolchain.KUBERNETES_VERSION in root.name and toolchain.ETCD_VERSION in root.name
    assert not toolchain.default_toolchain().is_complete()


def test_missing_go_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(toolchain.ToolchainError, match="Go is not installed"):
        toolchain._find_go()


def test_cli_reports_missing_go_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "HYBRID_COMPUTE_CACHE": str(tmp_path / "c")}
    result = subprocess.run([sys.executable, "-m", "hybrid_compute", "dev", "up"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: Go is not installed"), result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_module_proxy_is_explained(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    if not toolchain.shutil.which("go"):
        pytest.skip("needs the go command, which this machine lacks")
    monkeypatch.setenv("GOPROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "modcache"))
    with pytest.raises(toolchain.ToolchainError, match="module proxy"):
        toolchain._run_go("go", ["mod", "download", "-json", "example.invalid/nothing@v1.0.0"],
                          tmp_path, "downloading a module")


def test_dreamteam_profile_matches_an_rtx_3090_with_time_slicing() -> None:
    manifest = nodes.node_manifest("dreamteam", nodes.PROFILES["rtx3090"])
    labels = manifest["metadata"]["labels"]
    assert labels["nvidia.com/gpu.memory"] == "24576"
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert manifest["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert manifest["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}


def test_two_gpu_profile_uses_whole_devices() -> None:
    profile = nodes.PROFILES["dual-rtx3090"]
    manifest = nodes.node_manifest("dual", profile)
    assert manifest["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert manifest["metadata"]["labels"]["nvidia.com/gpu.sharing-strategy"] == "none"
