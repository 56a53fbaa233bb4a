"""Draining a serving slot before it is unloaded, and the timing of each swap phase."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hybrid_compute.api.modelslot import ModelSlotStatus, SwapProgress
from hybrid_compute.control import drain_probe, state_api
from hybrid_compute.control.loop import Runtime
from hybrid_compute.plan.drain import ANONYMOUS_ROUTER, PREVIOUS_OPERATOR
from hybrid_compute.plan.swaps import swap_phases
from hybrid_compute.plan.view import RouterFetch
from hybrid_compute.router import hybrid_router
from tests.http_stub import StubHandler, StubServer
from tests.simworld import SEED_SLOTS, START, World, slot


def seed_world(drain: dict[str, Any] | None = None, **kwargs: Any) -> World:
    slots = []
    for name, spec in SEED_SLOTS.items():
        if drain is not None and name == "fast":
            spec = {**spec, "drain": drain}
        slots.append(slot(name, spec))
    return World(slots, **kwargs)


def status(world: World, name: str) -> ModelSlotStatus:
    return next(s.status for s in world.slots if s.name == name)


def condition(world: World, name: str, type_: str) -> tuple[str, str]:
    found = next(c for c in status(world, name).conditions if c.type == type_)
    return found.status, found.reason


def events(world: World, reason: str) -> list[str]:
    assert world.last_plan is not None
    return [e.message for e in world.last_plan.events if e.reason == reason]


def fast_serving_then_quality_demanded(world: World) -> None:
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)  # past fast's minimum residency
    world.demand("local/quality")


def draining_while_a_router_is_active() -> World:
    """fast starts draining for quality while a router that fetched the state just
    now may still send it requests."""
    world = seed_world()
    fast_serving_then_quality_demanded(world)
    world.router_fetched_at = world.now
    world.step()
    assert world.phase("fast") == "Draining"
    return world


def routers_fetched(world: World, fetches: dict[str, frozenset[tuple[str, str]]]) -> None:
    """The named routers fetch a state, 0.2 s from now, that shows these slots not Ready."""
    seen = world.now + datetime.timedelta(seconds=0.2)
    world.router_fetched_at = seen
    world.router_fetches = {name: RouterFetch(seen, not_ready)
                            for name, not_ready in fetches.items()}


def test_a_busy_slot_drains_before_its_pod_goes_and_the_phases_are_timed() -> None:
    world = seed_world()
    fast_serving_then_quality_demanded(world)
    world.in_flight["fast"] = 2
    world.step()
    assert world.phase("fast") == "Draining"
    assert condition(world, "fast", "Ready") == ("False", "Draining")
    assert events(world, "Draining")
    fast_pods = [p for p in world.pods if p.info.owner == "fast"]
    for _ in range(5):
        world.step()
        assert world.phase("fast") == "Draining"
        assert world.last_plan is not None
        assert world.last_plan.slot("lab", "fast").replicas == 1
        assert all(not p.info.terminating for p in fast_pods), "a busy pod was stopped"
        assert not [p for p in world.pods if p.info.owner == "quality"]
    assert "2 request(s) in flight" in (status(world, "fast").reason or "")

    world.in_flight["fast"] = 0
    world.step()
    assert world.phase("fast") == "Unloading"
    assert any("after draining for" in m for m in events(world, "Unloading"))
    world.run_until(lambda: world.phase("quality") == "Ready")
    quality = status(world, "quality")
    phases = quality.last_swap_phases
    assert phases is not None and quality.last_swap_seconds is not None
    assert phases.drain is not None and phases.drain >= 6
    assert phases.unload is not None and phases.unload >= 1
    total = sum(v for v in phases.model_dump().values() if v is not None)
    assert total == pytest.approx(quality.last_swap_seconds, abs=0.05)
    assert quality.swap_progress is None
    swapped = events(world, "Swapped")
    assert swapped and f"drain {phases.drain:.1f}s, unload {phases.unload:.1f}s" in swapped[0]


def test_a_drain_that_times_out_defers_the_swap_and_keeps_serving() -> None:
    world = seed_world(drain={"timeout": "5s"})
    fast_serving_then_quality_demanded(world)
    world.in_flight["fast"] = 1
    world.run_until(lambda: world.phase("fast") != "Draining" and world.tick > 2, limit=20)
    assert world.phase("fast") == "Ready"
    assert condition(world, "fast", "Swapping") == ("False", "Deferred")
    assert events(world, "SwapDeferred")
    assert "1 request(s) still running after 5s" in (status(world, "fast").reason or "")
    assert status(world, "fast").drain_deferred_until is not None
    # While deferred, quality waits and fast keeps its pod.
    for _ in range(3):
        world.demand("local/quality")
        world.step()
        assert world.phase("fast") == "Ready"
        assert world.phase("quality") in ("Pending", "Loading")
    # Once the request is done, the next attempt drains and swaps.
    world.in_flight["fast"] = 0
    world.now += datetime.timedelta(seconds=10)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready", limit=30)
    assert status(world, "fast").drain_deferred_until is None or \
        world.phase("fast") == "Standby"


def test_a_drain_that_times_out_cuts_when_the_slot_says_so() -> None:
    world = seed_world(drain={"timeout": "3s", "onTimeout": "Cut"})
    fast_serving_then_quality_demanded(world)
    world.in_flight["fast"] = 1
    world.run_until(lambda: world.phase("fast") == "Unloading", limit=10)
    cut = events(world, "DrainCut")
    assert cut and "1 request(s) still running after 3s" in cut[0]
    assert world.last_plan is not None
    assert world.last_plan.slot("lab", "fast").cut_requests == 1
    world.run_until(lambda: world.phase("quality") == "Ready")


def test_a_zero_timeout_unloads_at_once() -> None:
    world = seed_world(drain={"timeout": "0s"})
    fast_serving_then_quality_demanded(world)
    world.in_flight["fast"] = 3
    world.step()
    assert world.phase("fast") == "Unloading"


def test_an_idle_slot_still_waits_for_active_routers_to_refresh() -> None:
    world = draining_while_a_router_is_active()
    assert "waiting for routers" in (status(world, "fast").reason or "")
    world.step()
    world.step()
    assert world.phase("fast") == "Draining"
    world.run_until(lambda: world.phase("fast") == "Unloading", limit=3)


def test_the_route_restoration_is_timed_from_the_routers_next_fetch() -> None:
    world = seed_world()
    fast_serving_then_quality_demanded(world)
    world.run_until(lambda: world.phase("quality") == "Ready")
    ready_since = status(world, "quality").ready_since
    assert ready_since is not None
    phases = status(world, "quality").last_swap_phases
    assert phases is not None and phases.route_restored is None
    world.router_fetched_at = world.now + datetime.timedelta(seconds=0.4)
    world.now += datetime.timedelta(seconds=1)
    world.step()
    phases = status(world, "quality").last_swap_phases
    assert phases is not None and phases.route_restored is not None
    expected = (world.router_fetched_at - ready_since).total_seconds()
    assert phases.route_restored == pytest.approx(expected, abs=0.01)


def test_swap_phases_count_an_unseen_moment_as_the_next_one() -> None:
    at = [START + datetime.timedelta(seconds=s) for s in (0, 2, 3, 10)]
    phases = swap_phases(at[0], SwapProgress(drained_at=at[1], started_at=at[2],
                                             scheduled_at=None, running_at=None),
                         at[3], evicted=True)
    assert (phases.drain, phases.unload, phases.schedule, phases.container_start,
            phases.model_load) == (2, 1, 7, 0, 0)
    fresh = swap_phases(at[0], SwapProgress(started_at=at[0], drained_at=at[0],
                                            scheduled_at=at[1], running_at=at[2]),
                        at[3], evicted=False)
    assert fresh.drain is None and fresh.unload is None
    assert (fresh.schedule, fresh.container_start, fresh.model_load) == (2, 1, 7)


# ------------------------------------------------------------------ the probe


def test_busy_sequences_reads_both_slot_formats() -> None:
    assert drain_probe.busy_sequences([{"id": 0, "is_processing": True},
                                       {"id": 1, "is_processing": False}]) == 1
    assert drain_probe.busy_sequences([{"id": 0, "state": 1}, {"id": 1, "state": 0}]) == 1
    with pytest.raises(ValueError):
        drain_probe.busy_sequences({"error": "no slots"})


def test_slots_url_sits_beside_the_openai_path() -> None:
    assert drain_probe.slots_url("http://fast.lab.svc:8080/v1") == "http://fast.lab.svc:8080/slots"
    assert drain_probe.slots_url("http://127.0.0.1:9/v1/") == "http://127.0.0.1:9/slots"


@pytest.fixture
def slots_server() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"status": 200, "body": []}

    class Handler(StubHandler):
        def do_GET(self) -> None:
            self.send_json(state["status"], state["body"])

    with StubServer(Handler) as server:
        yield f"{server.url}/slots", state


def test_probe_reports_busy_errors_and_unreachable_servers(
        slots_server: tuple[str, dict[str, Any]]) -> None:
    url, state = slots_server
    state["body"] = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": True}]
    assert drain_probe.probe({("lab", "fast"): url}) == {
        ("lab", "fast"): drain_probe.SlotActivity(2)}
    state["status"] = 501
    answer = drain_probe.probe_one(url)
    assert answer.busy == 0 and answer.error == "/slots answered HTTP 501"
    gone = drain_probe.probe_one("http://127.0.0.1:9/slots", timeout=0.5)
    assert gone.busy == 0 and gone.error is not None and "unreachable" in gone.error


def test_a_drain_ends_once_every_active_router_has_seen_the_slot_leave() -> None:
    world = seed_world()
    fast_serving_then_quality_demanded(world)
    world.router_fetched_at = world.now
    world.router_fetches = {"router-a": RouterFetch(world.now)}
    world.step()
    assert world.phase("fast") == "Draining"
    assert "waiting for routers" in (status(world, "fast").reason or "")
    # The router's next refresh shows fast as not Ready: it sends fast nothing more,
    # so the drain ends well before the 3 s grace.
    routers_fetched(world, {"router-a": frozenset({("lab", "fast")})})
    world.step()
    assert world.phase("fast") == "Unloading"


def test_a_router_that_has_not_seen_the_slot_leave_keeps_the_drain_waiting() -> None:
    world = draining_while_a_router_is_active()
    routers_fetched(world, {"router-a": frozenset({("lab", "fast")}), "router-b": frozenset()})
    world.step()
    assert world.phase("fast") == "Draining", "router-b may still send fast a request"
    # A fetch nobody can attribute, newer than every named one, proves nothing either.
    world.router_fetches = {"router-a": world.router_fetches["router-a"]}
    assert world.router_fetched_at is not None
    world.router_fetched_at += datetime.timedelta(seconds=0.1)
    world.step()
    assert world.phase("fast") == "Draining"
    world.run_until(lambda: world.phase("fast") == "Unloading", limit=3)


def test_the_state_api_records_which_slots_each_router_was_shown_not_ready() -> None:
    world = seed_world()
    fast_serving_then_quality_demanded(world)
    world.in_flight["fast"] = 1
    world.step()
    assert world.phase("fast") == "Draining"
    runtime = Runtime(cast(Any, None), world.settings)
    runtime.last_plan = world.last_plan
    assert set(runtime.router_fetches) == {PREVIOUS_OPERATOR}, "the start counts as a fetch"

    async def fetch() -> None:
        app = state_api.build_app(runtime, "secret")
        async with TestClient(TestServer(app)) as http:
            response = await http.get("/v1/state", headers={
                "Authorization": "Bearer secret",
                hybrid_router.ROUTER_ID_HEADER: "router-a"})
            assert response.status == 200

    asyncio.run(fetch())
    seen = runtime.router_fetches["router-a"]
    assert ("lab", "fast") in seen.not_ready, seen
    assert ("lab", "quality") in seen.not_ready, "quality is still loading"
    assert runtime.router_fetched_at == seen.at
    assert state_api.ROUTER_ID_HEADER == hybrid_router.ROUTER_ID_HEADER


def test_after_a_restart_a_drain_waits_only_until_routers_must_have_refreshed() -> None:
    """Routers that fetched from the previous operator refresh within 2 s; after that
    every router routing by a state has fetched it from this operator, and none has
    here, so the drain need not wait the whole grace."""
    world = seed_world()
    fast_serving_then_quality_demanded(world)
    started = world.now - datetime.timedelta(seconds=1)
    world.router_fetched_at = started
    world.router_fetches = {PREVIOUS_OPERATOR: RouterFetch(started)}
    world.step()
    assert world.phase("fast") == "Draining", "routers may still use the old state"
    world.step()  # 2 s after the start: not yet
    assert world.phase("fast") == "Draining"
    world.step()  # 3 s after the start, 2 s into the drain: well before its 3 s grace
    assert world.phase("fast") == "Unloading"


def test_routers_that_send_no_id_never_count_as_having_seen_a_slot_leave() -> None:
    world = draining_while_a_router_is_active()
    routers_fetched(world, {ANONYMOUS_ROUTER: frozenset({("lab", "fast")})})
    world.step()
    assert world.phase("fast") == "Draining", "another router without an id may not have"
    world.run_until(lambda: world.phase("fast") == "Unloading", limit=3)
