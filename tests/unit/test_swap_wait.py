"""The operator's prediction of how long a request would wait for a slot's swap, and
the plan recording the loads it is made from."""

from __future__ import annotations

import datetime
from typing import Any, cast

import pytest

from hybrid_compute.control.loop import Runtime
from hybrid_compute.control.state_api import state_document
from hybrid_compute.plan.swaps import RECENT_SWAPS, predicted_wait, remember_swap
from tests.simworld import SEED_SLOTS, START, World, slot

DEFAULT = 30.0


def status(recent: list[float] | None = None, loading_for: float | None = None
           ) -> dict[str, Any]:
    stored: dict[str, Any] = {}
    if recent is not None:
        stored["recentSwapSeconds"] = recent
    if loading_for is not None:
        since = START - datetime.timedelta(seconds=loading_for)
        stored["loadingSince"] = since.isoformat().replace("+00:00", "Z")
    return stored


def test_a_slot_never_loaded_is_predicted_the_default() -> None:
    assert predicted_wait("Standby", status(), START, DEFAULT) == DEFAULT


def test_a_standby_slot_is_predicted_the_median_of_its_recent_loads() -> None:
    # One slow load (a cold page cache) does not move the median.
    assert predicted_wait("Standby", status([3.0, 2.8, 41.0, 3.2, 3.1]), START,
                          DEFAULT) == 3.1


def test_a_loading_slot_is_predicted_what_is_left_of_its_load() -> None:
    assert predicted_wait("Loading", status([10.0, 12.0, 11.0], loading_for=4), START,
                          DEFAULT) == 7.0


def test_a_load_past_its_median_is_given_until_the_slowest_recent_one() -> None:
    assert predicted_wait("Loading", status([10.0, 11.0, 20.0], loading_for=15), START,
                          DEFAULT) == 5.0


def test_a_load_later_than_every_recent_one_is_given_as_long_again_up_to_the_default(
        ) -> None:
    assert predicted_wait("Loading", status([0.9, 0.9], loading_for=1.5), START,
                          DEFAULT) == 1.5, "a fast slot's slower load is not taken as stalled"
    assert predicted_wait("Loading", status([3.0, 3.0], loading_for=12), START,
                          DEFAULT) == 12.0
    assert predicted_wait("Loading", status([3.0, 3.0], loading_for=45), START,
                          DEFAULT) == DEFAULT
    assert predicted_wait("Loading", status(loading_for=40), START, DEFAULT) == DEFAULT


def test_a_held_request_waits_for_a_slow_load_while_it_fits_its_patience() -> None:
    """The router's rule (hold while the prediction fits the patience left) over a
    load slower than every recent one: held for about half the patience, then bridged."""
    patience, recent = 10.0, [0.9]
    fits = [elapsed for elapsed in (0.5, 1.0, 2.0, 4.0, 4.9, 5.1, 6.0, 8.0)
            if (wait := predicted_wait("Loading", status(recent, loading_for=elapsed), START,
                                       DEFAULT)) is not None and wait <= patience - elapsed]
    assert fits == [0.5, 1.0, 2.0, 4.0, 4.9]


def test_a_ready_slot_has_no_wait() -> None:
    assert predicted_wait("Ready", status([3.0]), START, DEFAULT) == 0.0


@pytest.mark.parametrize("phase", ["Pending", "Unloading", "Draining", "Unschedulable",
                                   "Failed", None])
def test_a_slot_a_request_cannot_bring_in_soon_has_no_prediction(phase: str | None) -> None:
    assert predicted_wait(phase, status([3.0]), START, DEFAULT) is None


def test_only_the_last_loads_are_remembered_oldest_first() -> None:
    recent: list[float] = []
    for seconds in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.004):
        recent = remember_swap(recent, seconds)
    assert recent == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert len(recent) == RECENT_SWAPS
    assert remember_swap(None, 2.5) == [2.5]


def test_the_plan_records_each_load_and_the_state_publishes_the_prediction() -> None:
    world = World([slot(name, spec) for name, spec in SEED_SLOTS.items()])
    world.run_until(lambda: world.phase("fast") == "Ready")
    durations = []
    for _ in range(2):
        world.now += datetime.timedelta(minutes=1)  # past fast's minimum residency
        world.demand("local/quality")
        world.run_until(lambda: world.phase("quality") == "Ready")
        quality = next(s.status for s in world.slots if s.name == "quality")
        assert quality.last_swap_seconds is not None
        durations.append(quality.last_swap_seconds)
        world.now += datetime.timedelta(minutes=6)  # idle: fast takes the GPU back
        world.run_until(lambda: world.phase("quality") == "Standby"
                        and world.phase("fast") == "Ready")
    quality = next(s.status for s in world.slots if s.name == "quality")
    assert quality.recent_swap_seconds == durations, (
        f"expected the two loads {durations}, got {quality.recent_swap_seconds}")
    published = quality.model_dump(by_alias=True, mode="json", exclude_none=True)
    expected = round(sum(durations) / 2, 1)  # the median of two loads
    assert predicted_wait("Standby", published, world.now,
                          world.settings.default_swap_time.total_seconds()) == expected

    runtime = Runtime(cast(Any, None), world.settings)
    runtime.last_plan = world.last_plan
    slots = {s["name"]: s for s in state_document(runtime)["slots"]}
    assert slots["quality"]["predictedWaitSeconds"] == expected
    assert slots["fast"]["predictedWaitSeconds"] == 0.0
    assert slots["quality-alt"]["predictedWaitSeconds"] == DEFAULT, "never loaded"
