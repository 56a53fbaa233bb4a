"""Leader election: the pure rules of :mod:`hybrid_compute.control.leader_election`, the
elector over an in-memory Lease store that enforces resourceVersions as the API
server does, and what a standby replica's API answers."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.control import state_api
from hybrid_compute.control.leader_election import (
    ElectionTiming,
    LeaseRecord,
    Sighting,
    decide,
    leading_until,
    lease_record,
    micro_time,
)
from hybrid_compute.control.lease_elector import LeaseElector
from hybrid_compute.control.loop import Runtime
from hybrid_compute.plan.settings import PlanSettings

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
TIMING = ElectionTiming()
ME, OTHER = "operator-a_1234", "operator-b_5678"


def seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def held_by(holder: str, version: str = "7", duration: int | None = 15) -> LeaseRecord:
    return LeaseRecord(resource_version=version, holder=holder,
                       lease_duration_seconds=duration,
                       acquire_time="2026-03-01T11:00:00.000000Z", transitions=3)


# -- the rules ------------------------------------------------------------------------


def test_with_no_lease_the_replica_creates_it_holding_it() -> None:
    decision = decide(None, None, ME, T0, TIMING)
    assert decision.action == "create"
    assert decision.spec == {"holderIdentity": ME, "leaseDurationSeconds": 15,
                             "acquireTime": "2026-03-01T12:00:00.000000Z",
                             "renewTime": "2026-03-01T12:00:00.000000Z",
                             "leaseTransitions": 0}
    assert decision.retry_at == T0 + TIMING.renew_interval


def test_the_holder_renews_keeping_its_acquire_time() -> None:
    decision = decide(held_by(ME), None, ME, T0, TIMING)
    assert decision.action == "renew"
    assert decision.spec is not None
    assert decision.spec["acquireTime"] == "2026-03-01T11:00:00.000000Z"
    assert decision.spec["renewTime"] == micro_time(T0)
    assert decision.spec["leaseTransitions"] == 3, "a renewal is not a transition"
    assert decision.retry_at == T0 + TIMING.renew_interval


def test_a_live_holder_is_waited_for_and_looked_at_again_soon() -> None:
    decision = decide(held_by(OTHER), None, ME, T0, TIMING)
    assert (decision.action, decision.spec, decision.holder) == ("wait", None, OTHER)
    assert decision.sighting == Sighting("7", T0)
    assert decision.retry_at == T0 + TIMING.retry_interval


def test_a_record_unchanged_for_a_lease_duration_is_taken_over() -> None:
    first = decide(held_by(OTHER), None, ME, T0, TIMING)
    almost = decide(held_by(OTHER), first.sighting, ME, T0 + seconds(14.9), TIMING)
    assert almost.action == "wait"
    assert almost.retry_at == T0 + seconds(15), "it looks again exactly when it expires"
    taken = decide(held_by(OTHER), almost.sighting, ME, T0 + seconds(15), TIMING)
    assert taken.action == "take"
    assert taken.spec is not None
    assert taken.spec["holderIdentity"] == ME
    assert taken.spec["leaseTransitions"] == 4
    assert taken.spec["acquireTime"] == micro_time(T0 + seconds(15))


def test_a_holder_that_keeps_renewing_is_never_taken_over() -> None:
    sighting = None
    for step in range(20):
        now = T0 + seconds(5 * step)
        decision = decide(held_by(OTHER, version=str(step)), sighting, ME, now, TIMING)
        assert decision.action == "wait", f"took over a live holder after {5 * step}s"
        sighting = decision.sighting


def test_expiry_runs_on_this_replicas_clock_not_the_holders_renew_time() -> None:
    # The holder's renewTime says an hour ago (its clock is behind): this replica has
    # only just seen the record, so the holder still has a whole lease duration.
    lease = held_by(OTHER)
    decision = decide(lease, None, ME, T0 + datetime.timedelta(hours=1), TIMING)
    assert decision.action == "wait"


def test_the_holders_own_lease_duration_counts() -> None:
    first = decide(held_by(OTHER, duration=60), None, ME, T0, TIMING)
    later = decide(held_by(OTHER, duration=60), first.sighting, ME, T0 + seconds(30), TIMING)
    assert later.action == "wait"
    assert decide(held_by(OTHER, duration=60), first.sighting, ME, T0 + seconds(60),
                  TIMING).action == "take"


def test_a_released_lease_is_taken_at_once() -> None:
    decision = decide(held_by("", duration=1), None, ME, T0, TIMING)
    assert decision.action == "take"


def test_a_leader_stops_acting_before_anyone_may_take_over() -> None:
    renewed = T0
    assert leading_until(renewed, TIMING) < renewed + TIMING.lease_duration


def test_a_lease_object_is_read_into_a_record() -> None:
    lease = {"metadata": {"name": "hybrid-compute-leader", "resourceVersion": "42"},
             "spec": {"holderIdentity": OTHER, "leaseDurationSeconds": 15,
                      "acquireTime": "2026-03-01T11:00:00.000000Z",
                      "renewTime": "2026-03-01T11:59:58.000000Z", "leaseTransitions": 2}}
    assert lease_record(lease) == LeaseRecord("42", OTHER, 15, "2026-03-01T11:00:00.000000Z", 2)
    assert lease_record({"metadata": {"resourceVersion": "1"}}) == LeaseRecord("1")


# -- the elector against a Lease store with optimistic concurrency --------------------


class InMemoryLeases:
    """The three Lease calls the elector makes, with the API server's 404 and 409."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.failing = False
        self.stale_read: dict[str, Any] | None = None
        """When set, what every read answers, as when two replicas read at once."""

    def _check(self) -> None:
        if self.failing:
            raise ApiException(status=500, reason="Internal Server Error")

    def read_namespaced_lease(self, name: str, namespace: str,
                              _preload_content: bool = True) -> SimpleNamespace:
        self._check()
        lease = self.stale_read or self.lease
        if lease is None:
            raise ApiException(status=404, reason="Not Found")
        return SimpleNamespace(data=json.dumps(lease).encode())

    def _store(self, body: dict[str, Any]) -> None:
        self.version += 1
        self.lease = {**body, "metadata": {**body["metadata"],
                                           "resourceVersion": str(self.version)}}

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> None:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str,
                                 body: dict[str, Any]) -> None:
        self._check()
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self._store(body)


