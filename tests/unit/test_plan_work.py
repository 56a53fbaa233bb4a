"""How much work ``plan`` does per object, counted rather than timed: one decision
per slot and per workload in every plan, and nothing computed from an unchanged
object again when the caller keeps its memo (the VRAM figure, the pod template,
the warm lists, the Fits condition, the conditions of a slot without a place),
while what a changed object reads is computed again."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
from collections.abc import Callable
from typing import Any, cast

import pytest

from hybrid_compute.api.gpuworkload import GpuWorkloadSpec, GpuWorkloadStatus
from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus
from hybrid_compute.api.units import MIB
from hybrid_compute.control import clock, state_api
from hybrid_compute.control import diff as diff_module
from hybrid_compute.control.diff import ApplyObject, ApplyStatus, DiffMemo, Write, diff
from hybrid_compute.control.loop import Runtime
from hybrid_compute.plan import (
    conditions,
    conflicts,
    evaluation,
    model_vram,
    objects,
    plan,
    slots,
    warm_standby,
    workloads,
)
from hybrid_compute.plan import demand as demand_module
from hybrid_compute.plan.memo import PlanMemo, ValueCache
from hybrid_compute.plan.outputs import Plan
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import (
    DeploymentInfo,
    GpuNode,
    PodInfo,
    SlotInfo,
    View,
    WorkloadInfo,
)
from hybrid_compute.render import children

NOW = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)
SLOTS = 40
WORKLOADS = 10


def crowded_view() -> View:
    """Slots and workloads over four nodes of two shapes, some asked for."""
    nodes = tuple(GpuNode(f"node-{n}", 2 if n % 2 else 4, 24576 * MIB, replicas=1,
                          allocatable=4) for n in range(4))
    slot_infos = tuple(
        SlotInfo("ns", f"m{index}", f"uid-{index}", 1, ModelSlotSpec.model_validate({
            "alias": f"local/m{index}", "activation": "OnDemand", "idleTimeout": "5m",
            "priority": index, "model": {"path": f"m{index}.gguf",
                                         "vram": f"{1 + index % 12}Gi"}}))
        for index in range(SLOTS))
    workload_infos = tuple(
        WorkloadInfo("ns", f"w{index}", f"uid-w{index}", 1, GpuWorkloadSpec.model_validate({
            "class": "Other", "vram": "4Gi",
            "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}}))
        for index in range(WORKLOADS))
    return View(nodes=nodes, slots=slot_infos, workloads=workload_infos,
                demands={f"local/m{index}": NOW for index in range(0, SLOTS, 3)})


class Counter:
    """Counts the calls of a module function, still calling it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
        self.calls = 0
        original: Callable[..., Any] = getattr(module, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


ASKED = len(range(0, SLOTS, 3))
"""The slots of :func:`crowded_view` with a request: the others are quiet."""


def test_each_slot_and_workload_is_decided_at_most_once_per_plan_and_quiet_slots_not_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet slot (OnDemand, not asked for, holding nothing) is decided on the first
    plan and taken from it on the next ones; every plan still holds one decision per
    slot, the same as a plan without a memo makes."""
    slot_decisions = Counter(monkeypatch, slots, "decide_slot")
    candidates = Counter(monkeypatch, demand_module, "_slot_candidate")
    workload_decisions = Counter(monkeypatch, workloads, "decide")
    view = crowded_view()
    memo = PlanMemo()
    plan(view, NOW, memo)
    assert (slot_decisions.calls, candidates.calls, workload_decisions.calls) == (
        SLOTS, SLOTS, WORKLOADS)
    for second in range(1, 3):
        moment = NOW + datetime.timedelta(seconds=second)
        result = plan(view, moment, memo)
        assert len(result.slots) == SLOTS
        fresh = plan(view, moment)
        assert [d.status for d in result.slots] == [d.status for d in fresh.slots]
        assert [d.replicas for d in result.slots] == [d.replicas for d in fresh.slots]
    assert (slot_decisions.calls, candidates.calls, workload_decisions.calls) == (
        SLOTS + 2 * ASKED + 2 * SLOTS, SLOTS + 2 * ASKED + 2 * SLOTS, 5 * WORKLOADS), \
        "the plans with the memo decide only the asked-for slots again"


def _planned_again(view: View, changed: View, moment: datetime.datetime,
                   monkeypatch: pytest.MonkeyPatch) -> tuple[int, Plan]:
    """How many slots besides the asked-for ones a plan of ``changed`` decides again
    after ``view`` settled in its memo, and that plan."""
    memo = PlanMemo()
    plan(view, NOW, memo)
    plan(view, NOW + datetime.timedelta(seconds=1), memo)
    decisions = Counter(monkeypatch, slots, "decide_slot")
    result = plan(changed, moment, memo)
    return decisions.calls - ASKED, result


@pytest.mark.parametrize("change", ["request", "new record", "pod", "clock set back",
                                    "settings"])
def test_a_quiet_slot_is_planned_again_when_what_it_reads_changes(
        change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    view = crowded_view()
    quiet = view.slots[1]
    moment = NOW + datetime.timedelta(seconds=2)
    if change == "clock set back":
        moment = NOW - datetime.timedelta(minutes=1)
    changed = {
        "request": lambda: dataclasses.replace(
            view, demands={**view.demands, quiet.spec.alias: moment}),
        "new record": lambda: dataclasses.replace(view, slots=(
            view.slots[0], dataclasses.replace(quiet), *view.slots[2:])),
        "pod": lambda: dataclasses.replace(view, pods=(_pod_going_away(quiet),)),
        "clock set back": lambda: view,
        "settings": lambda: dataclasses.replace(
            view, settings=PlanSettings(idle_check_interval=datetime.timedelta(seconds=7))),
    }[change]()
    again, result = _planned_again(view, changed, moment, monkeypatch)
    assert again == (SLOTS - ASKED if change in ("clock set back", "settings") else 1)
    assert [d.status for d in result.slots] == [d.status for d in plan(changed, moment).slots]
    if change == "request":
        assert result.slot("ns", quiet.name).phase in ("Loading", "Pending"), \
            "asked for: it wants a GPU"


def _pod_going_away(slot: SlotInfo) -> PodInfo:
    """A pod of ``slot`` that is going away: the slot holds memory again."""
    return PodInfo(f"{slot.name}-pod", slot.namespace, slot.name, "node-0", 2 * 1024**3, 1,
                   "stale", ready=False, terminating=True)


def test_a_kept_memo_computes_nothing_again_for_unchanged_objects(
        monkeypatch: pytest.MonkeyPatch) -> None:
    figures = Counter(monkeypatch, model_vram, "choose")
    templates = Counter(monkeypatch, children, "pod_template")
    warm_lists_built = Counter(monkeypatch, warm_standby, "warm_files")
    warm_orders = Counter(monkeypatch, warm_standby, "_sorted_by_rank")
    files_listed = Counter(monkeypatch, warm_standby, "_loadable_files")
    view = crowded_view()
    memo = PlanMemo()
    first = plan(view, NOW, memo)
    assert figures.calls == SLOTS, "one VRAM figure per GPU slot"
    assert warm_lists_built.calls == 2, "one warm list per shape of node"
    assert (warm_orders.calls, files_listed.calls) == (1, 2), \
        "the slots put in order once, their files listed once per shape of node"
    before = (figures.calls, templates.calls, warm_lists_built.calls, warm_orders.calls,
              files_listed.calls)
    later = plan(view, NOW + datetime.timedelta(seconds=1), memo)
    assert (figures.calls, templates.calls, warm_lists_built.calls, warm_orders.calls,
            files_listed.calls) == before, \
        "the same objects planned again: no figure, template, order or warm list is rebuilt"
    assert later.warm == first.warm
    assert all(later.warm[node] is first.warm[node] for node in first.warm)


def test_a_new_request_rebuilds_only_the_warm_lists_it_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    view = crowded_view()
    memo = PlanMemo()
    first = plan(view, NOW, memo)
    warm_lists_built = Counter(monkeypatch, warm_standby, "warm_files")
    sorts = Counter(monkeypatch, warm_standby, "_sorted_by_rank")
    asked = View(nodes=view.nodes, slots=view.slots, workloads=view.workloads,
                 demands={**view.demands, "local/m1": NOW})
    later = plan(asked, NOW + datetime.timedelta(seconds=1), memo)
    assert warm_lists_built.calls <= 2, "at most one list per shape of node"
    assert sorts.calls == 0, "one slot's entry changed: it is put in its place, no slot is sorted"
    assert later.warm != first.warm
    assert later.warm == plan(asked, NOW + datetime.timedelta(seconds=1)).warm, \
        "the memo changes how much is computed, never the result"


def _with_vram(view: View, index: int, vram: str) -> View:
    """``view`` with slot ``index`` stored anew, asking for ``vram``."""
    slot = view.slots[index]
    assert slot.spec is not None
    model = slot.spec.model.model_copy(update={"vram": vram})
    changed = dataclasses.replace(slot, spec=slot.spec.model_copy(update={"model": model}))
    return dataclasses.replace(
        view, slots=tuple(changed if i == index else s for i, s in enumerate(view.slots)))


def test_equal_settings_are_compared_once_a_plan_not_once_an_object(
        monkeypatch: pytest.MonkeyPatch) -> None:
    view = crowded_view()
    memo = PlanMemo()
    plan(view, NOW, memo)
    compared = Counter(monkeypatch, PlanSettings, "__eq__")
    figures = Counter(monkeypatch, model_vram, "choose")
    again = dataclasses.replace(view, settings=PlanSettings())  # equal, not the same object
    assert again.settings is not view.settings
    plan(again, NOW + datetime.timedelta(seconds=1), memo)
    assert compared.calls <= 1, "the memo compares the settings once, then finds them by identity"
    assert figures.calls == 0, "equal settings reuse every VRAM figure"
    changed = dataclasses.replace(view, settings=PlanSettings(headroom_bytes=512 * MIB))
    plan(changed, NOW + datetime.timedelta(seconds=2), memo)
    assert figures.calls == SLOTS, "other settings size every slot again"


def test_a_fits_condition_is_made_once_per_vram_figure(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    made = Counter(monkeypatch, model_vram, "fits_condition")
    view = crowded_view()
    memo = PlanMemo()
    first = plan(view, NOW, memo)
    assert made.calls == SLOTS
    later = plan(view, NOW + datetime.timedelta(seconds=1), memo)
    assert made.calls == SLOTS, "unchanged slots keep their Fits condition"
    assert later.slots[0].condition_updates[1] is first.slots[0].condition_updates[1]
    resized = plan(_with_vram(view, 0, "3Gi"), NOW + datetime.timedelta(seconds=2), memo)
    assert made.calls == SLOTS + 1, "a slot stored anew with another size gets its own"
    assert resized.slot("ns", "m0").condition_updates[1].message.startswith("needs 3.0 GiB")


def test_the_conditions_of_a_slot_without_a_place_are_made_once_per_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made = Counter(monkeypatch, slots, "_not_placed_conditions")
    view = crowded_view()
    memo = PlanMemo()
    first = plan(view, NOW, memo)
    idle = [d for d in first.slots if d.phase == "Standby"]
    assert idle, "the crowded view leaves slots idle"
    reasons = {(d.phase, d.reason) for d in first.slots
               if d.phase in ("Standby", "Pending", "Unloading")}
    assert made.calls == len(reasons), "slots with the same phase and reason share them"
    later = plan(view, NOW + datetime.timedelta(seconds=1), memo)
    assert made.calls == len(reasons), "no reason changed: nothing is made again"
    before = idle[0]
    after = later.slot(before.namespace, before.name)
    assert after.condition_updates == before.condition_updates
    assert all(new is old for new, old in zip(after.condition_updates[2:],
                                               before.condition_updates[2:], strict=True))
    asked = View(nodes=view.nodes, slots=view.slots, workloads=view.workloads,
                 demands={f"local/m{index}": NOW for index in range(SLOTS)})
    plan(asked, NOW + datetime.timedelta(seconds=2), memo)
    assert made.calls > len(reasons), "slots that now wait for room have a new reason"


def test_records_stored_anew_replace_their_entries_rather_than_pile_up() -> None:
    """A slot whose record is stored again and again (each status write) holds one
    entry in each cache keyed by slot records, not one per record it ever had."""
    view = crowded_view()
    memo, statuses = PlanMemo(), DiffMemo()
    for second in range(6):
        renewed = tuple(dataclasses.replace(slot) for slot in view.slots)
        view = dataclasses.replace(view, slots=renewed)
        diff(plan(view, NOW + datetime.timedelta(seconds=second), memo), view, statuses)
    for cache in (memo._vram_choices, memo._gate_served, memo._warm_entries,
                  memo._endpoints, memo._settled, memo._statuses):
        assert len(cache) <= SLOTS + WORKLOADS


def test_a_value_cache_computes_once_per_key_and_is_bounded() -> None:
    cache: ValueCache[tuple[str, str], str] = ValueCache(limit=3)
    calls: list[str] = []

    def compute(phase: str, reason: str) -> str:
        calls.append(reason)
        return f"{phase}: {reason}"

    assert cache.get(("Standby", "idle"), compute, "Standby", "idle") == "Standby: idle"
    assert cache.get(("Standby", "idle"), compute, "Standby", "idle") == "Standby: idle"
    assert calls == ["idle"]
    for index in range(10):
        cache.get(("Pending", str(index)), compute, "Pending", str(index))
        assert len(cache) <= 4


def test_a_warm_list_entry_is_made_again_only_for_a_slot_whose_rank_changed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made = Counter(monkeypatch, warm_standby, "ranked_entry")
    view = crowded_view()
    memo = PlanMemo()
    first = plan(view, NOW, memo)
    not_loaded = [d for d in first.slots if d.phase in warm_standby.WARM_PHASES]
    assert made.calls == len(not_loaded), "one entry per slot that is not loaded"
    plan(view, NOW + datetime.timedelta(seconds=1), memo)
    assert made.calls == len(not_loaded), "nothing changed: every entry is kept"
    standby = next(d for d in not_loaded if d.phase == "Standby")
    assert standby.alias is not None
    asked = View(nodes=view.nodes, slots=view.slots, workloads=view.workloads,
                 demands={**view.demands, standby.alias: NOW - datetime.timedelta(hours=2)})
    later = plan(asked, NOW + datetime.timedelta(seconds=2), memo)
    assert later.slot(standby.namespace, standby.name).phase == "Standby", \
        "an old request leaves the slot idle"
    assert made.calls == len(not_loaded) + 1, "only the slot asked for is ranked again"


def test_the_model_a_slot_serves_is_worked_out_once_per_slot_object(
        monkeypatch: pytest.MonkeyPatch) -> None:
    worked_out = Counter(monkeypatch, evaluation, "served_spec")
    view = crowded_view()
    memo = PlanMemo()
    plan(view, NOW, memo)
    assert worked_out.calls == SLOTS, "once per GPU slot, before it is sized"
    plan(view, NOW + datetime.timedelta(seconds=1), memo)
    assert worked_out.calls == SLOTS, "the same slot objects serve the same model"
    plan(_with_vram(view, 0, "3Gi"), NOW + datetime.timedelta(seconds=2), memo)
    assert worked_out.calls == SLOTS + 1, "a slot stored anew is looked at again"


def test_conflicts_are_judged_again_only_when_a_slot_or_policy_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    judged = Counter(monkeypatch, conflicts, "judge")
    view = crowded_view()
    memo = PlanMemo()
    plan(view, NOW, memo)
    kept = View(nodes=view.nodes, slots=tuple(view.slots), workloads=view.workloads,
                demands={"local/m1": NOW})
    plan(kept, NOW + datetime.timedelta(seconds=1), memo)
    assert judged.calls == 1, "the same slot records, in a new view: the verdicts stand"
    plan(_with_vram(view, 0, "3Gi"), NOW + datetime.timedelta(seconds=2), memo)
    assert judged.calls == 2, "a slot stored anew is judged with the others again"
    plan(_with_status(view, 1, "edited"), NOW + datetime.timedelta(seconds=3), memo)
    assert judged.calls == 3, "back to the first spec of slot 0"
    plan(_with_status(view, 1, "edited again"), NOW + datetime.timedelta(seconds=4), memo)
    assert judged.calls == 3, "a status stored anew, the spec object kept: the verdicts stand"


def _with_status(view: View, index: int, reason: str) -> View:
    """``view`` with slot ``index`` stored anew with another status and the same spec
    object, as the watch caches hand back a status write."""
    slot = view.slots[index]
    stored = dataclasses.replace(slot, status=slot.status.model_copy(update={"reason": reason}))
    return dataclasses.replace(view, slots=(*view.slots[:index], stored,
                                            *view.slots[index + 1:]))


def test_a_refused_slot_is_decided_from_its_record_as_observed_now() -> None:
    view = crowded_view()
    first = dataclasses.replace(view.slots[0], created=NOW - datetime.timedelta(hours=1))
    assert first.spec is not None and view.slots[1].spec is not None
    twin = dataclasses.replace(view.slots[1], spec=view.slots[1].spec.model_copy(
        update={"alias": first.spec.alias}), created=NOW)
    view = dataclasses.replace(view, slots=(first, twin, *view.slots[2:]))
    memo = PlanMemo()
    assert plan(view, NOW, memo).slot(twin.namespace, twin.name).refused
    later = _with_status(view, 1, "edited")
    decision = plan(later, NOW + datetime.timedelta(seconds=1), memo).slot(
        twin.namespace, twin.name)
    assert decision.refused and decision.slot is later.slots[1]


def test_a_settled_slot_is_decided_again_only_when_what_it_reads_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    decided: list[str] = []
    original = slots._decide

    def counted(slot: SlotInfo, *args: Any) -> Any:
        decided.append(slot.name)
        return original(slot, *args)

    monkeypatch.setattr(slots, "_decide", counted)
    view = crowded_view()
    memo = PlanMemo()
    first = plan(view, NOW, memo)
    standby = next(d for d in first.slots if d.phase == "Standby")
    waiting = next(d for d in first.slots if d.phase == "Pending")
    assert len(decided) == SLOTS
    decided.clear()
    plan(view, NOW + datetime.timedelta(seconds=1), memo)
    assert standby.name not in decided and waiting.name not in decided, \
        "nothing the settled slots read changed: their decisions are kept"
    index = next(i for i, s in enumerate(view.slots) if s.name == standby.name)
    decided.clear()
    plan(_with_vram(view, index, "3Gi"), NOW + datetime.timedelta(seconds=2), memo)
    assert standby.name in decided, "a slot stored anew is decided again"
    decided.clear()
    assert standby.alias is not None
    asked = dataclasses.replace(view, demands={**view.demands, standby.alias: NOW})
    plan(asked, NOW + datetime.timedelta(seconds=3), memo)
    assert standby.name in decided, "a new request decides the slot again"
    decided.clear()
    # The waiting slot's request (idleTimeout 5m) has run out: it no longer waits.
    later = plan(view, NOW + datetime.timedelta(minutes=6), memo)
    assert waiting.name in decided
    assert later.slot(waiting.namespace, waiting.name).phase == "Standby"


def _stored(view: View, writes: list[Write]) -> View:
    """``view`` once ``writes`` are stored, as the watch caches would hand it back:
    records that were written are new objects, the others stay as they were."""
    slot_records = {s.key: s for s in view.slots}
    workload_records = {w.key: w for w in view.workloads}
    deployments = {(d.namespace, d.owner): d for d in view.deployments}
    workload_children = {(c.namespace, c.owner): c for c in view.workload_children}
    services = dict(view.services)
    for write in writes:
        if isinstance(write, ApplyStatus):
            key = (write.namespace, write.name)
            if write.crd.kind == "ModelSlot":
                slot_records[key] = dataclasses.replace(
                    slot_records[key], status=ModelSlotStatus.model_validate(write.status))
            else:
                workload_records[key] = dataclasses.replace(
                    workload_records[key],
                    status=GpuWorkloadStatus.model_validate(write.status))
        elif isinstance(write, ApplyObject):
            manifest = write.manifest
            key = (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
            child = objects.workload_child_from_object(manifest)
            if manifest["kind"] == "Service":
                services[key] = bool(manifest["spec"].get("publishNotReadyAddresses"))
            elif child is not None:
                workload_children[key] = child
            elif (deployment := objects.deployment_from_object(manifest)) is not None:
                deployments[(deployment.namespace, deployment.owner)] = deployment
    return dataclasses.replace(
        view, slots=tuple(slot_records[s.key] for s in view.slots),
        workloads=tuple(workload_records[w.key] for w in view.workloads),
        deployments=tuple(deployments.values()),
        workload_children=tuple(workload_children.values()), services=services)


def _settled(view: View, memo: PlanMemo, statuses: DiffMemo
             ) -> tuple[View, datetime.datetime]:
    """``view`` after a few passes whose writes are stored, and the next moment."""
    moment = NOW
    for _ in range(4):
        view = _stored(view, diff(plan(view, moment, memo), view, statuses))
        moment += datetime.timedelta(seconds=1)
    return view, moment


def test_a_diff_of_a_settled_cluster_renders_and_compares_nothing_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the plan's writes are stored, later passes render no status, Service or
    child again and compare no status field by field: the plan hands out the same
    status dicts, which the diff already found equal to the stored ones, and a settled
    slot's copied decision is not looked at."""
    memo, statuses = PlanMemo(), DiffMemo()
    view, moment = _settled(crowded_view(), memo, statuses)
    assert not diff(plan(view, moment, memo), view, statuses), "the cluster has settled"
    renders = Counter(monkeypatch, conditions, "render_status_once")
    services = Counter(monkeypatch, children, "service")
    workload_children = Counter(monkeypatch, children, "workload_child")
    compared: list[int] = []
    original_same = DiffMemo.same

    def same(self: DiffMemo, stored: dict[str, Any], rendered: dict[str, Any]) -> bool:
        known = original_same(self, stored, rendered)
        compared.append(int(known))
        return known

    monkeypatch.setattr(DiffMemo, "same", same)
    dumps = Counter(monkeypatch, diff_module, "_dump")
    made_afresh = 0
    for second in range(1, 4):
        result = plan(view, moment + datetime.timedelta(seconds=second), memo)
        made_afresh += sum(1 for decision in result.slots if decision.kept is None)
        assert not diff(result, view, statuses)
    assert (renders.calls, services.calls, workload_children.calls, dumps.calls) == \
        (0, 0, 0, 0)
    assert 0 < made_afresh < 3 * SLOTS, "some slots are settled, some are not"
    # A slot decided afresh (it has a place, or pods) has its status compared, found
    # equal at once; a settled one's decision, copied from the same kept decision, is
    # not looked at again.
    assert len(compared) == made_afresh + 3 * WORKLOADS and all(compared)
    # A status stored anew is rendered and compared again, and only that one.
    changed = dataclasses.replace(view.slots[0], status=view.slots[0].status.model_copy(
        update={"reason": "edited by hand"}))
    edited = dataclasses.replace(view, slots=(changed, *view.slots[1:]))
    writes = diff(plan(edited, moment + datetime.timedelta(seconds=5), memo), edited, statuses)
    assert renders.calls == 1
    assert [(w.group.namespace, w.group.name) for w in writes] == [changed.key]


def test_a_stored_status_found_equal_is_held_as_the_rendered_dict() -> None:
    """Once a stored status is found equal to the plan's render, the diff keeps the
    rendered dict as its dump: one dict per status rather than two equal ones."""
    memo, statuses = PlanMemo(), DiffMemo()
    view, moment = _settled(crowded_view(), memo, statuses)
    result = plan(view, moment, memo)
    assert not diff(result, view, statuses), "the cluster has settled"
    rendered = {decision.slot.key: decision.status for decision in result.slots
                if decision.kept is None}
    assert rendered, "some slots are decided afresh on every pass"
    dumps = statuses.dumps([slot.status for slot in view.slots])
    held = {slot.key: dump for slot, dump in zip(view.slots, dumps, strict=True)}
    assert all(held[key] is status for key, status in rendered.items())


def test_a_deployment_stored_anew_but_equal_is_compared_once_then_found_by_identity(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Deployment's status event stores its record anew, equal to the one before (the
    plan does not read its status): the settled slots' decisions and the diff compare
    it once, and hold it from then on."""
    memo, statuses = PlanMemo(), DiffMemo()
    view, moment = _settled(crowded_view(), memo, statuses)
    renewed = dataclasses.replace(view, deployments=tuple(
        dataclasses.replace(d, resource_version=f"{d.resource_version}-status")
        for d in view.deployments))
    compared = Counter(monkeypatch, DeploymentInfo, "__eq__")
    result = plan(renewed, moment, memo)
    assert not diff(result, renewed, statuses)
    settled = sum(1 for d in result.slots if d.kept is not None)
    assert settled > 0 and compared.calls > 0
    before = compared.calls
    for second in range(1, 3):
        result = plan(renewed, moment + datetime.timedelta(seconds=second), memo)
        assert not diff(result, renewed, statuses)
    assert sum(1 for d in result.slots if d.kept is not None) == settled
    assert compared.calls == before, "held as observed now: found by identity"


def test_a_settled_slot_is_written_again_when_its_children_change_under_it() -> None:
    """The diff passes over a settled slot only while what it observed is the same: a
    Service deleted by hand, or a Deployment scaled by hand, is put back."""
    memo, statuses = PlanMemo(), DiffMemo()
    view, moment = _settled(crowded_view(), memo, statuses)
    settled = next(d for d in plan(view, moment, memo).slots if d.kept is not None)
    key = settled.slot.key
    services = {k: v for k, v in view.services.items() if k != key}
    without_service = dataclasses.replace(view, services=services)
    writes = diff(plan(without_service, moment, memo), without_service, statuses)
    assert [w.line for w in writes] == [f"service {key[0]}/{key[1]}"]
    deployments = tuple(dataclasses.replace(d, replicas=1) if (d.namespace, d.owner) == key
                        else d for d in view.deployments)
    scaled = dataclasses.replace(view, deployments=deployments)
    writes = diff(plan(scaled, moment, memo), scaled, statuses)
    assert [w.line for w in writes] == [f"deployment {key[0]}/{key[1]} replicas=0"]
    assert not diff(plan(view, moment, memo), view, statuses)


def test_the_routers_state_writes_a_settled_slot_once(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """Every router fetches the state after every plan: a settled slot's entry is
    written once, a loading slot's (its predicted wait reads the clock) on every
    fetch, and the text says what :func:`state_api.state_document` says."""
    memo, statuses = PlanMemo(), DiffMemo()
    view, moment = _settled(crowded_view(), memo, statuses)
    monkeypatch.setattr(clock, "now", lambda: moment)
    runtime = Runtime(cast(Any, None), view.settings)
    states = state_api.RouterStates()
    written = Counter(monkeypatch, state_api, "slot_entry")
    for version in range(1, 4):
        runtime.last_plan = result = plan(view, moment + datetime.timedelta(seconds=version),
                                          memo)
        runtime.plan_version = version
        loading = sum(1 for d in result.slots if d.phase == "Loading")
        afresh = sum(1 for d in result.slots if d.kept is None and d.phase != "Loading")
        assert loading > 0 and afresh < SLOTS - loading
        for fetch in range(2):
            before = written.calls
            text, not_ready = states.body(runtime)
            if version == 1 and fetch == 0:
                assert written.calls - before == SLOTS, "the first plan writes every slot"
            elif fetch == 0:
                assert written.calls - before == loading + afresh
            else:
                assert written.calls - before == loading, "the same plan: loading slots only"
            document = state_api.state_document(runtime)
            assert json.loads(text) == document
            assert not_ready == {(s["namespace"], s["name"]) for s in document["slots"]
                                 if not s["ready"]}


def test_the_collector_waits_while_a_plan_is_made_and_runs_again_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No collection walks a plan being built; the collector runs again afterwards,
    also when the plan fails, and a caller that paused it finds it paused."""
    enabled_while_planning: list[bool] = []
    original = slots.decide_slot

    def deciding(*args: Any, **kwargs: Any) -> Any:
        enabled_while_planning.append(gc.isenabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(slots, "decide_slot", deciding)
    assert gc.isenabled()
    plan(crowded_view(), NOW)
    assert enabled_while_planning and not any(enabled_while_planning)
    assert gc.isenabled()

    def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug in a decision")

    monkeypatch.setattr(slots, "decide_slot", failing)
    with pytest.raises(RuntimeError):
        plan(crowded_view(), NOW)
    assert gc.isenabled()
    gc.disable()
    try:
        monkeypatch.setattr(slots, "decide_slot", original)
        plan(crowded_view(), NOW)
        assert not gc.isenabled(), "left as the caller set it"
    finally:
        gc.enable()


def test_a_quiet_slot_keeps_its_decision_while_its_status_reads_no_clock() -> None:
    """Once its status is stored, a quiet slot's decision is the same object on every
    plan (nothing is copied, rendered or compared for it again); before that, while
    its status would still name the moment of a change, it is made again at each
    plan's moment, as a plan without a memo makes it."""
    memo, statuses = PlanMemo(), DiffMemo()
    view = crowded_view()
    quiet_key = view.slots[1].key
    unstored = [plan(view, NOW + datetime.timedelta(seconds=second), memo)
                for second in range(3)]
    decisions = [result.slot(*quiet_key) for result in unstored]
    assert [d.now for d in decisions] == [NOW + datetime.timedelta(seconds=s)
                                          for s in range(3)], "its conditions change now"
    assert decisions[2].status == plan(view, decisions[2].now).slot(*quiet_key).status
    stored, moment = _settled(view, memo, statuses)
    first = plan(stored, moment, memo).slot(*quiet_key)
    later = [plan(stored, moment + datetime.timedelta(seconds=s), memo).slot(*quiet_key)
             for s in range(1, 3)]
    assert all(decision is first for decision in later)
    fresh = plan(stored, moment + datetime.timedelta(seconds=2)).slot(*quiet_key)
    assert first.status == fresh.status and first.phase == fresh.phase == "Standby"


def test_a_quiet_slot_handed_out_again_keeps_its_part_in_the_warm_lists(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm lists work out a slot's part again only for decisions made anew: a
    quiet slot's decision handed out again keeps the part it had, and the lists are
    what a plan without a memo makes."""
    memo, statuses = PlanMemo(), DiffMemo()
    view, moment = _settled(crowded_view(), memo, statuses)
    before = plan(view, moment, memo)
    parts = Counter(monkeypatch, warm_standby, "_part")
    later = moment + datetime.timedelta(seconds=1)
    result = plan(view, later, memo)
    again = sum(1 for old, new in zip(before.slots, result.slots, strict=True) if old is new)
    assert again > 0, "quiet slots are handed out again"
    assert parts.calls == len(result.slots) - again
    assert result.warm == plan(view, later).warm
