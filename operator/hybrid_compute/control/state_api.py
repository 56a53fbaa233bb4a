"""The operator's small HTTP API for the router and for people.

``POST /v1/demand {"alias": ...}`` signals that a request for an alias arrived;
``POST /v1/spend {"policy": "namespace/name", "amount": USD}`` adds cloud spend to a
RoutePolicy's budget period; ``GET /v1/state`` returns every slot's phase,
residency, endpoint and predicted wait (:mod:`hybrid_compute.plan.swaps`), the GPU
ledger, each policy's budget and the reservations
(:mod:`hybrid_compute.plan.reservations`), with the ``version`` of the plan it comes from; with
``?after=V&wait=S`` it answers once a plan newer than V is published, or after S
seconds (a router holding a request for a swap learns of the swap's end at once).
Every call needs
``Authorization: Bearer <token>``; the token comes from a Secret and is never
logged.

``GET /readyz`` (no token) is the readiness probe: 200 on the replica that acts,
503 on a replica standing by for the leader Lease, which also answers the calls
above with 503, so that a Service sends the router only to the leader.
"""

from __future__ import annotations

import datetime
import hmac
import json
from dataclasses import replace
from typing import Any

from aiohttp import web

from hybrid_compute.control import clock
from hybrid_compute.control.loop import Runtime
from hybrid_compute.plan import reservations, swaps
from hybrid_compute.plan.drain import ANONYMOUS_ROUTER
from hybrid_compute.plan.outputs import Plan, SlotDecision
from hybrid_compute.plan.routing import PolicyDecision, valid_spend
from hybrid_compute.server import metrics

MAX_BODY_BYTES = 4096
MAX_WAIT_SECONDS = 10.0
"""The longest ``GET /v1/state?after=V&wait=S`` holds for a plan newer than V."""
ROUTER_ID_HEADER = "X-Hybrid-Router"
"""Sent by each router with its state fetches, so drains know which routers have
seen a slot leave (the router module sends the same header)."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def state_document(runtime: Runtime) -> dict[str, Any]:
    """What ``GET /v1/state`` answers, as a document."""
    result = runtime.last_plan
    if result is None:
        return _not_planned(runtime)
    now = clock.now()
    return {**_head(runtime, now), "slots": [slot_entry(d, now) for d in _routed(result)],
            **_rest(runtime, result)}


def slot_entry(decision: SlotDecision, now: datetime.datetime) -> dict[str, Any]:
    """A slot as routers read it."""
    return {
        "namespace": decision.namespace,
        "name": decision.name,
        "alias": decision.alias,
        "phase": decision.phase,
        "ready": decision.ready,
        "reason": decision.reason,
        "endpoint": decision.endpoint,
        "fallback": decision.fallback,
        "gpu": decision.gpu,
        "node": decision.node,
        "lastRequestTime": decision.status.get("lastRequestTime"),
        "predictedWaitSeconds": swaps.predicted_wait(
            decision.phase, decision.status, now,
            decision.settings.default_swap_time.total_seconds()),
    }


def _routed(result: Plan) -> list[SlotDecision]:
    return [d for d in result.slots if not d.refused]


def _not_planned(runtime: Runtime) -> dict[str, Any]:
    return {"ready": False, "version": runtime.plan_version, "slots": [], "gpus": []}


def _head(runtime: Runtime, now: datetime.datetime) -> dict[str, Any]:
    return {"ready": True, "version": runtime.plan_version,
            "generatedAt": now.isoformat().replace("+00:00", "Z")}


def _rest(runtime: Runtime, result: Plan) -> dict[str, Any]:
    """Everything but the head and the slots."""
    return {
        "gpus": [{
            "id": g.id,
            "capacityBytes": g.capacity_bytes,
            "plannedBytes": g.planned_bytes,
            "heldBytes": g.held_bytes,
            "residents": list(g.residents),
            "foreignBytes": g.foreign_bytes,
            "foreign": list(g.foreign),
        } for g in result.gpus],
        "policies": {f"{p.namespace}/{p.name}": _policy_state(runtime, p)
                     for p in result.policies},
        "reservations": [{
            "namespace": w.namespace,
            "name": w.name,
            "phase": w.phase,
            "reason": w.reason,
            "gpu": w.gpu,
            "endsAt": w.status.get("endsAt"),
            "evicted": w.status.get("evicted", []),
        } for w in result.workloads if w.workload.spec is not None
            and reservations.is_reservation(w.workload.spec)],
    }


class RouterStates:
    """``GET /v1/state`` as JSON text, the slots of each plan written once.

    Every router asks for the state after every plan, and a large install has a
    thousand slots: building and encoding each slot on every fetch made the state
    API the dearest part of a pass. A slot's text is kept while its decision is the
    kept one of a settled slot (``SlotDecision.kept``), which says the same on every
    plan; only a loading slot's predicted wait reads the clock, so only loading
    slots are written again on each fetch."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._parts: list[str | SlotDecision] = []
        """Each slot's JSON text, or a loading slot's decision to write per fetch."""
        self._not_ready: frozenset[tuple[str, str]] = frozenset()
        self._kept: dict[int, tuple[SlotDecision, str]] = {}

    def body(self, runtime: Runtime) -> tuple[str, frozenset[tuple[str, str]]]:
        """The JSON text of the state now, and the slots it shows not Ready."""
        result = runtime.last_plan
        if result is None:
            return json.dumps(_not_planned(runtime)), frozenset()
        now = clock.now()
        if self._version != runtime.plan_version:
            self._take(result, runtime.plan_version, now)
        slots = ",".join(part if isinstance(part, str) else json.dumps(slot_entry(part, now))
                         for part in self._parts)
        # Both documents have members: each is spliced around the slots.
        text = (f"{json.dumps(_head(runtime, now))[:-1]}, \"slots\": [{slots}], "
                f"{json.dumps(_rest(runtime, result))[1:]}")
        return text, self._not_ready

    def _take(self, result: Plan, version: int, now: datetime.datetime) -> None:
        parts: list[str | SlotDecision] = []
        kept: dict[int, tuple[SlotDecision, str]] = {}
        routed = _routed(result)
        for decision in routed:
            if decision.phase == "Loading":
                parts.append(decision)
                continue
            source = decision.kept
            held = self._kept.get(id(source)) if source is not None else None
            if held is None or held[0] is not source:
                held = (source or decision, json.dumps(slot_entry(decision, now)))
            if source is not None:
                kept[id(source)] = held
            parts.append(held[1])
        self._version, self._parts, self._kept = version, parts, kept
        self._not_ready = frozenset((d.namespace, d.name) for d in routed if not d.ready)