# The Lease stores whole seconds, so one second is the shortest lease duration.
FAST = ElectionTiming(lease_duration=seconds(1), renew_interval=seconds(0.2),
                      renew_deadline=seconds(0.6), retry_interval=seconds(0.05))


def elector(store: InMemoryLeases, identity: str) -> LeaseElector:
    candidate = LeaseElector(client.ApiClient(), "hybrid-compute", identity, FAST)
    candidate.coordination = store
    return candidate


def test_of_two_replicas_exactly_one_leads_and_the_other_takes_over_when_it_stops() -> None:
    async def scenario() -> None:
        store = InMemoryLeases()
        first, second = elector(store, ME), elector(store, OTHER)
        first_task = asyncio.create_task(first.run())
        await asyncio.sleep(0.1)
        second_task = asyncio.create_task(second.run())
        for _ in range(10):
            await asyncio.sleep(0.05)
            assert (first.is_leader(), second.is_leader()) == (True, False)
        assert second.holder == ME
        assert store.lease is not None and store.lease["spec"]["holderIdentity"] == ME
        first_task.cancel()  # killed: it never hands the Lease back
        await asyncio.sleep(0.6)
        assert not second.is_leader(), "took over before the lease duration ran out"
        await asyncio.sleep(1.0)
        assert second.is_leader()
        assert store.lease["spec"]["holderIdentity"] == OTHER
        assert store.lease["spec"]["leaseTransitions"] == 1
        second_task.cancel()

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_stops_at_its_deadline_and_never_crashes() -> None:
    async def scenario() -> None:
        store = InMemoryLeases()
        leader = elector(store, ME)
        task = asyncio.create_task(leader.run())
        await asyncio.sleep(0.1)
        assert leader.is_leader()
        store.failing = True
        await asyncio.sleep(FAST.renew_deadline.total_seconds() + 0.1)
        assert not leader.is_leader()
        assert leader.standby.is_set() and not leader.leading.is_set()
        assert not task.done(), "API errors must be retried, not end the election"
        store.failing = False
        await asyncio.sleep(0.2)
        assert leader.is_leader(), "the Lease still named it, so it leads again"
        task.cancel()

    asyncio.run(scenario())


