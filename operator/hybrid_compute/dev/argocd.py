"""A real Argo CD (application controller, repo server and the Redis they share)
run as processes against a local cluster, to prove the GitOps claims: automated
sync with server-side apply, no drift after the operator's own writes, and the
README's health checks.

Argo CD is built like the control plane: once per version from the Go module
proxy into the cache folder. ``github.com/argoproj/argo-cd/v3`` replaces its
gitops-engine with the relative path ``./gitops-engine``, which a module that
requires it cannot follow, so it is built from a wrapper module that pins that
nested module to its published tag and repeats upstream's other replaces (a
dependency's replaces do not apply to the module that requires it). Argo CD
3.6 needs Go 1.27, which go fetches from the module proxy as a toolchain module.
The repo server runs ``kustomize`` and ``helm`` from its PATH; kustomize is
built the same way, helm is the chart tests' own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hybrid_compute.dev.cluster import DevCluster
from hybrid_compute.dev.go_tools import GoCommand
from hybrid_compute.dev.helm import ensure_helm
from hybrid_compute.dev.toolchain import (
    ToolchainError,
    _find_go,
    _run_go,
    _write_go_mod,
    cache_home,
    install_with_apt,
)

ARGOCD_VERSION = "3.6.1"
ARGOCD_MODULE = "github.com/argoproj/argo-cd/v3"
ARGOCD_GO_TOOLCHAIN = "go1.27.4"
# 5.8.3 needs a kube-openapi pseudo-version the module proxy does not serve.
KUSTOMIZE = GoCommand("kustomize", "sigs.k8s.io/kustomize/kustomize/v5",
                      "sigs.k8s.io/kustomize/kustomize/v5", "5.8.2")
ARGOCD_NAMESPACE = "argocd"
# The one binary acts as the command its file is named after, as in Argo CD's image.
COMMANDS = ("argocd-application-controller", "argocd-repo-server")
# The repo server runs this script of the module's (as Argo CD's image installs it)
# on every revision, GnuPG or not.
SCRIPTS = ("git-verify-wrapper.sh",)

_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+(\S+)(?:\s+(v\S+))?\s*$", re.MULTILINE)


def wrapper_replaces(upstream_go_mod: str, version: str) -> list[str]:
    """Upstream's ``replace`` directives for a wrapper module: a module replaced by
    a relative path is pinned to its own tag of the same release."""
    lines = []
    for module, target, target_version in _REPLACE.findall(upstream_go_mod):
        if target.startswith(("./", "../")):
            lines.append(f"replace {module} => {module} v{version}")
        else:
            lines.append(f"replace {module} => {target} {target_version}".rstrip())
    return lines


@dataclass(frozen=True)
class ArgoCdBuild:
    """Where one Argo CD version's binary, command links and CRDs live."""

    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def crds_dir(self) -> Path:
        return self.root / "crds"

    def command(self, name: str) -> Path:
        return self.bin_dir / name

    def is_built(self) -> bool:
        return (self.root / "complete").exists() and all(
            self.command(name).exists() for name in (*COMMANDS, *SCRIPTS))

    def crds(self) -> list[dict[str, Any]]:
        return [yaml.safe_load(path.read_text())
                for path in sorted(self.crds_dir.glob("*-crd.yaml"))]


def default_build() -> ArgoCdBuild:
    return ArgoCdBuild(cache_home() / f"argocd-v{ARGOCD_VERSION}")


def ensure_argocd(log: bool = True) -> ArgoCdBuild:
    """The cached Argo CD build with kustomize and helm beside it, built first when
    missing (about 8 minutes on two cores)."""
    build = default_build()
    if build.is_built():
        return build
    go = _find_go()
    started = time.monotonic()
    if log:
        print(f"building Argo CD v{ARGOCD_VERSION} from Go modules (once per version) ...",
              file=sys.stderr)
    source = build.root / "src"
    source.mkdir(parents=True, exist_ok=True)
    build.bin_dir.mkdir(parents=True, exist_ok=True)
    module = f"{ARGOCD_MODULE}@v{ARGOCD_VERSION}"
    info = json.loads(_run_go(go, ["mod", "download", "-json", module], source,
                              "downloading Argo CD", ARGOCD_GO_TOOLCHAIN))
    replaces = wrapper_replaces(Path(info["GoMod"]).read_text(), ARGOCD_VERSION)
    _write_go_mod(source, "argocd", [f"require {ARGOCD_MODULE} v{ARGOCD_VERSION}", "",
                                     *replaces])
    package = f"{ARGOCD_MODULE}/cmd"
    _run_go(go, ["get", f"{package}@v{ARGOCD_VERSION}"], source, "resolving Argo CD modules",
            ARGOCD_GO_TOOLCHAIN)
    binary = build.bin_dir / "argocd"
    _run_go(go, ["build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), package],
            source, "building Argo CD", ARGOCD_GO_TOOLCHAIN)
    for name in COMMANDS:
        build.command(name).unlink(missing_ok=True)
        build.command(name).symlink_to("argocd")
    for script in SCRIPTS:
        build.command(script).write_bytes((Path(info["Dir"]) / "hack" / script).read_bytes())
        build.command(script).chmod(0o755)
    build.crds_dir.mkdir(exist_ok=True)
    # Copied as bytes: the module cache's files are read-only.
    for crd in (Path(info["Dir"]) / "manifests" / "crds").glob("*-crd.yaml"):
        (build.crds_dir / crd.name).write_bytes(crd.read_bytes())
    for tool in (KUSTOMIZE.ensure(log), ensure_helm(log)):
        link = build.bin_dir / tool.name
        link.unlink(missing_ok=True)
        link.symlink_to(tool)
    (build.root / "complete").write_text(f"argocd v{ARGOCD_VERSION}\n")
    if log:
        print(f"  Argo CD built in {time.monotonic() - started:.0f}s: {build.bin_dir}",
              file=sys.stderr)
    return build


def redis_server(install_missing: bool = False) -> str:
    """Debian's redis-server, installed with apt-get when missing if asked to."""
    found = shutil.which("redis-server")
    if found is None and install_missing:
        install_with_apt(["redis-server"], "Argo CD's controller and repo server cache "
                         "in Redis", log=True)
        found = shutil.which("redis-server")
    if found is None:
        raise ToolchainError("Argo CD's controller and repo server cache in Redis, and "
                             "redis-server is not installed: apt-get install redis-server")
    return found


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait_for(ready: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
    raise ToolchainError(f"{what} did not start within {timeout:.0f}s; last log lines:\n{tail}")


def settings_objects(health_checks: dict[str, str]) -> list[dict[str, Any]]:
    """Argo CD's namespace, its settings (``argocd-cm`` with ``health_checks`` as
    ``resource.customizations.health.*`` keys, an empty ``argocd-secret``) and the
    ``default`` project, open to every repository, destination and kind."""
    part_of = {"app.kubernetes.io/part-of": "argocd"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ARGOCD_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "argocd-cm", "namespace": ARGOCD_NAMESPACE, "labels": part_of},
         "data": dict(health_checks)},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "argocd-secret", "namespace": ARGOCD_NAMESPACE,
                      "labels": part_of}},
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject",
         "metadata": {"name": "default", "namespace": ARGOCD_NAMESPACE},
         "spec": {"sourceRepos": ["*"],
                  "destinations": [{"server": "*", "namespace": "*"}],
                  "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}},
    ]


