"""``idleTimeout: Auto``: the rule (bounds, slower swaps and more frequent requests
keep a slot longer) and what the plan does with it (the gaps it records, the
choice and reason in the status, the idle time it applies)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.plan.idle import SWAP_WEIGHT, auto_idle
from tests.simworld import SEED_SLOTS, World, slot

swap_seconds = st.floats(min_value=0, max_value=3600, allow_nan=False)
gap_lists = st.lists(st.floats(min_value=0, max_value=7 * 86400, allow_nan=False),
                     max_size=20)


@st.composite
def bounds(draw: st.DrawFn) -> tuple[float, float]:
    low = draw(st.floats(min_value=0.001, max_value=86400, allow_nan=False))
    high = draw(st.floats(min_value=low, max_value=2 * 86400, allow_nan=False))
    return low, high


@given(swap_seconds, gap_lists, bounds())
def test_the_choice_never_leaves_its_bounds(swap: float, gaps: list[float],
                                            limits: tuple[float, float]) -> None:
    chosen = auto_idle(swap, gaps, *limits)
    assert limits[0] <= chosen.seconds <= limits[1], (limits, chosen)


@given(swap_seconds, swap_seconds, gap_lists, bounds())
def test_slower_swaps_never_shorten_the_idle_time(
        first: float, second: float, gaps: list[float], limits: tuple[float, float]) -> None:
    slower, faster = max(first, second), min(first, second)
    assert auto_idle(slower, gaps, *limits).seconds >= auto_idle(faster, gaps, *limits).seconds


@given(swap_seconds, gap_lists, st.lists(st.floats(min_value=0, max_value=86400,
                                                   allow_nan=False), max_size=20), bounds())
def test_longer_idle_periods_never_lengthen_the_idle_time(
        swap: float, gaps: list[float], longer_by: list[float],
        limits: tuple[float, float]) -> None:
    """Requests that come less often (each idle period as long or longer) give the
    card back no later."""
    rarer = [gap + extra for gap, extra in zip(gaps, longer_by + [0.0] * len(gaps),
                                                strict=False)]
    assert auto_idle(swap, rarer, *limits).seconds <= auto_idle(swap, gaps, *limits).seconds


def test_slow_swaps_and_frequent_requests_keep_the_slot_long() -> None:
    chosen = auto_idle(60.0, [180.0, 240.0, 300.0, 150.0], 60.0, 1800.0)
    assert chosen.seconds == 600.0, chosen  # every idle period was shorter than 10 min
    assert chosen.reason == ("a swap takes 60.0s, worth 10m of holding; 4 of 4 idle "
                             "periods ended within it: 10m (bounds 1m-30m)")


def test_fast_swaps_and_rare_requests_give_the_card_back_at_the_minimum() -> None:
    chosen = auto_idle(2.0, [7200.0, 10800.0], 60.0, 1800.0)
    assert chosen.seconds == 60.0, chosen
    assert chosen.reason.endswith("0 of 2 idle periods ended within it: 0s, raised to the "
                                  "minimum 1m")


def test_without_idle_periods_on_record_the_break_even_is_kept() -> None:
    chosen = auto_idle(30.0, [], 60.0, 1800.0)
    assert chosen.seconds == SWAP_WEIGHT * 30.0
    assert "no idle period on record yet" in chosen.reason


def test_a_break_even_above_the_maximum_is_held_to_it() -> None:
    chosen = auto_idle(600.0, [], 60.0, 1800.0)
    assert chosen.seconds == 1800.0
    assert chosen.reason.endswith("1h40m, held to the maximum 30m")


def test_auto_needs_bounds_in_order() -> None:
    base = {"alias": "local/q", "model": {"path": "q.gguf", "vram": "1Gi"},
            "activation": "OnDemand", "idleTimeout": "Auto"}
    with pytest.raises(ValueError, match="idleTimeoutBounds"):
        ModelSlotSpec.model_validate(base)
    with pytest.raises(ValueError, match="min: must not exceed max"):
        ModelSlotSpec.model_validate({**base, "idleTimeoutBounds": {"min": "5m", "max": "1m"}})
    with pytest.raises(ValueError, match="applies to idleTimeout: Auto only"):
        ModelSlotSpec.model_validate({**base, "idleTimeout": "5m",
                                      "idleTimeoutBounds": {"min": "1m", "max": "5m"}})


AUTO_QUALITY = {**SEED_SLOTS["quality"], "idleTimeout": "Auto",
                "idleTimeoutBounds": {"min": "1m", "max": "30m"}}


def auto_world() -> World:
    specs = {**SEED_SLOTS, "quality": AUTO_QUALITY}
    return World([slot(name, spec) for name, spec in specs.items()],
                 step_seconds=10.0, load_steps=3)


def quality_status(world: World):  # type: ignore[no-untyped-def]
    return next(s.status for s in world.slots if s.name == "quality")


def test_the_plan_records_idle_periods_and_explains_its_choice() -> None:
    world = auto_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    status = quality_status(world)
    assert status.idle_timeout is not None
    swap = status.recent_swap_seconds[-1]
    assert status.idle_timeout.seconds == min(max(round(SWAP_WEIGHT * swap, 1), 60), 1800)
    assert "no idle period on record yet" in status.idle_timeout.reason
    for minutes in (2, 3, 2):
        world.now += datetime.timedelta(minutes=minutes)
        world.demand("local/quality")
        world.step()
    status = quality_status(world)
    assert status.recent_request_gaps is not None and len(status.recent_request_gaps) == 3
    assert "3 of 3 idle periods ended within it" in status.idle_timeout.reason
    world.now += datetime.timedelta(seconds=20)
    world.demand("local/quality")  # 20 s: under the minimum, not an idle period
    world.step()
    assert len(quality_status(world).recent_request_gaps) == 3


def test_the_chosen_idle_time_returns_the_gpu_to_the_default_slot() -> None:
    world = auto_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    chosen = datetime.timedelta(seconds=quality_status(world).idle_timeout.seconds)
    ready_since = quality_status(world).ready_since
    world.run_until(lambda: world.phase("quality") != "Ready", limit=500)
    left = world.now - ready_since
    assert chosen <= left <= chosen + datetime.timedelta(seconds=30), (chosen, left)


def test_a_clock_set_back_during_a_load_records_no_negative_swap() -> None:
    """A negative swap time would make the idle rule and the wait predictions
    meaningless."""
    world = auto_world()
    world.run_until(lambda: world.phase("fast") == "Loading")
    world.now -= datetime.timedelta(hours=11)
    world.run_until(lambda: world.phase("fast") == "Ready")
    status = next(s.status for s in world.slots if s.name == "fast")
    assert status.last_swap_seconds == 0.0 and status.recent_swap_seconds == [0.0]
