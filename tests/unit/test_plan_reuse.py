"""A kept memo never changes a plan: sequences of plans over a simulated cluster, whose
unchanged records stay the same objects (as the operator's watch caches keep them),
give at every step exactly the plan a fresh memo gives for the same view and clock,
while demands come and go, pods load and leave, specs change and the clock jumps past
idle timeouts, minimum residencies and sleep times."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus
from hybrid_compute.api.units import GIB
from hybrid_compute.control.diff import DiffMemo, diff
from hybrid_compute.plan import Plan, plan
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.outputs import SlotDecision
from hybrid_compute.plan.view import DeploymentInfo, GpuNode, SlotInfo, View
from hybrid_compute.plan.workloads import WorkloadDecision
from tests.simworld import World, dreamteam, dual_node, slot, workload
from tests.unit.test_plan_work import NOW, crowded_view

_SLOT_RENDERED = ("status", "template", "deployment", "service", "endpoint")
_WORKLOAD_RENDERED = ("status", "template", "child")


def _outcome(decision: SlotDecision | WorkloadDecision, rendered: tuple[str, ...]
             ) -> dict[str, Any]:
    """Every field of a decision but the memo it renders with, and what it renders."""
    fields = {f.name: getattr(decision, f.name) for f in dataclasses.fields(decision)
              if f.name not in ("memo", "kept")}
    return {**fields, **{name: getattr(decision, name) for name in rendered}}


def assert_same_plan(kept: Plan, fresh: Plan) -> None:
    """The same plan, but for the moment a quiet slot's decision names: the kept
    memo hands out the decision an earlier plan made while nothing it reads changed,
    which keeps the moment it was made (:mod:`hybrid_compute.plan.quiet`)."""
    for decision, again in zip(kept.slots, fresh.slots, strict=True):
        assert decision.now == again.now or (decision.kept is not None
                                              and decision.now < again.now), decision.name
    assert [{**_outcome(d, _SLOT_RENDERED), "now": None} for d in kept.slots] == \
        [{**_outcome(d, _SLOT_RENDERED), "now": None} for d in fresh.slots]
    assert [_outcome(d, _WORKLOAD_RENDERED) for d in kept.workloads] == \
        [_outcome(d, _WORKLOAD_RENDERED) for d in fresh.workloads]
    for name in ("gpus", "events", "next_wakeup", "policies", "warm", "foreign", "at"):
        assert getattr(kept, name) == getattr(fresh, name), name


@dataclasses.dataclass
class KeptWorld(World):
    """The simulated cluster planned with a kept memo, each plan checked against a
    fresh memo's; a slot or Deployment whose record did not change stays the same
    object, as the operator keeps it."""

    plans: int = 0
    statuses: DiffMemo = dataclasses.field(default_factory=DiffMemo)
    """Kept from one diff to the next, as the operator's loop keeps it."""

    def step(self) -> Plan:
        slots_before = {s.key: s for s in self.slots}
        deployments_before = dict(self.deployments)
        view = self.view()
        fresh = plan(view, self.now)
        kept = super().step()
        assert_same_plan(kept, fresh)
        assert diff(kept, view, self.statuses) == diff(fresh, view)
        self.plans += 1
        self.slots = [slots_before[s.key] if s.key in slots_before
                      and slots_before[s.key].status == s.status else s for s in self.slots]
        for key, deployment in self.deployments.items():
            if deployments_before.get(key) == deployment:
                self.deployments[key] = deployments_before[key]
        return kept

    def respec(self, index: int, change: dict[str, Any]) -> None:
        """Slot ``index`` stored anew with ``change`` to its spec."""
        info = self.slots[index]
        assert info.spec is not None
        spec = ModelSlotSpec.model_validate({**info.spec.model_dump(by_alias=True,
                                                                    exclude_none=True),
                                             **change})
        self.slots[index] = dataclasses.replace(info, spec=spec,
                                                generation=info.generation + 1)


SIZES_GIB = st.sampled_from([1, 2, 4, 7, 10, 14, 20, 23, 30])


