"""Sleep: the default slot gives the card up inside its sleep window unless a request
asks for it, and after ``sleepAfter`` without one at any time; the operator counts
the seconds each GPU holds no model."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import pytest

from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.plan.outputs import GpuSummary, Plan
from hybrid_compute.plan.view import View
from hybrid_compute.server.metrics import OperatorMetrics
from tests.simworld import SEED_SLOTS, START, World, slot

# 03:30-06:00 in Berlin is 02:30-05:00 UTC in December; the world starts at 02:00 UTC.
NIGHT = {"timeZone": "Europe/Berlin", "windows": [{"start": "03:30", "end": "06:00"}]}


def sleepy_world(**sleep: Any) -> World:
    """The seed's slots, created at the start, with ``sleep`` on the default slot."""
    specs = {**SEED_SLOTS, "fast": {**SEED_SLOTS["fast"], **sleep}}
    return World([replace(slot(name, spec), created=START) for name, spec in specs.items()],
                 step_seconds=5.0)


def fast_reason(world: World) -> str:
    assert world.last_plan is not None
    return world.last_plan.slot("lab", "fast").reason


def test_inside_its_sleep_window_the_default_slot_unloads_and_a_request_wakes_it() -> None:
    world = sleepy_world(sleepSchedule=NIGHT, sleepAfter="2m")
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now = datetime.datetime(2026, 12, 1, 2, 31, tzinfo=datetime.UTC)
    unloading: list[str] = []
    for _ in range(50):
        unloading += [e.message for e in world.step().events if e.reason == "Unloading"]
        if world.phase("fast") == "Standby":
            break
    assert unloading == ["Unloading local/fast to sleep"]
    assert fast_reason(world) == ("asleep: inside its sleep window 03:30-06:00 Europe/Berlin "
                                  "until 2026-12-01 06:00 CET; loads on the next request")
    world.demand("local/fast")
    asked = world.now
    world.run_until(lambda: world.phase("fast") == "Ready")
    ready = world.now
    world.run_until(lambda: world.phase("fast") == "Standby", limit=100)
    slept = world.now - ready
    assert datetime.timedelta(minutes=2) <= slept <= datetime.timedelta(minutes=2, seconds=30), \
        (asked, ready, world.now)


def test_after_the_window_a_default_slot_without_sleep_after_loads_again() -> None:
    world = sleepy_world(sleepSchedule=NIGHT)
    world.now = datetime.datetime(2026, 12, 1, 2, 31, tzinfo=datetime.UTC)
    for _ in range(5):
        world.step()
        assert world.phase("fast") == "Standby"
    world.now = datetime.datetime(2026, 12, 1, 5, 0, tzinfo=datetime.UTC)
    world.run_until(lambda: world.phase("fast") == "Ready")


def test_sleep_after_unloads_an_unused_default_slot_at_any_time() -> None:
    world = sleepy_world(sleepAfter="10m")
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=11)
    world.run_until(lambda: world.phase("fast") == "Standby")
    assert fast_reason(world) == ("asleep: no request for 10m (sleepAfter); loads on the next "
                                  "request")
    assert world.last_plan is not None and world.last_plan.gpus[0].slot_held_bytes == 0
    for _ in range(5):
        world.step()
        assert world.phase("fast") == "Standby", "an unused card stays empty"
    world.demand("local/fast")
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=9)
    world.step()
    assert world.phase("fast") == "Ready"
    world.now += datetime.timedelta(minutes=2)
    world.run_until(lambda: world.phase("fast") == "Standby")


def test_a_sleeping_default_slot_still_yields_to_a_demand_for_another_slot() -> None:
    world = sleepy_world(sleepAfter="10m")
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=11)
    world.run_until(lambda: world.phase("fast") == "Standby")
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    world.now += datetime.timedelta(minutes=6)  # quality idles out; fast stays asleep
    world.run_until(lambda: world.phase("quality") == "Standby")
    for _ in range(5):
        world.step()
        assert world.phase("fast") == "Standby"


@pytest.mark.parametrize("extra,message", [
    ({"sleepAfter": "10m"}, "sleepAfter: applies to the default slot only"),
    ({"sleepSchedule": NIGHT}, "sleepSchedule: applies to the default slot only"),
])
def test_sleep_belongs_to_the_default_slot(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSlotSpec.model_validate({**SEED_SLOTS["quality"], **extra})


def summary(slot_held: int) -> GpuSummary:
    return GpuSummary("dreamteam/0", 23, 0, slot_held, (), slot_held_bytes=slot_held)


def test_the_seconds_a_gpu_holds_no_model_are_counted() -> None:
    metrics = OperatorMetrics()
    start = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)

    def record(seconds: int, held: int) -> None:
        metrics.record_plan(View(), Plan((), (summary(held),), (), None,
                                         at=start + datetime.timedelta(seconds=seconds)), 0.001)

    def counted() -> float:
        value = metrics.registry.get_sample_value(
            "hybrid_compute_gpu_unloaded_seconds_total",
            {"node": "dreamteam", "gpu": "dreamteam/0"})
        assert value is not None
        return value

    record(0, 0)
    assert counted() == 0
    record(30, 0)
    assert counted() == 30
    record(40, 7)  # a model loaded meanwhile: the 10 s before it count
    assert counted() == 40
    record(100, 0)
    assert counted() == 40, "time with a model loaded does not count"
    record(160, 0)
    assert counted() == 100
