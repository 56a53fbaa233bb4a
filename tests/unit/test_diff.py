"""The diff from a plan to the writes act performs, and how act treats a failed write.

Views and plans come from :func:`hybrid_compute.plan.plan` on the seed's slots; the
cluster's answer to a write is the plan's own manifest read back by the observe
parsers, so a settled view is what the API server would list after the writes.
"""

from __future__ import annotations

import datetime
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.api.gpuworkload import GpuWorkload, GpuWorkloadStatus
from hybrid_compute.api.modelslot import ModelSlot, ModelSlotStatus
from hybrid_compute.api.routepolicy import RoutePolicyStatus
from hybrid_compute.control.act import act
from hybrid_compute.control.diff import (
    ApplyObject,
    ApplyStatus,
    DeleteChild,
    Group,
    PostEvent,
    Write,
    diff,
)
from hybrid_compute.control.informer import Written
from hybrid_compute.plan import Plan, plan
from hybrid_compute.plan.objects import deployment_from_object, workload_child_from_object
from hybrid_compute.plan.routing import PolicyDecision
from hybrid_compute.plan.view import View, WorkloadChild
from tests.simworld import SEED_SLOTS, World, slot, workload
from tests.unit.test_routing import litellm, policy

RESOURCE_VERSION = "41"
NOW = datetime.datetime(2026, 12, 1, 3, 0, tzinfo=datetime.UTC)


def written(view: View, result: Plan) -> View:
    """``view`` as the API server lists it once every write of ``result`` held."""
    deployments = []
    for decision in result.slots:
        if decision.deployment is not None:
            manifest = decision.deployment
            seen = deployment_from_object({**manifest, "metadata": {
                **manifest["metadata"], "resourceVersion": RESOURCE_VERSION}})
            assert seen is not None
            deployments.append(seen)
    children = [workload_child_from_object(d.child) for d in result.workloads
                if d.child is not None and not d.recreate_child]
    return replace(
        view,
        slots=tuple(replace(s, status=ModelSlotStatus.model_validate(
            result.slot(*s.key).status)) for s in view.slots),
        deployments=tuple(deployments),
        services={(d.namespace, d.name): bool(d.service["spec"].get("publishNotReadyAddresses"))
                  for d in result.slots if d.service is not None},
        workloads=tuple(replace(w, status=GpuWorkloadStatus.model_validate(
            result.workload(*w.key).status)) for w in view.workloads),
        workload_children=tuple(c for c in children if c is not None),
        policies=tuple(replace(p, status=RoutePolicyStatus.model_validate(
            next(d.status for d in result.policies if d.key == p.key)))
            for p in view.policies))


def settled(view: View) -> tuple[Plan, View]:
    """A plan and the view it leaves nothing to write on."""
    for _ in range(10):
        result = plan(view, NOW)
        if not diff(result, view):
            return result, view
        view = written(view, result)
    raise AssertionError(f"no fixed point: {diff(result, view)}")


def seed_view(**changes: Any) -> View:
    """The seed's slots with fast Ready on the GPU, as the simulated cluster has them."""
    world = World([slot(name, spec) for name, spec in SEED_SLOTS.items()])
    world.run_until(lambda: world.phase("fast") == "Ready")
    return replace(world.view(), **changes)


def seed_settled() -> tuple[Plan, View]:
    return settled(seed_view())


def with_deployment(view: View, name: str, **changes: Any) -> View:
    return replace(view, deployments=tuple(replace(d, **changes) if d.owner == name else d
                                           for d in view.deployments))


def lines(writes: list[Write]) -> list[str]:
    return [write.line for write in writes]


def test_a_settled_view_needs_no_write() -> None:
    result, view = seed_settled()
    assert diff(result, view) == []
    assert {d.name for d in result.slots if d.replicas} == {"fast", "embed"}


@pytest.mark.parametrize("change", [{"replicas": 0}, {"template_hash": "other"},
                                    {"node": "elsewhere"}],
                         ids=["replicas", "template", "node"])
