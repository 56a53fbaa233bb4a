"""ModelSlot reconciliation on the real control plane: the seed's slots, swaps
that are break-before-make, idle return, crash safety, limits and clean-up.

kwok delays make pods take time to become Ready and to go away, and a sampler
checks every 50 ms that the GPU pods that exist never hold more VRAM than the
card offers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME
from hybrid_compute.view import GIB, MIB, SLOT_LABEL, VRAM_ANNOTATION
from tests.conftest import OperatorHandle, TestCluster

pytestmark = pytest.mark.cluster

BUDGET = 24576 * MIB - GIB  # an RTX 3090 less the operator's default headroom
DELAYS = {"pod-ready.stage.kwok.x-k8s.io/delay": "1s",
          "pod-delete.stage.kwok.x-k8s.io/delay": "2s"}


def slot(name: str, alias: str, vram: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hybridcompute.io/v1alpha1",
        "kind": "ModelSlot",
        "metadata": {"name": name},
        "spec": {"alias": alias, "model": {"path": f"{name}.gguf", "vram": vram},
                 "podAnnotations": DELAYS, "minResidency": "1s", **spec},
    }


def alias(namespace: str, name: str) -> str:
    """Aliases are cluster-wide, and the operator remembers demands per alias: each
    test gets its own."""
    return f"local/{name}-{namespace.rsplit('-', 1)[-1]}"


def seed_slots(namespace: str, idle: str = "5m") -> list[dict[str, Any]]:
    return [
        slot("fast", alias(namespace, "fast"), "7Gi", default=True, fallback="cloud/fast"),
        slot("quality", alias(namespace, "quality"), "20Gi", activation="OnDemand",
             idleTimeout=idle, priority=200, fallback="cloud/mid"),
        slot("embed", alias(namespace, "embed"), "1Gi", device="cpu", embedding=True,
             model={"path": "embed.gguf"}),
    ]


class VramSampler:
    """Sums the VRAM annotations of every GPU pod on dreamteam, every 50 ms."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.samples = 0
        self.peak = 0
        self.breaches: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pods = self.core.list_pod_for_all_namespaces(label_selector=SLOT_LABEL).items
            held = sum(int((p.metadata.annotations or {}).get(VRAM_ANNOTATION, 0))
                       for p in pods if p.spec.node_name == DEFAULT_NODE_NAME
                       and p.status.phase not in ("Succeeded", "Failed"))
            self.samples += 1
            self.peak = max(self.peak, held)
            if held > BUDGET:
                self.breaches.append(
                    f"{held / GIB:.1f} GiB held by "
                    f"{sorted(p.metadata.name for p in pods)}")
            self._stop.wait(0.05)

    def __enter__(self) -> VramSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        print(f"VRAM sampler: {self.samples} samples, peak {self.peak / GIB:.1f} GiB "
              f"of {BUDGET / GIB:.1f} GiB")
        assert self.samples > 10, "the sampler barely ran"
        assert not self.breaches, f"VRAM budget exceeded: {self.breaches[:3]}"


@pytest.fixture
def sampler(k8s: TestCluster) -> Iterator[VramSampler]:
    with VramSampler(k8s.core) as running:
        yield running


def read(k8s: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = k8s.custom.get_namespaced_custom_object(
        "hybridcompute.io", "v1alpha1", namespace, "modelslots", name)
    return result


def phase(k8s: TestCluster, namespace: str, name: str) -> str | None:
    return (read(k8s, namespace, name).get("status") or {}).get("phase")


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_phases(k8s: TestCluster, namespace: str, expected: dict[str, str],
                timeout: float = 60) -> None:
    def reached() -> bool:
        return all(phase(k8s, namespace, name) == value for name, value in expected.items())
    try:
        wait(reached, timeout, f"phases {expected}")
    except AssertionError:
        seen = {name: phase(k8s, namespace, name) for name in expected}
        raise AssertionError(f"expected phases {expected}, saw {seen}") from None


def slot_pods(k8s: TestCluster, namespace: str, name: str) -> list[Any]:
    return list(k8s.core.list_namespaced_pod(
        namespace, label_selector=f"{SLOT_LABEL}={name}").items)


def deployment_replicas(k8s: TestCluster, namespace: str, name: str) -> int:
    return int(k8s.apps.read_namespaced_deployment(name, namespace).spec.replicas)


def apply(k8s: TestCluster, namespace: str, objects: list[dict[str, Any]]) -> None:
    for item in objects:
        item["metadata"]["namespace"] = namespace
    k8s.cluster.apply(objects)


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
    assert status["endpoint"] == f"http://fast.{namespace}.svc:8080/v1"
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
    assert mine["fast"]["endpoint"] == f"http://fast.{namespace}.svc:8080/v1"
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
