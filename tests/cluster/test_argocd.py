"""GitOps with a real Argo CD (application controller and repo server built from
Go modules, see ``hybrid_compute.dev.argocd``) against the local control plane.

The Git repository is a local bare repository holding this checkout's
``manifests/`` and chart, reached by a ``file://`` URL. Checked here:

* the README's Lua health checks, taken from the README itself, report
  Progressing, Healthy, Degraded and Suspended as the README says (Argo CD's own
  Lua engine, through ``argocd admin settings resource-overrides health``);
* an Application of ``manifests/overlays/k3s`` and one of the samples, with
  automated sync, self-heal and server-side apply, go Synced and Healthy, and stay
  Synced after the operator's own writes (a swap), and a Git commit that changes
  a slot's model is synced and served;
* the same for the Helm chart as the source (with the k3s values and its samples).
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid_compute.dev import argocd
from tests.cluster.support import phase, read, wait, wait_phases
from tests.conftest import REPOSITORY_ROOT, OperatorHandle, TestCluster

pytestmark = [pytest.mark.cluster, pytest.mark.argocd]

HEALTH_KEY = "resource.customizations.health."
APPLICATIONS = "applications.argoproj.io"


def readme_argocd_settings() -> dict[str, str]:
    """The ``argocd-cm`` entries of the README's Argo CD section, as written there."""
    readme = (REPOSITORY_ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)
    for block in blocks:
        if HEALTH_KEY in block:
            return dict(yaml.safe_load(block)["data"])
    raise AssertionError("the README has no argocd-cm block with health checks")


def readme_health_checks() -> dict[str, str]:
    return {key: value for key, value in readme_argocd_settings().items()
            if key.startswith(HEALTH_KEY)}


def _object(kind: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "hybridcompute.io/v1alpha1", "kind": kind,
                            "metadata": {"name": "x", "namespace": "n",
                                         "generation": generation}}
    if status is not None:
        body["status"] = status
    return body


def _condition(kind: str, status: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "message": message, "observedGeneration": 1}


HEALTH_CASES = [
    ("ModelSlot", None, 1, "Progressing"),
    ("ModelSlot", {"observedGeneration": 1, "phase": "Ready"}, 2, "Progressing"),
    ("ModelSlot", {"observedGeneration": 1, "phase": "Loading"}, 1, "Progressing"),
    ("ModelSlot", {"observedGeneration": 1, "phase": "Ready",
                   "conditions": [_condition("Ready", "True", "serving")]}, 1, "Healthy"),
    ("ModelSlot", {"observedGeneration": 1, "phase": "Standby"}, 1, "Healthy"),
    ("ModelSlot", {"observedGeneration": 1, "phase": "Failed"}, 1, "Degraded"),
    ("ModelSlot", {"observedGeneration": 1, "phase": "Unschedulable"}, 1, "Degraded"),
    ("GpuWorkload", None, 1, "Progressing"),
    ("GpuWorkload", {"observedGeneration": 1, "phase": "Running"}, 1, "Healthy"),
    ("GpuWorkload", {"observedGeneration": 1, "phase": "Succeeded"}, 1, "Healthy"),
    ("GpuWorkload", {"observedGeneration": 1, "phase": "Admitted"}, 1, "Healthy"),
    ("GpuWorkload", {"observedGeneration": 1, "phase": "Queued",
                     "reason": "waiting for the GPU"}, 1, "Suspended"),
    ("GpuWorkload", {"observedGeneration": 1, "phase": "Preempted"}, 1, "Suspended"),
    ("GpuWorkload", {"observedGeneration": 1, "phase": "Failed"}, 1, "Degraded"),
    ("RoutePolicy", None, 1, "Progressing"),
    ("RoutePolicy", {"observedGeneration": 1, "conditions": [
        _condition("Accepted", "True"), _condition("Ready", "True")]}, 1, "Healthy"),
    ("RoutePolicy", {"observedGeneration": 1, "conditions": [
        _condition("Accepted", "True"), _condition("Ready", "False", "no slot")]}, 1,
     "Progressing"),
    ("RoutePolicy", {"observedGeneration": 1, "conditions": [
        _condition("Accepted", "False", "bad alias"), _condition("Ready", "False")]}, 1,
     "Degraded"),
]


@pytest.fixture(scope="module")
def argocd_build() -> argocd.ArgoCdBuild:
    return argocd.ensure_argocd()