@st.composite
def slot_specs(draw: st.DrawFn) -> list[SlotInfo]:
    specs: list[dict[str, Any]] = [{
        "alias": "local/default", "model": {"path": "d.gguf", "vram": "7Gi"},
        "default": True, **draw(st.sampled_from([
            {}, {"sleepAfter": "40s"},
            {"sleepSchedule": {"timeZone": "UTC",
                               "windows": [{"start": "02:03", "end": "02:09"}]}}]))}]
    for index in range(draw(st.integers(min_value=1, max_value=6))):
        spec: dict[str, Any] = {
            "alias": f"local/s{index}", "priority": draw(st.integers(0, 300)),
            "model": {"path": f"s{index}.gguf", "vram": f"{draw(SIZES_GIB)}Gi"}}
        if draw(st.booleans()):
            spec["device"] = "cpu"
            del spec["model"]["vram"]
        idle = draw(st.integers(0, 4))
        if idle == 4:
            spec.update(activation="OnDemand", idleTimeout="Auto",
                        idleTimeoutBounds={"min": "10s", "max": "90s"})
        elif idle:
            spec.update(activation="OnDemand",
                        idleTimeout=f"{draw(st.integers(min_value=5, max_value=90))}s")
        if draw(st.booleans()):
            spec["minResidency"] = f"{draw(st.integers(min_value=0, max_value=60))}s"
        specs.append(spec)
    return [slot("default" if i == 0 else f"s{i - 1}", spec) for i, spec in enumerate(specs)]


