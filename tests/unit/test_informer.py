"""The watch caches: a list, then watch events, kept as parsed records; the loop woken
only by what the plan can see change, and never by the echo of its own writes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.api.labels import SLOT_LABEL
from hybrid_compute.control import informer as informer_module
from hybrid_compute.control.informer import ClusterCache, Informer, Source, Written
from hybrid_compute.control.observe import cluster_view
from hybrid_compute.plan.objects import deployment_from_object
from hybrid_compute.plan.settings import PlanSettings


def pod(name: str, version: int, phase: str = "Running", **labels: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "lab", "name": name, "resourceVersion": str(version),
                         "labels": labels},
            "status": {"phase": phase}}


def phase_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """A record that reads the name and phase only, as View records read some fields."""
    if (obj.get("metadata") or {}).get("labels", {}).get("skip"):
        return None
    return obj["metadata"]["name"], obj["status"]["phase"]


class Stream:
    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.released = False

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        # Split mid-line, as chunks arrive.
        data = b"".join(json.dumps(event).encode() + b"\n" for event in self.events)
        yield from (data[index:index + 7] for index in range(0, len(data), 7))

    def release_conn(self) -> None:
        self.released = True


class FakeApi:
    """Answers a list with ``items``, then each watch with the next batch of events."""

    def __init__(self, items: list[dict[str, Any]], version: int,
                 watches: list[list[dict[str, Any]]]) -> None:
        self.items, self.version, self.watches = items, version, watches
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **options: Any) -> Any:
        self.calls.append(options)
        if options.get("watch"):
            return Stream(self.watches.pop(0))

        class Listed:
            data = json.dumps({"metadata": {"resourceVersion": str(self.version)},
                               "items": self.items}).encode()
        return Listed()


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def make(api: FakeApi) -> tuple[Informer[tuple[str, str]], list[int]]:
    woken: list[int] = []
    return Informer(Source("pods", "pods", api, phase_of), lambda: woken.append(1)), woken


def test_a_list_then_events_keep_the_records_in_list_order() -> None:
    api = FakeApi([pod("b", 5), pod("a", 4), pod("hidden", 3, skip="1")], 10, [[
        event("ADDED", pod("c", 11, "Pending")),
        event("MODIFIED", pod("a", 12, "Succeeded")),
        event("DELETED", pod("b", 13)),
        event("BOOKMARK", {"metadata": {"resourceVersion": "20"}}),
    ]])
    informer, woken = make(api)
    informer._relist()
    assert informer.synced.is_set()
    assert informer.records() == (("a", "Running"), ("b", "Running"))
    assert informer.records() is informer.records(), "built once until something changes"
    informer._watch()
    assert informer.records() == (("a", "Succeeded"), ("c", "Pending"))
    assert api.calls[1]["resource_version"] == "10" and api.calls[1]["watch"]
    assert informer._resource_version == "20", "a bookmark moves the watch on"
    assert woken == [1, 1, 1, 1], "the list, then each change"
    assert informer.recently_deleted() == [("b", "Running")]


def test_a_change_the_records_do_not_read_wakes_nothing() -> None:
    api = FakeApi([pod("a", 4)], 10, [[event("MODIFIED", pod("a", 11)),
                                       event("MODIFIED", pod("a", 12, "Failed"))]])
    informer, woken = make(api)
    informer._relist()
    first = informer.records()
    informer._receive(api.watches[0][0])
    assert informer.records() == first, "a heartbeat the record does not read"
    assert woken == [1]
    informer._receive(api.watches[0][1])
    assert informer.records() == (("a", "Failed"),) and woken == [1, 1]


def test_the_echo_of_an_own_write_wakes_nothing_and_is_waited_for() -> None:
    informer, woken = make(FakeApi([pod("a", 4)], 10, []))
    informer._relist()
    informer.expect(("lab", "a"), 11)
    assert not informer.holds(("lab", "a"), 11)
    informer._receive(event("MODIFIED", pod("a", 11, "Failed")))
    assert informer.holds(("lab", "a"), 11)
    assert woken == [1], "the operator's own write came back"
    informer._receive(event("MODIFIED", pod("a", 12, "Running")))
    assert woken == [1, 1], "someone else's change wakes the loop"


def test_a_watch_too_far_behind_lists_again() -> None:
    api = FakeApi([pod("a", 4)], 10, [[event("ERROR", {"code": 410, "message": "too old"})],
                                      []])
    informer, _ = make(api)
    stop = threading.Event()

    def relisted_once(**options: Any) -> Any:
        if not options.get("watch") and len(api.calls) >= 2:
            stop.set()
            api.items = [pod("a", 30, "Failed")]
        return api(**options)

    informer.source = Source("pods", "pods", relisted_once, phase_of)
    informer.run(stop)
    assert [bool(call.get("watch")) for call in api.calls] == [False, True, False, True]
    assert api.calls[3]["resource_version"] == "10"
    assert informer.records() == (("a", "Failed"),)


def test_the_next_pass_waits_for_the_last_passes_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(informer_module, "CAUGHT_UP_SECONDS", 0.2)
    cache = ClusterCache(client.ApiClient(), lambda: None)
    cache.slot_deployments._relist = lambda: None  # type: ignore[method-assign]
    deployment = {"metadata": {"namespace": "lab", "name": "fast", "resourceVersion": "7",
                               "labels": {"hybridcompute.io/slot": "fast"}},
                  "spec": {"replicas": 1}}
    cache.slot_deployments._receive(event("ADDED", deployment))
    cache.expect([Written("deployments", "lab", "fast", 8),
                  Written("configmaps", "lab", "litellm-config", 3)])

    async def scenario() -> tuple[bool, bool]:
        late = await cache.caught_up()
        cache.slot_deployments._receive(event("MODIFIED", {
            **deployment, "metadata": {**deployment["metadata"], "resourceVersion": "8"}}))
        return late, await cache.caught_up()

    late, held = asyncio.run(scenario())
    assert not late, "the Deployment's echo had not come: the wait timed out"
    assert held, "ConfigMaps are not watched: nothing to wait for"


def test_a_deployments_status_update_wakes_nothing_but_its_version_is_kept() -> None:
    """The plan reads a slot Deployment's spec; its resourceVersion is the precondition
    of the next scale-up, so it must be current, yet a status update is no change."""
    woken: list[int] = []
    deployments = Informer(Source("slot deployments", "deployments",
                                  FakeApi([], 1, []), deployment_from_object),
                           lambda: woken.append(1))
    body = {"metadata": {"namespace": "lab", "name": "fast", "resourceVersion": "7",
                         "labels": {SLOT_LABEL: "fast"}}, "spec": {"replicas": 0}}
    deployments._receive(event("ADDED", body))
    deployments._receive(event("MODIFIED", {
        **body, "metadata": {**body["metadata"], "resourceVersion": "8"},
        "status": {"observedGeneration": 1}}))
    assert woken == [1]
    [held] = deployments.records()
    assert held.resource_version == "8"


def test_an_owner_whose_child_was_just_deleted_is_read_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The garbage collector deletes a slot's Deployment after the slot: when the
    Deployment's deletion is heard first, the slot is read from the API server, and
    one that is gone is not planned for (its Deployment would be created again)."""
    cache = ClusterCache(client.ApiClient(), lambda: None)
    for name in ("gone", "kept"):
        cache.slots._receive(event("ADDED", {
            "metadata": {"namespace": "lab", "name": name, "uid": f"uid-{name}",
                         "resourceVersion": "5"},
            "spec": {"alias": f"local/{name}", "model": {"path": "m.gguf", "vram": "1Gi"}}}))
        deployment = {"metadata": {"namespace": "lab", "name": name, "resourceVersion": "6",
                                   "labels": {SLOT_LABEL: name}}, "spec": {"replicas": 1}}
        cache.slot_deployments._receive(event("ADDED", deployment))
    cache.slot_deployments._receive(event("DELETED", {
        "metadata": {"namespace": "lab", "name": "gone", "resourceVersion": "7",
                     "labels": {SLOT_LABEL: "gone"}}, "spec": {"replicas": 1}}))
    asked: list[str] = []

    class Custom:
        def __init__(self, api: Any) -> None:
            pass

        def get_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                         plural: str, name: str, **_: Any) -> Any:
            asked.append(name)
            raise ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(client, "CustomObjectsApi", Custom)
    view = cluster_view(cache, client.ApiClient(), PlanSettings(), {}, {})
    assert asked == ["gone"], "only the owner of the deleted child is read"
    assert [slot.name for slot in view.slots] == ["kept"]