def test_a_deployment_that_differs_is_applied_on_the_version_seen(
        change: dict[str, Any]) -> None:
    result, view = seed_settled()
    writes = diff(result, with_deployment(view, "fast", **change))
    assert writes == [ApplyObject(result.slot("lab", "fast").deployment or {},
                                  "deployment lab/fast replicas=1", Group("slot", "lab", "fast"),
                                  resource_version=RESOURCE_VERSION)]


def test_a_scale_down_or_a_deployment_not_seen_carries_no_version() -> None:
    result, view = seed_settled()
    assert result.slot("lab", "quality").replicas == 0
    scaled_down = diff(result, with_deployment(view, "quality", replicas=1))
    missing = diff(result, replace(view, deployments=tuple(
        d for d in view.deployments if d.owner != "fast")))
    assert [(w.line, w.resource_version) for w in scaled_down if isinstance(w, ApplyObject)] \
        == [("deployment lab/quality replicas=0", None)]
    assert [(w.line, w.resource_version) for w in missing if isinstance(w, ApplyObject)] \
        == [("deployment lab/fast replicas=1", None)]


def test_a_missing_service_is_applied_and_an_existing_one_is_left_alone() -> None:
    result, view = seed_settled()
    writes = diff(result, replace(view, services={
        key: reaches for key, reaches in view.services.items() if key != ("lab", "embed")}))
    assert writes == [ApplyObject(result.slot("lab", "embed").service or {},
                                  "service lab/embed", Group("slot", "lab", "embed"))]


def test_a_service_is_applied_again_when_the_slots_readiness_changes() -> None:
    """readiness: Operator publishes pods not Ready yet; Kubelet does not."""
    result, view = seed_settled()
    flipped = diff(result, replace(view, services={**view.services, ("lab", "fast"): True}))
    assert [w.line for w in flipped] == ["service lab/fast"]
    [service] = flipped
    assert isinstance(service, ApplyObject)
    assert "publishNotReadyAddresses" not in service.manifest["spec"]


def test_a_status_is_written_only_when_it_differs() -> None:
    result, view = seed_settled()
    stale = replace(view, slots=tuple(
        replace(s, status=s.status.model_copy(update={"reason": "old"}))
        if s.name == "quality" else s for s in view.slots))
    writes = diff(result, stale)
    assert lines(writes) == ["status lab/quality phase=Standby"]
    status = writes[0]
    assert isinstance(status, ApplyStatus)
    assert status.status == result.slot("lab", "quality").status and status.repeats is None


def swap_to_quality() -> tuple[Plan, View]:
    """fast Ready past its minimum residency, then a request for quality."""
    _, view = seed_settled()
    later = NOW + datetime.timedelta(minutes=1)
    view = replace(view, demands={"local/quality": later})
    return plan(view, later), view


def test_a_demand_status_goes_first_and_its_slot_repeats_it_only_on_failure() -> None:
    result, view = swap_to_quality()
    writes = diff(result, view)
    first = writes[0]
    assert isinstance(first, ApplyStatus) and first.group == Group("demand", "lab", "quality")
    assert first.line.endswith("(demand)")
    assert first.status["lastRequestTime"]
    again = [w for w in writes[1:] if isinstance(w, ApplyStatus) and w.name == "quality"]
    assert len(again) == 1 and again[0].repeats == first.group
    assert again[0].status == first.status


def test_scale_downs_come_before_scale_ups() -> None:
    result, view = seed_settled()
    names = [d.name for d in result.slots]
    assert names.index("fast") < names.index("quality"), "the plan lists fast first"
    both_differ = with_deployment(with_deployment(view, "fast", replicas=0),
                                  "quality", replicas=1)
    assert lines(diff(result, both_differ)) == ["deployment lab/quality replicas=0",
                                                "deployment lab/fast replicas=1"]