def _policy_state(runtime: Runtime, decision: PolicyDecision) -> dict[str, Any]:
    budget = decision.budget
    state: dict[str, Any] = {"gpuBusy": decision.gpu_busy, "configHash": decision.config_hash}
    if budget is not None:
        # Spend heard since the last plan counts at once, so a burst of cloud calls
        # cannot overrun the budget between two plans.
        unsaved = runtime.unsaved_spend(decision.key) - decision.spend_included
        if unsaved > 0:
            budget = replace(budget, spent=budget.spent + unsaved)
        state["budget"] = budget.document()
    return state


def _standby_message(runtime: Runtime) -> str | None:
    """Why this replica does not answer for the cluster, or None when it leads."""
    if runtime.leadership is None or not runtime.standing_by():
        return None
    return (f"this operator replica is standing by; the leader is "
            f"{runtime.leadership.describe_leader()}")


def _route_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return "each count must be an object"
    if entry.get("outcome") not in metrics.ROUTE_OUTCOMES:
        return f"outcome must be one of {', '.join(metrics.ROUTE_OUTCOMES)}"
    if not all(isinstance(entry.get(key), str) for key in ("alias", "target")):
        return "alias and target must be strings"
    count = entry.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= 1_000_000:
        return "count must be a whole number from 1 to 1000000"
    return None