@pytest.mark.parametrize(("kind", "status", "generation", "expected"), HEALTH_CASES)
def test_readme_health_checks_in_argo_cds_lua(
        argocd_build: argocd.ArgoCdBuild, tmp_path: Path, kind: str,
        status: dict[str, Any] | None, generation: int, expected: str) -> None:
    settings = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                "data": readme_health_checks()}
    (tmp_path / "argocd-cm.yaml").write_text(yaml.safe_dump(settings))
    (tmp_path / "object.yaml").write_text(yaml.safe_dump(_object(kind, status, generation)))
    result = subprocess.run(
        [str(argocd_build.bin_dir / "argocd"), "admin", "settings", "resource-overrides",
         "health", str(tmp_path / "object.yaml"), "--argocd-cm-path",
         str(tmp_path / "argocd-cm.yaml")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    reported = re.search(r"STATUS:\s*(\w+)", result.stdout)
    assert reported is not None, result.stdout
    assert reported.group(1) == expected, result.stdout


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module")
def git_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A bare repository with this checkout's manifests and chart on ``main``, its
    ``file://`` URL and a working clone to commit changes from."""
    root = tmp_path_factory.mktemp("gitops")
    bare = root / "hybrid-compute.git"
    work = root / "work"
    _git(root, "init", "--bare", "--initial-branch=main", str(bare))
    _git(root, "clone", str(bare), str(work))
    shutil.copytree(REPOSITORY_ROOT / "manifests", work / "manifests")
    shutil.copytree(REPOSITORY_ROOT / "charts", work / "charts")
    _git(work, "add", "-A")
    _git(work, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm",
         "manifests")
    _git(work, "push", "-q", "origin", "main")
    yield f"file://{bare}", work


@pytest.fixture(scope="module")
def running_argocd(k8s: TestCluster, operator: OperatorHandle,
                   argocd_build: argocd.ArgoCdBuild) -> TestCluster:
    """Argo CD running beside the test cluster (and the suite's operator), with the
    README's health checks in ``argocd-cm``; k3s's ``nvidia`` RuntimeClass, which
    the k3s overlay's GPU agent names, exists as it would on k3s."""
    k8s.cluster.apply([{"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                        "metadata": {"name": "nvidia"}, "handler": "nvidia"}])
    argocd.start(k8s.cluster, readme_argocd_settings())
    return k8s


def application(k8s: TestCluster, name: str, repo_url: str, namespace: str,
                **source: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        # Deleting the Application deletes what it synced.
        "metadata": {"name": name, "namespace": argocd.ARGOCD_NAMESPACE,
                     "finalizers": ["resources-finalizer.argocd.argoproj.io"]},
        "spec": {
            "project": "default",
            "source": {"repoURL": repo_url, "targetRevision": "main", **source},
            "destination": {"server": k8s.cluster.server, "namespace": namespace},
            "syncPolicy": {"automated": {"prune": True, "selfHeal": True},
                           "syncOptions": ["ServerSideApply=true"]},
        },
    }


def app_status(k8s: TestCluster, name: str) -> dict[str, Any]:
    found = k8s.kubectl("get", APPLICATIONS, name, "-n", argocd.ARGOCD_NAMESPACE, "-o",
                        "json")
    return dict(json.loads(found.stdout).get("status") or {})


def synced_and_healthy(k8s: TestCluster, name: str) -> bool:
    status = app_status(k8s, name)
    return bool(status.get("sync", {}).get("status") == "Synced"
                and status.get("health", {}).get("status") == "Healthy")


def describe(k8s: TestCluster, name: str) -> str:
    """The Application's state and the statuses of its custom objects, for a failure."""
    status = app_status(k8s, name)
    namespace = status.get("sync", {}).get("comparedTo", {}).get("destination", {}).get(
        "namespace")
    found = k8s.kubectl("get", "modelslots,routepolicies,gpuworkloads", "-n", str(namespace),
                        "-o", "json", check=False)
    objects = {f"{o['kind']}/{o['metadata']['name']}":
               {"generation": o["metadata"].get("generation"), "status": o.get("status")}
               for o in (json.loads(found.stdout)["items"] if found.returncode == 0 else [])}
    return json.dumps({"sync": status.get("sync", {}).get("status"),
                       "health": status.get("health"), "conditions": status.get("conditions"),
                       "operationState": (status.get("operationState") or {}).get("message"),
                       "objects": objects}, indent=1)


def wait_synced_and_healthy(k8s: TestCluster, name: str, timeout: float) -> None:
    try:
        wait(lambda: synced_and_healthy(k8s, name), timeout, f"{name} Synced and Healthy")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{describe(k8s, name)}") from None


SERVED_MODEL = "qwen2.5-coder-32b-instruct-q4_k_m.gguf"
CHANGED_MODEL = "qwen2.5-coder-32b-instruct-q3_k_m.gguf"


def commit_model_change(k8s: TestCluster, work: Path, app: str) -> None:
    """Commits a new model for the ``quality`` slot and asks Argo CD to look at Git
    now (a hard refresh, as a Git webhook would)."""
    slots = work / "manifests" / "samples" / "modelslots.yaml"
    text = slots.read_text()
    assert text.count(SERVED_MODEL) == 1
    slots.write_text(text.replace(SERVED_MODEL, CHANGED_MODEL))
    _git(work, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qam",
         "quality: the Q3_K_M build")
    _git(work, "push", "-q", "origin", "main")
    k8s.kubectl("annotate", APPLICATIONS, app, "-n", argocd.ARGOCD_NAMESPACE,
                "argocd.argoproj.io/refresh=hard", "--overwrite")


def served_model(k8s: TestCluster, namespace: str, name: str) -> str | None:
    """The model of the slot's newest history entry: what the operator serves."""
    history = (read(k8s, namespace, name).get("status") or {}).get("history") or []
    return history[-1]["model"]["path"] if history and phase(
        k8s, namespace, name) == "Ready" else None


def test_overlay_and_samples_sync_healthy_stay_synced_after_a_swap_and_follow_git(
        running_argocd: TestCluster, operator: OperatorHandle,
        git_repository: tuple[str, Path]) -> None:
    k8s = running_argocd
    repo_url, _ = git_repository
    # The samples go beside the overlay's LiteLLM, which the RoutePolicy configures.
    namespace = "hybrid-compute"
    suffix = uuid.uuid4().hex[:6]
    overlay, samples = f"overlay-{suffix}", f"samples-{suffix}"
    workloads = f"workloads-{suffix}"
    k8s.cluster.apply([
        application(k8s, overlay, repo_url, namespace, path="manifests/overlays/k3s"),
        application(k8s, samples, repo_url, namespace, path="manifests/samples",
                    directory={"include": "{modelslots.yaml,routepolicy.yaml}"}),
        # Apart: a queued or preempted workload is Suspended by the README's checks.
        application(k8s, workloads, repo_url, namespace, path="manifests/samples",
                    directory={"include": "gpuworkloads.yaml"}),
    ])
    try:
        wait_synced_and_healthy(k8s, overlay, 180)
        wait_synced_and_healthy(k8s, samples, 120)
        wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"}, 120)
        # Local TTS runs while no on-demand model is in use.
        wait(lambda: phase(k8s, namespace, "tts-local", "gpuworkloads") == "Running", 120,
             "tts-local running")
        wait(lambda: app_status(k8s, workloads).get("sync", {}).get("status") == "Synced",
             120, f"{workloads} Synced")
        # The operator swaps "quality" in and preempts TTS for it: it writes statuses,
        # the slots' own Deployments and the workload's, none of which is in Git.
        operator.demand("local/quality")
        wait(lambda: phase(k8s, namespace, "quality") == "Ready", 180, "quality swapped in")
        assert phase(k8s, namespace, "tts-local", "gpuworkloads") == "Preempted"
        assert k8s.apps.read_namespaced_deployment("tts-local", namespace).spec.replicas == 0
        wait_synced_and_healthy(k8s, samples, 120)
        assert app_status(k8s, samples)["sync"]["status"] == "Synced", describe(k8s, samples)
        assert app_status(k8s, workloads)["sync"]["status"] == "Synced", \
            describe(k8s, workloads)
        commit_model_change(k8s, git_repository[1], samples)
        wait(lambda: served_model(k8s, namespace, "quality") == CHANGED_MODEL, 180,
             "the operator serving quality's model from the new commit")
        wait_synced_and_healthy(k8s, samples, 120)
    finally:
        k8s.kubectl("delete", APPLICATIONS, overlay, samples, workloads, "-n",
                    argocd.ARGOCD_NAMESPACE,
                    "--timeout=120s", check=False)


def test_chart_as_source_syncs_healthy_and_stays_synced_after_a_swap(
        running_argocd: TestCluster, clock: OperatorHandle,
        git_repository: tuple[str, Path]) -> None:
    k8s = running_argocd
    repo_url, _ = git_repository
    name = f"chart-{uuid.uuid4().hex[:6]}"
    namespace = "hybrid-compute"
    chart = application(k8s, name, repo_url, namespace, path="charts/hybrid-compute",
                        helm={"releaseName": "hybrid-compute",
                              "valueFiles": ["ci/k3s-values.yaml"],
                              "parameters": [{"name": "samples.enabled", "value": "true"}]})
    chart["spec"]["syncPolicy"]["syncOptions"].append("CreateNamespace=true")
    k8s.cluster.apply([chart])
    try:
        wait_synced_and_healthy(k8s, name, 240)
        # The operator remembers demand per alias, and the test before asked for
        # "quality": past its idle timeout the card goes back to "fast".
        clock.set_clock(datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10))
        wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"}, 120)
        clock.reset_clock()
        clock.demand("local/quality")
        wait(lambda: phase(k8s, namespace, "quality") == "Ready", 180, "quality swapped in")
        wait_synced_and_healthy(k8s, name, 120)
    finally:
        k8s.kubectl("delete", APPLICATIONS, name, "-n", argocd.ARGOCD_NAMESPACE,
                    "--timeout=120s", check=False)