def test_events_are_last() -> None:
    result, view = swap_to_quality()
    writes = diff(result, view)
    kinds = [type(w) for w in writes]
    assert result.events and kinds[-len(result.events):] == [PostEvent] * len(result.events)
    assert PostEvent not in kinds[:-len(result.events)]


TTS = {"class": "TTS", "vram": "4Gi"}


def test_a_missing_workload_child_is_applied_then_its_status() -> None:
    view = seed_view(workloads=(workload("tts", TTS),))
    result = plan(view, NOW)
    writes = [w for w in diff(result, view) if w.group.kind == "workload"]
    decision = result.workload("lab", "tts")
    assert decision.child is not None
    assert writes == [
        ApplyObject(decision.child, f"{decision.child['kind'].lower()} lab/tts active=True",
                    Group("workload", "lab", "tts")),
        ApplyStatus(GpuWorkload.crd, "lab", "tts", decision.status,
                    f"status lab/tts phase={decision.phase}", Group("workload", "lab", "tts"))]


def test_an_idle_workload_child_with_a_changed_template_is_deleted_not_applied() -> None:
    _, view = settled(seed_view(workloads=(workload("tts", TTS),)))
    child = view.workload_children[0]
    idle: WorkloadChild = replace(child, active=False, template_hash="old")
    view = replace(view, workload_children=(idle,))
    result = plan(view, NOW)
    assert result.workload("lab", "tts").recreate_child
    writes = [w for w in diff(result, view) if w.group.kind == "workload"]
    assert isinstance(writes[0], DeleteChild) and writes[0].kind == child.kind
    assert writes[0].line == f"deleted {child.kind.lower()} lab/tts (template changed)"
    assert not any(isinstance(w, ApplyObject) for w in writes)


def test_a_policy_writes_config_map_then_litellm_then_its_status() -> None:
    view = seed_view(policies=(policy(),), litellm={("lab", "litellm"): litellm()})
    result = plan(view, NOW)
    decision = result.policies[0]
    writes = [w for w in diff(result, view) if w.group.kind == "policy"]
    config = (decision.config_hash or "")[:12]
    assert lines(writes) == [f"configmap lab/{decision.config_map['metadata']['name']} "  # type: ignore[index]
                             f"config={config}",
                             f"deployment lab/litellm config={config}",
                             "status routepolicy lab/hybrid"]
    status = writes[-1]
    assert isinstance(status, ApplyStatus) and status.stores_spend_of == decision


# -- act: performing the list ---------------------------------------------------------


class FakeCluster:
    """Records each write; fails those whose line is in ``failing``."""

    def __init__(self, failing: dict[str, int] | None = None) -> None:
        self.failing = failing or {}
        self.performed: list[str] = []

    def __call__(self, api: Any, write: Write, now: datetime.datetime) -> None:
        status = self.failing.get(write.line)
        if status is not None:
            raise ApiException(status=status, reason="Conflict")
        self.performed.append(write.line)


def slot_group(name: str) -> Group:
    return Group("slot", "lab", name)


def apply(line: str, group: Group) -> ApplyObject:
    return ApplyObject({"kind": "Deployment"}, line, group)


def status(line: str, group: Group, **kwargs: Any) -> ApplyStatus:
    return ApplyStatus(ModelSlot.crd, group.namespace, group.name, {}, line, group, **kwargs)


def test_a_conflict_stops_the_rest_of_its_slot_only() -> None:
    writes: list[Write] = [apply("deployment lab/fast replicas=0", slot_group("fast")),
                           status("status lab/fast phase=Unloading", slot_group("fast")),
                           apply("deployment lab/quality replicas=1", slot_group("quality"))]
    cluster = FakeCluster({"deployment lab/fast replicas=0": 409})
    assert act(None, writes, NOW, write_one=cluster) == [
        "conflict on lab/fast (409), replanning", "deployment lab/quality replicas=1"]
    assert cluster.performed == ["deployment lab/quality replicas=1"]


