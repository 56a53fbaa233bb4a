"""ModelSlot reconciliation on the real control plane: the seed's slots, swaps
that are break-before-make, idle return, crash safety, limits and clean-up.

kwok delays make pods take time to become Ready and to go away, and a sampler
checks every 50 ms that the GPU pods that exist never hold more VRAM than the
card offers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hybrid_compute.api.labels import SLOT_LABEL, VRAM_ANNOTATION
from hybrid_compute.api.units import GIB
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME
from tests.cluster.support import (
    VramSampler,
    alias,
    apply,
    deployment_replicas,
    phase,
    read,
    seed_slots,
    slot,
    slot_pods,
    wait,
    wait_phases,
)
from tests.conftest import OperatorHandle, TestCluster

pytestmark = pytest.mark.cluster

def test_seed_slots_settle_fast_on_gpu_quality_standby_embed_on_cpu(
        k8s: TestCluster, operator: OperatorHandle, namespace: str,
        sampler: VramSampler) -> None:
    apply(k8s, namespace, seed_slots(namespace))
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby", "embed": "Ready"})
    fast = slot_pods(k8s, namespace, "fast")
    assert [p.status.phase for p in fast] == ["Running"]
    assert fast[0].spec.node_name == DEFAULT_NODE_NAME
    assert fast[0].spec.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert deployment_replicas(k8s, namespace, "quality") == 0
    embed = slot_pods(k8s, namespace, "embed")
    assert [p.status.phase for p in embed] == ["Running"]
    assert not (embed[0].spec.containers[0].resources.limits or {})
    status = read(k8s, namespace, "fast")["status"]
    assert status["node"] == DEFAULT_NODE_NAME and status["gpu"] == "dreamteam/0"
    assert status["endpoint"] == "http://127.0.0.1:8080/v1"  # the tests' --endpoint-template
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["observedGeneration"] == 1


def test_demand_swaps_break_before_make_then_idle_returns_the_default(
        k8s: TestCluster, operator: OperatorHandle, namespace: str,
        sampler: VramSampler) -> None:
    apply(k8s, namespace, seed_slots(namespace, idle="6s"))
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"})
    time.sleep(2)  # past fast's minimum residency
    operator.demand(alias(namespace, "quality"))

    fast_gone_at: list[float] = []
    quality_created_at: list[float] = []

    def swapped() -> bool:
        now = time.monotonic()
        if not slot_pods(k8s, namespace, "fast") and not fast_gone_at:
            fast_gone_at.append(now)
        if slot_pods(k8s, namespace, "quality") and not quality_created_at:
            quality_created_at.append(now)
        return phase(k8s, namespace, "quality") == "Ready"

    wait(swapped, 60, "quality to become Ready")
    assert fast_gone_at and quality_created_at
    assert fast_gone_at[0] <= quality_created_at[0], \
        "the quality pod existed before the fast pod was gone"
    assert phase(k8s, namespace, "fast") == "Standby"
    status = read(k8s, namespace, "quality")["status"]
    assert status["swaps"] == 1 and status["lastSwapSeconds"] > 0
    assert status["lastRequestTime"]
    events = k8s.core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=quality,reason=Swapped").items
    assert events and f"evicting {alias(namespace, 'fast')}" in events[0].message, \
        [e.message for e in events]

    # No request for idleTimeout (6s): the GPU goes back to the default slot.
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"}, timeout=60)
    assert deployment_replicas(k8s, namespace, "quality") == 0


def test_operator_killed_mid_swap_converges_without_a_breach(
        k8s: TestCluster, operator: OperatorHandle, namespace: str,
        sampler: VramSampler) -> None:
    apply(k8s, namespace, seed_slots(namespace))
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"})
    time.sleep(2)
    operator.demand(alias(namespace, "quality"))
    wait(lambda: phase(k8s, namespace, "fast") == "Unloading", 30, "fast to start unloading")
    operator.restart(kill=True)
    wait_phases(k8s, namespace, {"quality": "Ready", "fast": "Standby"}, timeout=90)


def test_oversized_slot_is_unschedulable_and_the_others_keep_working(
        k8s: TestCluster, operator: OperatorHandle, namespace: str) -> None:
    apply(k8s, namespace, [*seed_slots(namespace), slot("huge", alias(namespace, "huge"), "26Gi")])
    wait_phases(k8s, namespace, {"huge": "Unschedulable", "fast": "Ready", "embed": "Ready"})
    status = read(k8s, namespace, "huge")["status"]
    assert status["reason"] == "needs 26.0 GiB, dreamteam/0 offers 23.0 GiB"
    fits = {c["type"]: c for c in status["conditions"]}["Fits"]
    assert fits["status"] == "False" and fits["reason"] == "TooLarge"
    assert deployment_replicas(k8s, namespace, "huge") == 0


def test_deleting_a_slot_collects_its_children_and_returns_the_gpu(
        k8s: TestCluster, operator: OperatorHandle, namespace: str,
        sampler: VramSampler) -> None:
    apply(k8s, namespace, seed_slots(namespace))
    wait_phases(k8s, namespace, {"fast": "Ready"})
    time.sleep(2)
    operator.demand(alias(namespace, "quality"))
    wait_phases(k8s, namespace, {"quality": "Ready", "fast": "Standby"})
    k8s.custom.delete_namespaced_custom_object("hybridcompute.io", "v1alpha1", namespace,
                                               "modelslots", "quality")

    def children_gone() -> bool:
        deployments = k8s.apps.list_namespaced_deployment(
            namespace, label_selector=f"{SLOT_LABEL}=quality").items
        services = k8s.core.list_namespaced_service(
            namespace, label_selector=f"{SLOT_LABEL}=quality").items
        return not deployments and not services and not slot_pods(k8s, namespace, "quality")

    wait(children_gone, 60, "the quality Deployment, Service and pod to be collected")
    wait_phases(k8s, namespace, {"fast": "Ready"})


def test_changing_the_model_patches_the_deployment(
        k8s: TestCluster, operator: OperatorHandle, namespace: str,
        sampler: VramSampler) -> None:
    apply(k8s, namespace, seed_slots(namespace))
    wait_phases(k8s, namespace, {"fast": "Ready"})
    changed = seed_slots(namespace)[0]
    changed["spec"]["model"] = {"path": "llama-3.1-8b-instruct-q8_0.gguf", "vram": "9Gi"}
    apply(k8s, namespace, [changed])

    def patched() -> bool:
        deployment = k8s.apps.read_namespaced_deployment("fast", namespace)
        args = deployment.spec.template.spec.containers[0].args
        return "/models/llama-3.1-8b-instruct-q8_0.gguf" in args

    wait(patched, 30, "the Deployment to name the new model")
    wait(lambda: read(k8s, namespace, "fast")["status"].get("observedGeneration") == 2
         and phase(k8s, namespace, "fast") == "Ready", 60, "fast Ready on generation 2")
    pods = slot_pods(k8s, namespace, "fast")
    assert [p.metadata.annotations[VRAM_ANNOTATION] for p in pods] == [str(9 * GIB)]


def test_state_api_reports_slots_and_refuses_bad_requests(
        k8s: TestCluster, operator: OperatorHandle, namespace: str) -> None:
    apply(k8s, namespace, seed_slots(namespace))
    wait_phases(k8s, namespace, {"fast": "Ready"})

    def listed() -> dict[str, Any] | None:
        status, state = operator.call("GET", "/v1/state")
        assert status == 200
        mine = {s["name"]: s for s in state["slots"] if s["namespace"] == namespace}
        return mine if mine.get("fast", {}).get("ready") else None

    mine = wait(listed, 30, "the state API to list the namespace's slots")
    assert mine["fast"]["endpoint"] == "http://127.0.0.1:8080/v1"
    assert mine["quality"]["phase"] == "Standby" and mine["quality"]["fallback"] == "cloud/mid"
    assert operator.call("GET", "/v1/state", token="wrong")[0] == 401
    status, body = operator.call("POST", "/v1/demand", {"alias": "local/none"})
    assert status == 404 and "local/none" in body["error"]
    status, body = operator.call("POST", "/v1/demand", {"model": "x"})
    assert status == 400 and "alias" in body["error"]


def test_annotation_asks_for_a_slot_by_hand(
        k8s: TestCluster, operator: OperatorHandle, namespace: str) -> None:
    apply(k8s, namespace, seed_slots(namespace))
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"})
    time.sleep(2)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    k8s.kubectl("annotate", "-n", namespace, "modelslot", "quality",
                f"hybridcompute.io/requested-at={stamp}")
    wait_phases(k8s, namespace, {"quality": "Ready", "fast": "Standby"})