_ACTIONS = st.one_of(
    st.tuples(st.just("demand"), st.integers(0, 5)),
    st.tuples(st.just("jump"), st.integers(2, 400)),
    st.tuples(st.just("respec"), st.integers(0, 6)),
    st.tuples(st.just("wait"), st.just(0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(slots=slot_specs(), actions=st.lists(_ACTIONS, min_size=5, max_size=60),
       load_steps=st.integers(0, 4), terminate_steps=st.integers(0, 3),
       two_nodes=st.booleans(), with_workload=st.booleans())
def test_a_kept_memo_plans_as_a_fresh_one(slots: list[SlotInfo],
                                          actions: list[tuple[str, int]], load_steps: int,
                                          terminate_steps: int, two_nodes: bool,
                                          with_workload: bool) -> None:
    world = KeptWorld(slots, nodes=[dreamteam(), dual_node()] if two_nodes else [dreamteam()],
                      load_steps=load_steps, terminate_steps=terminate_steps,
                      memo=PlanMemo(),
                      workloads=[workload("train", {"class": "FineTuning", "vram": "10Gi"})]
                      if with_workload else [])
    for action, value in actions:
        if action == "demand":
            world.demand(f"local/s{value}")
        elif action == "jump":
            world.now += datetime.timedelta(seconds=value)
        elif action == "respec" and value < len(world.slots):
            world.respec(value, {"priority": 300 - value})
        world.step()
        world.step()
    assert world.plans == 2 * len(actions)


_CROWD_SPECS: dict[str, dict[str, Any]] = {
    "gpu": {"activation": "OnDemand", "idleTimeout": "60s", "minResidency": "20s"},
    "always": {},
    "cpu": {"device": "cpu", "activation": "OnDemand", "idleTimeout": "45s"},
    "sleepy": {"default": True, "sleepAfter": "50s"},
    "nightly": {"default": True, "sleepSchedule": {
        "timeZone": "UTC", "windows": [{"start": "02:02", "end": "02:12"}]}},
    "both": {"default": True, "sleepAfter": "20s", "sleepSchedule": {
        "timeZone": "UTC", "windows": [{"start": "02:05", "end": "02:09"}]}},
}
_NODES = st.sampled_from([(dreamteam(),), (dreamteam(), dual_node()), (dual_node(),),
                          (GpuNode("small", 1, 12 * GIB, 1, 1),)])
_PHASES = st.sampled_from([None, "Standby", "Pending", "Ready", "Loading", "Unloading",
                           "Draining", "Unschedulable"])
_AGO = st.sampled_from([None, 0, 20, 55, 600, 7200])


def _ago(now: datetime.datetime, seconds: int | None) -> datetime.datetime | None:
    return None if seconds is None else now - datetime.timedelta(seconds=seconds)


@st.composite
def slot_statuses(draw: st.DrawFn, now: datetime.datetime) -> ModelSlotStatus:
    """A status as an earlier pass may have left it (possibly not written back yet)."""
    return ModelSlotStatus(phase=draw(_PHASES), ready_since=_ago(now, draw(_AGO)),
                           last_request_time=_ago(now, draw(_AGO)),
                           served_until=_ago(now, draw(_AGO)),
                           loading_since=_ago(now, draw(_AGO)))


@st.composite
def crowds(draw: st.DrawFn) -> list[SlotInfo]:
    kinds = draw(st.lists(st.sampled_from(sorted(_CROWD_SPECS)), min_size=2, max_size=12))
    crowd = []
    for index, kind in enumerate(kinds):
        spec = {"alias": f"local/c{index}", "priority": draw(st.integers(0, 300)),
                "model": {"path": f"c{index}.gguf"}, **_CROWD_SPECS[kind]}
        if kind != "cpu":
            spec["model"]["vram"] = f"{draw(SIZES_GIB)}Gi"
        crowd.append(dataclasses.replace(slot(f"c{index}", spec),
                                         status=draw(slot_statuses(NOW))))
    return crowd


@st.composite
def crowd_steps(draw: st.DrawFn, size: int) -> tuple[Any, ...]:
    """One step: how far the clock moves, the nodes, requests (with their age), and
    which slot records and Deployment records are stored anew."""
    index = st.integers(0, size - 1)
    return (draw(st.sampled_from([0, 1, 5, 30, 61, 400])), draw(_NODES),
            draw(st.lists(st.tuples(index, _AGO), max_size=3)),
            draw(st.none() | st.tuples(index, _AGO)),
            draw(st.none() | st.tuples(index, slot_statuses(NOW))),
            draw(st.none() | st.tuples(index, st.sampled_from(
                [None, (0, None), (0, "dreamteam"), (1, "dreamteam")]))))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), crowd=crowds())
def test_a_kept_memo_plans_records_that_stay_as_a_fresh_one(data: st.DataObject,
                                                              crowd: list[SlotInfo]) -> None:
    """Records the plan's writes do not reach (as in the benchmark, or while a status
    write is on its way) planned again and again while the clock moves past idle
    timeouts, minimum residencies and sleep windows, requests of every age come and go
    (some by annotation, which stores the slot anew), statuses and Deployments change."""
    slots = list(crowd)
    deployments: dict[tuple[str, str], DeploymentInfo] = {}
    memo, diff_memo = PlanMemo(), DiffMemo()
    now = NOW
    for _ in range(data.draw(st.integers(2, 14))):
        seconds, nodes, asked, annotated, restatus, redeploy = data.draw(
            crowd_steps(len(slots)))
        now += datetime.timedelta(seconds=seconds)
        if annotated is not None:
            slots[annotated[0]] = dataclasses.replace(slots[annotated[0]],
                                                      requested_at=_ago(now, annotated[1]))
        if restatus is not None:
            slots[restatus[0]] = dataclasses.replace(slots[restatus[0]], status=restatus[1])
        if redeploy is not None:
            key = slots[redeploy[0]].key
            deployments.pop(key, None)
            if redeploy[1] is not None:
                deployments[key] = DeploymentInfo(key[0], key[1], redeploy[1][0], "h", 2 * GIB,
                                                  redeploy[1][1])
        view = View(nodes=nodes, slots=tuple(slots),
                    deployments=tuple(deployments.values()),
                    demands={f"local/c{i}": when for i, age in asked
                             if (when := _ago(now, age)) is not None})
        kept, fresh = plan(view, now, memo), plan(view, now)
        assert_same_plan(kept, fresh)
        assert diff(kept, view, diff_memo) == diff(fresh, view)


def test_a_decision_made_again_is_a_copy_made_at_the_new_moment() -> None:
    view = crowded_view()
    decision = plan(view, NOW).slots[0]
    assert decision.status  # rendered: not carried over
    later = NOW + datetime.timedelta(minutes=1)
    again = decision.at(later)
    assert _outcome(again, ()) == {**_outcome(decision, ()), "now": later}
    assert again.status_updates is not decision.status_updates
    assert again.condition_updates is not decision.condition_updates
    assert again.status == dataclasses.replace(decision, now=later).status