def test_another_api_error_stops_the_slot_without_a_line() -> None:
    writes: list[Write] = [apply("deployment lab/fast replicas=0", slot_group("fast")),
                           status("status lab/fast phase=Unloading", slot_group("fast"))]
    cluster = FakeCluster({"deployment lab/fast replicas=0": 500})
    assert act(None, writes, NOW, write_one=cluster) == []


@pytest.mark.parametrize("demand_fails", [False, True])
def test_a_slot_repeats_its_demand_status_only_when_that_failed(demand_fails: bool) -> None:
    demand = Group("demand", "lab", "quality")
    writes: list[Write] = [
        status("status lab/quality phase=Pending (demand)", demand),
        apply("deployment lab/quality replicas=1", slot_group("quality")),
        status("status lab/quality phase=Pending", slot_group("quality"), repeats=demand)]
    cluster = FakeCluster({"status lab/quality phase=Pending (demand)": 409}
                          if demand_fails else {})
    done = act(None, writes, NOW, write_one=cluster)
    if demand_fails:
        assert done == ["conflict on lab/quality (409), replanning",
                        "deployment lab/quality replicas=1", "status lab/quality phase=Pending"]
    else:
        assert done == ["status lab/quality phase=Pending (demand)",
                        "deployment lab/quality replicas=1"]


def test_a_workload_error_is_silent_and_stops_its_workload() -> None:
    group = Group("workload", "lab", "tts")
    writes: list[Write] = [apply("job lab/tts active=True", group),
                           status("status lab/tts phase=Admitted", group)]
    cluster = FakeCluster({"job lab/tts active=True": 404})
    assert act(None, writes, NOW, write_one=cluster) == []


def test_a_policy_status_stored_reports_its_spend_and_a_failed_one_a_conflict() -> None:
    view = seed_view(policies=(policy(),), litellm={("lab", "litellm"): litellm()})
    writes = [w for w in diff(plan(view, NOW), view) if w.group.kind == "policy"]
    stored: list[PolicyDecision] = []
    assert act(None, writes, NOW, stored.append,
               write_one=FakeCluster())[-1] == "status routepolicy lab/hybrid"
    assert len(stored) == 1
    failing = FakeCluster({writes[0].line: 409})
    assert act(None, writes, NOW, stored.append,
               write_one=failing) == ["conflict on routepolicy lab/hybrid (409), replanning"]
    assert failing.performed == [] and len(stored) == 1


def test_a_failed_event_is_reported_and_the_next_one_still_posted() -> None:
    result, view = swap_to_quality()
    events = [w for w in diff(result, view) if isinstance(w, PostEvent)]
    assert len(events) >= 1
    twice = [events[0], replace(events[0], line=events[0].line + " again")]
    cluster = FakeCluster({events[0].line: 500})
    assert act(None, twice, NOW, write_one=cluster) == [
        events[0].line, events[0].line + " again"]
    assert cluster.performed == [events[0].line + " again"]


def test_the_version_seen_becomes_the_applied_deployments_precondition(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    class Apps:
        def __init__(self, api: Any) -> None:
            pass

        def patch_namespaced_deployment(self, name: str, namespace: str,
                                        body: dict[str, Any], **options: Any) -> Any:
            sent.append(body)
            return SimpleNamespace(metadata=SimpleNamespace(resource_version="43"))

    monkeypatch.setattr(client, "AppsV1Api", Apps)
    result, view = seed_settled()
    writes = diff(result, with_deployment(view, "fast", replicas=0))
    written: list[Written] = []
    act(None, writes, NOW, written=written)
    assert written == [Written("deployments", "lab", "fast", 43)], \
        "the new version is handed on, for the watch caches to wait for"
    manifest = result.slot("lab", "fast").deployment
    assert manifest is not None and "resourceVersion" not in manifest["metadata"]
    assert sent == [{**manifest, "metadata": {**manifest["metadata"],
                                              "resourceVersion": RESOURCE_VERSION}}]