def modelslot(version: int, status: dict[str, Any] | None = None,
              alias: str = "local/a") -> dict[str, Any]:
    return {"apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
            "metadata": {"namespace": "lab", "name": "a", "resourceVersion": str(version),
                         "uid": "u", "generation": 1},
            "spec": {"alias": alias, "model": {"path": "a.gguf", "vram": "4Gi"}},
            "status": status or {}}


def test_a_custom_objects_status_change_keeps_its_spec_object() -> None:
    """What the plan keeps by the spec object (the pod template) holds across status
    changes, and an event that changes nothing keeps the record itself."""
    cache = ClusterCache(client.ApiClient(), lambda: None)
    slots = cache.slots
    slots._receive(event("ADDED", modelslot(1)))
    first = slots.records()[0]
    slots._receive(event("MODIFIED", modelslot(2)))
    assert slots.records()[0] is first, "nothing the record reads changed"
    slots._receive(event("MODIFIED", modelslot(3, {"phase": "Standby"})))
    standby = slots.records()[0]
    assert standby.status.phase == "Standby" and standby.spec is first.spec
    slots._receive(event("MODIFIED", modelslot(4, {"phase": "Standby"}, alias="local/b")))
    changed = slots.records()[0]
    assert changed.spec is not None and changed.spec.alias == "local/b"
    assert changed.spec is not first.spec


def test_records_share_the_sets_of_field_names_and_stay_read_only() -> None:
    """The models of two records given the same fields hold one set of their names (a
    set per model would cost each a few hundred bytes); a copy with changes has a set
    of its own, and changing a record in place fails loudly."""
    cache = ClusterCache(client.ApiClient(), lambda: None)
    standby = {"phase": "Standby", "conditions": [
        {"type": "Ready", "status": "False", "reason": "Standby", "message": "idle",
         "lastTransitionTime": "2026-12-01T02:00:00Z"}]}
    cache.slots._receive(event("ADDED", modelslot(1, standby)))
    cache.slots._receive(event("ADDED", {**modelslot(2, standby),
                                         "metadata": {"namespace": "lab", "name": "b",
                                                      "resourceVersion": "2"}}))
    first, second = cache.slots.records()
    assert first.status is not second.status
    assert first.status.model_fields_set is second.status.model_fields_set
    assert (first.status.conditions[0].model_fields_set
            is second.status.conditions[0].model_fields_set)
    assert first.spec is not None and second.spec is not None
    assert first.spec.model.model_fields_set is second.spec.model.model_fields_set
    ready = first.status.model_copy(update={"phase": "Ready", "node": "gpu"})
    assert ready.phase == "Ready" and "node" in ready.model_fields_set
    assert "node" not in second.status.model_fields_set
    with pytest.raises(TypeError, match="not changed in place"):
        first.status.node = "gpu"
    assert "node" not in second.status.model_fields_set
