"""Property tests of GpuWorkload admission in the simulated cluster: random
workloads, slots, demands and clocks (daylight-saving changes in Auckland among
them) never break the VRAM budget or the mutex, admit nothing outside its window,
and never keep a workload waiting for room behind a lower-priority one that is
no smaller."""

from __future__ import annotations

import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_compute.api.common import parse_bytes
from hybrid_compute.plan.windows import window_state
from hybrid_compute.plan.workloads import priority
from tests.simworld import World, dreamteam, dual_node, slot, workload

# Around the 2026 daylight-saving changes in New Zealand, and an ordinary night.
STARTS = [datetime.datetime(2026, 4, 4, 12, 0, tzinfo=datetime.UTC),
          datetime.datetime(2026, 9, 26, 12, 0, tzinfo=datetime.UTC),
          datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)]
CLASSES = ["TTS", "Embedding", "ImageGeneration", "FineTuning", "Other"]


@st.composite
def workloads(draw: st.DrawFn) -> list:  # type: ignore[type-arg]
    found = []
    for index in range(draw(st.integers(min_value=1, max_value=5))):
        spec: dict = {  # type: ignore[type-arg]
            "class": draw(st.sampled_from(CLASSES)),
            "vram": f"{draw(st.sampled_from([2, 4, 6, 8, 10, 11, 12, 14, 20, 22]))}Gi",
            "preemptible": draw(st.booleans()),
            "kind": draw(st.sampled_from(["Job", "Deployment"])),
        }
        if draw(st.booleans()):
            spec["priority"] = draw(st.integers(min_value=0, max_value=99))
        if draw(st.booleans()):
            start = draw(st.integers(min_value=0, max_value=23))
            length = draw(st.integers(min_value=1, max_value=12))
            spec["schedule"] = {"timeZone": "Pacific/Auckland", "windows": [
                {"start": f"{start:02d}:00", "end": f"{(start + length) % 24:02d}:00"}]}
        found.append(workload(f"w{index}", spec))
    return found


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=workloads(),
       default_vram=st.sampled_from([4, 7]),
       demands=st.lists(st.integers(min_value=0, max_value=90), max_size=6),
       start=st.sampled_from(STARTS),
       step_minutes=st.sampled_from([1, 5, 20]),
       terminate_steps=st.integers(min_value=0, max_value=3),
       two_nodes=st.booleans())
def test_admission_invariants(jobs, default_vram, demands, start,  # type: ignore[no-untyped-def]
                              step_minutes, terminate_steps, two_nodes) -> None:
    slots = [slot("fast", {"alias": "local/fast", "default": True,
                           "model": {"path": "f.gguf", "vram": f"{default_vram}Gi"}}),
             slot("quality", {"alias": "local/quality", "activation": "OnDemand",
                              "idleTimeout": "15m", "priority": 200,
                              "model": {"path": "q.gguf", "vram": "20Gi"}})]
    nodes = [dreamteam(), dual_node()] if two_nodes else [dreamteam()]
    world = World(slots, nodes=nodes, workloads=jobs, now=start,
                  step_seconds=60.0 * step_minutes, terminate_steps=terminate_steps)
    mutex = world.settings.mutex_bytes
    for tick in range(100):
        if tick in demands:
            world.demand("local/quality")
        before = {key: child.active for key, child in world.children.items()}
        moment = world.now
        result = world.step()
        world.check_budget()
        decisions = {d.name: d for d in result.workloads}
        specs = {w.name: w.spec for w in world.workloads}
        for name, decision in decisions.items():
            spec = specs[name]
            assert spec is not None
            if decision.active and spec.schedule and spec.workload_class != "Embedding":
                assert window_state(spec.schedule, moment).inside, \
                    f"{name} admitted outside {spec.schedule} at {moment}"
        for high, high_decision in decisions.items():
            high_spec = specs[high]
            assert high_spec is not None
            if high_decision.active or not high_decision.reason.startswith("waiting for"):
                continue
            if before.get(("lab", high)):
                continue  # it was running: a running pod never moves devices
            for low, low_decision in decisions.items():
                low_spec = specs[low]
                assert low_spec is not None
                if (low == high or not low_decision.active or not low_spec.preemptible
                        or low_spec.workload_class == "Embedding"
                        or priority(low_spec) >= priority(high_spec)):
                    continue
                high_vram, low_vram = parse_bytes(high_spec.vram), parse_bytes(low_spec.vram)
                if high_vram <= low_vram and (high_vram > mutex) == (low_vram > mutex):
                    raise AssertionError(
                        f"{high} (priority {priority(high_spec)}, {high_spec.vram}) waits "
                        f"while {low} (priority {priority(low_spec)}, {low_spec.vram}) runs")


def test_a_preempted_workload_admitted_elsewhere_still_holds_where_its_old_pod_ends() -> None:
    """Found by the property above: w4 is preempted on dual/1 for quality and admitted
    at once on dreamteam/0 while its pod still terminates on dual/1. Had its status moved
    to dreamteam/0 then, nothing would have said where that pod sits, and quality
    would have started beside it on dual/1, over the budget."""
    def job(name: str, vram: str, preemptible: bool, **spec: object) -> object:
        return workload(name, {"class": "TTS", "vram": vram, "preemptible": preemptible,
                               "kind": "Job", **spec})
    jobs = [job("w0", "2Gi", False, priority=0), job("w1", "2Gi", False),
            workload("w2", {"class": "Embedding", "vram": "2Gi", "preemptible": False,
                            "kind": "Job"}),
            job("w3", "20Gi", False), job("w4", "8Gi", True)]
    slots = [slot("fast", {"alias": "local/fast", "default": True,
                           "model": {"path": "f.gguf", "vram": "4Gi"}}),
             slot("quality", {"alias": "local/quality", "activation": "OnDemand",
                              "idleTimeout": "15m", "priority": 200,
                              "model": {"path": "q.gguf", "vram": "20Gi"}})]
    world = World(slots, nodes=[dreamteam(), dual_node()], workloads=jobs,
                  now=STARTS[0], step_seconds=300.0, terminate_steps=3)
    phases = []
    for tick in range(20):
        if tick in (0, 9):
            world.demand("local/quality")
        world.step()
        world.check_budget()
        phases.append(world.phase("quality"))
    assert "Loading" in phases[9:], "quality was never started for its second demand"