def cluster_secret(cluster: DevCluster) -> dict[str, Any]:
    """The local cluster as an Argo CD cluster, reached with the kubeconfig's admin
    credentials: Argo CD reaches ``https://kubernetes.default.svc`` only from inside
    a pod (in-cluster configuration), so Applications name this server instead."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    user = config["users"][0]["user"]
    tls = {"caData": config["clusters"][0]["cluster"]["certificate-authority-data"],
           "certData": user["client-certificate-data"], "keyData": user["client-key-data"]}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"cluster-{cluster.name}", "namespace": ARGOCD_NAMESPACE,
                         "labels": {"argocd.argoproj.io/secret-type": "cluster"}},
            "stringData": {"name": cluster.name, "server": str(cluster.server),
                           "config": json.dumps({"tlsClientConfig": tls})}}


def start(cluster: DevCluster, health_checks: dict[str, str]) -> ArgoCdBuild:
    """Installs Argo CD's CRDs and settings into ``cluster`` and runs Redis, the repo
    server and the application controller beside it (``dev down`` stops them)."""
    build = ensure_argocd()
    cluster.apply(build.crds())
    cluster.apply([*settings_objects(health_checks), cluster_secret(cluster)])
    ports = {name: cluster.ensure_port(f"argocd-{name}")
             for name in ("redis", "repo-server", "repo-metrics", "controller-metrics")}
    redis = f"127.0.0.1:{ports['redis']}"
    logs = cluster.folder / "logs"
    data = cluster.folder / "argocd"
    for folder in (data / "tls", data / "ssh"):
        folder.mkdir(parents=True, exist_ok=True)
    cluster.ensure_process("argocd-redis", [
        redis_server(), "--bind", "127.0.0.1", "--port", str(ports["redis"]),
        "--save", "", "--appendonly", "no"])
    _wait_for(lambda: _listening(ports["redis"]), 30, "redis-server",
              logs / "argocd-redis.log")
    env = {**os.environ, "PATH": f"{build.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "KUBECONFIG": str(cluster.kubeconfig),
           # Outside Argo CD's image: no GnuPG keyring, TLS and SSH data under the cluster.
           "ARGOCD_GPG_ENABLED": "false",
           "ARGOCD_TLS_DATA_PATH": str(data / "tls"), "ARGOCD_SSH_DATA_PATH": str(data / "ssh")}
    cluster.ensure_process("argocd-repo-server", [
        str(build.command("argocd-repo-server")), "--address", "127.0.0.1",
        "--port", str(ports["repo-server"]), "--metrics-port", str(ports["repo-metrics"]),
        "--disable-tls", "--client-ca-path=", "--redis", redis, "--loglevel", "info"],
        env=env)
    _wait_for(lambda: _listening(ports["repo-server"]), 60, "argocd-repo-server",
              logs / "argocd-repo-server.log")
    cluster.ensure_process("argocd-application-controller", [
        str(build.command("argocd-application-controller")),
        f"--kubeconfig={cluster.kubeconfig}", f"--namespace={ARGOCD_NAMESPACE}",
        f"--redis={redis}", f"--repo-server=127.0.0.1:{ports['repo-server']}",
        "--repo-server-plaintext", f"--metrics-port={ports['controller-metrics']}",
        "--status-processors=2", "--operation-processors=2", "--app-resync=20",
        "--self-heal-timeout-seconds=2", "--loglevel=info"], env=env)
    metrics = f"http://127.0.0.1:{ports['controller-metrics']}/metrics"
    _wait_for(lambda: _answers(metrics), 90, "argocd-application-controller",
              logs / "argocd-application-controller.log")
    return build