def test_a_replica_that_loses_the_race_to_write_does_not_lead() -> None:
    async def scenario() -> None:
        store = InMemoryLeases()
        first, second = elector(store, ME), elector(store, OTHER)
        store.create_namespaced_lease("hybrid-compute", {
            "metadata": {"name": "hybrid-compute-leader"},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1}})
        # Both read the same released record; the second write carries a stale version.
        store.stale_read = store.lease
        await first.step()
        await second.step()
        assert first.is_leader()
        assert not second.is_leader()
        store.stale_read = None
        await second.step()
        assert not second.is_leader() and second.holder == ME

    asyncio.run(scenario())


def test_a_leader_hands_the_lease_back_on_shutdown() -> None:
    async def scenario() -> None:
        store = InMemoryLeases()
        first, second = elector(store, ME), elector(store, OTHER)
        await first.step()
        await second.step()
        await first.release()
        assert not first.is_leader()
        await second.step()
        assert second.is_leader(), "a released Lease is taken without waiting"

    asyncio.run(scenario())


# -- what the API answers on each replica ---------------------------------------------


@pytest.fixture
def runtimes() -> Iterator[tuple[Runtime, Runtime]]:
    store = InMemoryLeases()
    api = client.ApiClient()
    leader = Runtime(api, PlanSettings(), leadership=elector(store, ME))
    standby = Runtime(api, PlanSettings(), leadership=elector(store, OTHER))
    yield leader, standby


def test_only_the_leader_is_ready_and_a_standby_refuses_with_the_leaders_name(
        runtimes: tuple[Runtime, Runtime]) -> None:
    leader, standby = runtimes

    async def scenario() -> None:
        assert leader.leadership and standby.leadership
        await leader.leadership.step()
        await standby.leadership.step()
        answers: dict[str, dict[str, tuple[int, Any]]] = {}
        for name, runtime in (("leader", leader), ("standby", standby)):
            app = state_api.build_app(runtime, "secret")
            async with TestClient(TestServer(app)) as http:
                got: dict[str, tuple[int, Any]] = {}
                response = await http.get("/readyz")
                got["readyz"] = (response.status, await response.json())
                auth = {"Authorization": "Bearer secret"}
                response = await http.get("/v1/state", headers=auth)
                got["state"] = (response.status, await response.json())
                response = await http.post("/v1/demand", json={"alias": "local/fast"},
                                           headers=auth)
                got["demand"] = (response.status, await response.json())
                response = await http.get("/v1/state")
                got["no token"] = (response.status, await response.json())
                answers[name] = got
        assert answers["leader"]["readyz"] == (200, {"ready": True})
        assert answers["leader"]["state"][0] == 200
        # The leader has not observed the cluster yet in this test: 503 of its own kind.
        assert "not observed" in answers["leader"]["demand"][1]["error"]
        standby_message = f"this operator replica is standing by; the leader is {ME}"
        for call in ("readyz", "state", "demand"):
            assert answers["standby"][call] == (503, {"error": standby_message}), call
        assert answers["standby"]["no token"][0] == 401, "standing by does not skip auth"

    asyncio.run(scenario())


def test_without_a_token_only_readiness_is_served(runtimes: tuple[Runtime, Runtime]) -> None:
    leader, _ = runtimes

    async def scenario() -> None:
        async with TestClient(TestServer(state_api.build_app(leader, None))) as http:
            assert (await http.get("/readyz")).status == 503, "not elected yet"
            assert (await http.get("/v1/state",
                                   headers={"Authorization": "Bearer None"})).status == 401

    asyncio.run(scenario())
