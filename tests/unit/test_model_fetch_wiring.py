"""How a slot's model source reaches the cluster: the fetch-model init container in
the pod template, its state and progress read back from the pod, and the slot's
status, reason, Event and metric that show them."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hybrid_compute.api.labels import SLOT_LABEL
from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.fetch.download import Progress
from hybrid_compute.plan import plan
from hybrid_compute.plan.objects import fetch_from_pod, pod_from_object, with_fetch_log
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import FetchProgress
from hybrid_compute.render import children
from hybrid_compute.server.metrics import OperatorMetrics
from tests.simworld import World, slot

SHA = "ab" * 32
SETTINGS = PlanSettings(fetch_image="registry.local/hybrid-compute:test")
HF_SLOT: dict[str, Any] = {
    "alias": "local/fast",
    "model": {"path": "llama-8b-q6_k.gguf", "vram": "7Gi", "source": {
        "huggingFace": {"repo": "acme/llama-GGUF", "file": "llama-8b-q6_k.gguf",
                        "revision": "v2", "tokenSecretRef": {"name": "hf", "key": "token"}},
        "sha256": SHA.upper()}},
}


def _template(spec: dict[str, Any]) -> dict[str, Any]:
    return children.pod_template("fast", ModelSlotSpec.model_validate(spec), 7 << 30,
                                 SETTINGS)


def _mounts(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in container["volumeMounts"] if m["name"] == children.MODEL_VOLUME]


def test_hugging_face_source_adds_a_fetch_init_container() -> None:
    pod = _template(HF_SLOT)["spec"]
    [fetcher] = pod["initContainers"]
    assert fetcher["name"] == children.FETCH_CONTAINER
    assert fetcher["image"] == "registry.local/hybrid-compute:test"
    assert fetcher["args"] == [
        "fetch", "--hf-repo", "acme/llama-GGUF", "--hf-file", "llama-8b-q6_k.gguf",
        "--hf-revision", "v2", "--dest", "/models/llama-8b-q6_k.gguf", "--sha256", SHA]
    assert fetcher["env"] == [{"name": "HF_TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "hf", "key": "token"}}}]
    assert fetcher["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_only_the_fetch_container_may_write_the_model_folder() -> None:
    pod = _template(HF_SLOT)["spec"]
    [server] = pod["containers"]
    assert [m.get("readOnly", False) for m in _mounts(pod["initContainers"][0])] == [False]
    assert [m.get("readOnly", False) for m in _mounts(server)] == [True]
    assert "env" not in server, "the token must reach the fetch step only"


def test_claim_is_writable_only_when_a_source_needs_it() -> None:
    on_claim = {**HF_SLOT, "model": {**HF_SLOT["model"], "persistentVolumeClaim": "models"}}
    pod = _template(on_claim)["spec"]
    [volume] = pod["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": False}
    assert pod["securityContext"]["fsGroup"] == children.RUN_AS_USER
    without = {**on_claim, "model": {k: v for k, v in on_claim["model"].items()
                                     if k != "source"}}
    pod = _template(without)["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
    assert "fsGroup" not in pod["securityContext"]


def test_no_source_means_no_init_container_and_an_unchanged_template() -> None:
    plain = {"alias": "local/fast", "model": {"path": "llama-8b-q6_k.gguf", "vram": "7Gi"}}
    template = _template(plain)
    assert "initContainers" not in template["spec"]
    other_image = children.pod_template("fast", ModelSlotSpec.model_validate(plain),
                                        7 << 30, PlanSettings(fetch_image="elsewhere:1"))
    assert children.template_hash(template) == children.template_hash(other_image), (
        "slots without a source must not reload when the fetch image changes")


def test_url_source_without_token_or_checksum() -> None:
    spec = {"alias": "local/fast", "device": "cpu", "model": {
        "path": "/models/sub/tiny.gguf", "source": {"url": "https://files.local/tiny.gguf"}}}
    [fetcher] = _template(spec)["spec"]["initContainers"]
    assert fetcher["args"] == ["fetch", "--url", "https://files.local/tiny.gguf",
                               "--dest", "/models/sub/tiny.gguf"]
    assert "env" not in fetcher


def _pod(init_status: dict[str, Any] | None) -> dict[str, Any]:
    return {"metadata": {"name": "fast-1", "namespace": "lab", "labels": {SLOT_LABEL: "fast"}},
            "spec": {"initContainers": [{"name": children.FETCH_CONTAINER}]},
            "status": {"phase": "Pending", "initContainerStatuses":
                       [init_status] if init_status else []}}


def test_pod_state_of_the_fetch_step() -> None:
    name = children.FETCH_CONTAINER
    assert fetch_from_pod(_pod(None)) == FetchProgress("Fetching", message="starting")
    running = {"name": name, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
    assert fetch_from_pod(_pod(running)) == FetchProgress("Fetching")
    done = {"name": name, "state": {"terminated": {"exitCode": 0}}}
    assert fetch_from_pod(_pod(done)) is None
    error_line = Progress("Failed", "m.gguf", 100, 1000, "not enough disk space: 900 "
                          "bytes still to download, 10 bytes free").to_json()
    crashing = {"name": name, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 4,
                                             "message": f"earlier line\n{error_line}\n"}}}
    assert fetch_from_pod(_pod(crashing)) == FetchProgress(
        "Failed", 100, 1000, "not enough disk space: 900 bytes still to download, "
                             "10 bytes free")
    traceback = {"name": name, "state": {"terminated": {"exitCode": 1,
                                                        "message": "Traceback: boom"}}}
    assert fetch_from_pod(_pod(traceback)) == FetchProgress(
        "Failed", message="exit code 1: Traceback: boom")
    info = pod_from_object(_pod(running))
    assert info is not None and info.fetch == FetchProgress("Fetching")


def test_progress_comes_from_the_last_log_line() -> None:
    line = Progress("Downloading", "m.gguf", 3 << 30, 6 << 30).to_json()
    assert with_fetch_log(FetchProgress("Fetching"), line + "\n") == FetchProgress(
        "Fetching", 3 << 30, 6 << 30)
    assert with_fetch_log(FetchProgress("Fetching"), "not json") == FetchProgress("Fetching")


def _loading_world() -> World:
    world = World([slot("fast", {**HF_SLOT, "default": True})], settings=SETTINGS,
                  load_steps=50)
    world.run_until(lambda: bool(world.pods))
    return world


def test_slot_status_reason_and_metric_show_the_download() -> None:
    world = _loading_world()
    world.pods[0].info = replace(world.pods[0].info,
                                 fetch=FetchProgress("Fetching", 3 << 30, 6 << 30))
    view = world.view()
    result = plan(view, world.now)
    decision = result.slot("lab", "fast")
    assert decision.phase == "Loading"
    assert decision.reason == "fetching the model: 3.0 GiB of 6.0 GiB (50.0%)"
    assert decision.status["fetch"] == {"state": "Fetching", "bytes": 3 << 30,
                                        "totalBytes": 6 << 30, "percent": 50.0}
    metrics = OperatorMetrics()
    metrics.record_plan(view, result, 0.01)
    exposition = metrics.exposition().decode()
    assert ('hybrid_compute_model_fetch_bytes{alias="local/fast",namespace="lab",'
            'slot="fast"} 3.221225472e+09') in exposition, exposition
    world.pods[0].info = replace(world.pods[0].info, fetch=None)
    done_view = world.view()
    done = plan(done_view, world.now)
    assert "fetch" not in done.slot("lab", "fast").status
    metrics.record_plan(done_view, done, 0.01)
    assert "hybrid_compute_model_fetch_bytes{" not in metrics.exposition().decode()


def test_failed_fetch_is_reported_once_as_a_warning() -> None:
    world = _loading_world()
    world.pods[0].info = replace(world.pods[0].info, fetch=FetchProgress(
        "Failed", message="downloaded SHA-256 is 00, expected ab"))
    first = world.step()
    decision = first.slot("lab", "fast")
    assert decision.reason.startswith("fetching the model failed")
    assert [e.reason for e in first.events] == ["FetchFailed"]
    assert "expected ab" in first.events[0].message
    again = world.step()
    assert "FetchFailed" not in [e.reason for e in again.events]
    assert json.loads(json.dumps(again.slot("lab", "fast").status))["fetch"]["state"] == "Failed"
