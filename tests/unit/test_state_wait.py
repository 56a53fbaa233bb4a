"""Routers learn of a plan the moment it is published: ``GET /v1/state?after=V&wait=S``
answers once a plan newer than V exists, and a router's fetch that shows a draining
slot gone wakes the loop, so neither the end of a drain nor the end of a swap
waits for a poll."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from aiohttp.test_utils import TestClient, TestServer

from hybrid_compute.control import state_api
from hybrid_compute.control.loop import Runtime
from tests.simworld import SEED_SLOTS, World, slot

AUTH = {"Authorization": "Bearer secret"}


def planned_runtime(draining: bool = False) -> tuple[Runtime, World]:
    world = World([slot(name, spec) for name, spec in SEED_SLOTS.items()])
    world.run_until(lambda: world.phase("fast") == "Ready")
    if draining:
        world.now += world.settings.min_residency
        world.demand("local/quality")
        world.in_flight["fast"] = 1
        world.step()
        assert world.phase("fast") == "Draining"
    runtime = Runtime(cast(Any, None), world.settings)
    assert world.last_plan is not None
    runtime._publish(world.view(), world.last_plan)
    return runtime, world


def test_a_fetch_after_a_version_is_answered_when_the_next_plan_is_published() -> None:
    runtime, world = planned_runtime()
    assert runtime.plan_version == 1

    async def fetches() -> None:
        async with TestClient(TestServer(state_api.build_app(runtime, "secret"))) as http:
            started = time.monotonic()
            waiting = asyncio.create_task(http.get("/v1/state?after=1&wait=5", headers=AUTH))
            await asyncio.sleep(0.2)
            assert not waiting.done(), "answered before a newer plan existed"
            assert world.last_plan is not None
            runtime._publish(world.view(), world.last_plan)
            answer = await waiting
            assert (await answer.json())["version"] == 2
            assert time.monotonic() - started < 2

            started = time.monotonic()
            answer = await http.get("/v1/state?after=1&wait=5", headers=AUTH)
            assert (await answer.json())["version"] == 2
            assert time.monotonic() - started < 1, "an older version was made to wait"

            started = time.monotonic()
            answer = await http.get("/v1/state?after=2&wait=0.3", headers=AUTH)
            assert answer.status == 200 and (await answer.json())["version"] == 2
            assert 0.25 <= time.monotonic() - started < 2

            answer = await http.get("/v1/state?after=soon", headers=AUTH)
            assert answer.status == 400

    asyncio.run(fetches())


def test_a_router_fetch_that_saw_a_draining_slot_leave_wakes_the_loop() -> None:
    runtime, _ = planned_runtime(draining=True)
    runtime._wake.clear()
    runtime.state_fetched("router-a", frozenset({("lab", "quality")}))
    assert not runtime._wake.is_set(), "a fetch that did not show fast leave woke the loop"
    runtime.state_fetched("router-a", frozenset({("lab", "fast"), ("lab", "quality")}))
    assert runtime._wake.is_set()


def test_without_a_draining_slot_a_fetch_leaves_the_loop_asleep() -> None:
    runtime, _ = planned_runtime()
    runtime._wake.clear()
    runtime.state_fetched("router-a", frozenset({("lab", "quality")}))
    assert not runtime._wake.is_set()