def build_app(runtime: Runtime, token: str | None) -> web.Application:
    """The API; without a token only ``/readyz``."""
    states = RouterStates()
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/readyz":
            supplied = request.headers.get("Authorization", "").encode()
            if expected is None or not hmac.compare_digest(supplied, expected):
                return _error(401, "missing or wrong bearer token")
            standby = _standby_message(runtime)
            if standby is not None:
                return _error(503, standby)
        response: web.StreamResponse = await handler(request)
        return response

    async def ready(_request: web.Request) -> web.Response:
        standby = _standby_message(runtime)
        if standby is not None:
            return _error(503, standby)
        return web.json_response({"ready": True})

    async def demand(request: web.Request) -> web.Response:
        if request.content_length and request.content_length > MAX_BODY_BYTES:
            return _error(413, "body too large")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body must be JSON like {\"alias\": \"local/quality\"}")
        alias = body.get("alias") if isinstance(body, dict) else None
        if not isinstance(alias, str) or not alias:
            return _error(400, "field 'alias' (a string) is required")
        if runtime.last_view is None:
            return _error(503, "the operator has not observed the cluster yet; retry")
        if alias not in runtime.aliases():
            return _error(404, f"no ModelSlot serves alias {alias!r}")
        runtime.demand(alias, clock.now())
        slots = [{"namespace": d.namespace, "name": d.name, "phase": d.phase}
                 for d in (runtime.last_plan.by_alias(alias) if runtime.last_plan else [])]
        return web.json_response({"alias": alias, "accepted": True, "slots": slots},
                                 status=202)

    async def spend(request: web.Request) -> web.Response:
        if request.content_length and request.content_length > MAX_BODY_BYTES:
            return _error(413, "body too large")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body must be JSON like "
                               "{\"policy\": \"ai/hybrid\", \"amount\": 0.0123}")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        policy, amount = body.get("policy"), valid_spend(body.get("amount"))
        if not isinstance(policy, str) or policy.count("/") != 1:
            return _error(400, "field 'policy' (namespace/name) is required")
        if amount is None:
            return _error(400, "field 'amount' must be a number of USD between 0 and 1000000")
        if runtime.last_view is None:
            return _error(503, "the operator has not observed the cluster yet; retry")
        namespace, name = policy.split("/")
        if (namespace, name) not in runtime.policies():
            return _error(404, f"no RoutePolicy {policy}")
        runtime.report_spend((namespace, name), amount)
        return web.json_response({"policy": policy, "accepted": amount}, status=202)

    async def routes(request: web.Request) -> web.Response:
        if request.content_length and request.content_length > MAX_BODY_BYTES:
            return _error(413, "body too large")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        counts = body.get("counts") if isinstance(body, dict) else None
        if not isinstance(counts, list):
            return _error(400, "body must be JSON like {\"counts\": [{\"alias\": "
                               "\"local/quality\", \"target\": \"cloud/mid\", "
                               "\"outcome\": \"bridged\", \"count\": 3}]}")
        problems = [problem for entry in counts if (problem := _route_problem(entry))]
        if problems:
            return _error(400, "; ".join(problems[:5]))
        known = runtime.known_aliases()
        for entry in counts:
            # Only aliases something serves become labels: clients can send any name.
            alias = entry["alias"] if entry["alias"] in known else "other"
            target = entry["target"] if entry["target"] in known else "other"
            metrics.record_route(entry["outcome"], alias, target, entry["count"])
        return web.json_response({"accepted": len(counts)}, status=202)

    async def state(request: web.Request) -> web.Response:
        if "after" in request.query:
            try:
                after = int(request.query["after"])
                wait = min(float(request.query.get("wait", "0")), MAX_WAIT_SECONDS)
            except ValueError:
                return _error(400, "after must be a plan version (a whole number) and wait "
                                   "a number of seconds")
            await runtime.plan_after(after, wait)
        text, not_ready = states.body(runtime)
        runtime.state_fetched(request.headers.get(ROUTER_ID_HEADER, ANONYMOUS_ROUTER),
                              not_ready)
        return web.Response(text=text, content_type="application/json")

    app = web.Application(middlewares=[authenticate], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/readyz", ready)
    if token:
        app.router.add_post("/v1/demand", demand)
        app.router.add_post("/v1/spend", spend)
        app.router.add_post("/v1/routes", routes)
        app.router.add_get("/v1/state", state)
    return app


async def start(runtime: Runtime, token: str | None, port: int, host: str = "0.0.0.0"
                ) -> web.AppRunner:
    runner = web.AppRunner(build_app(runtime, token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
