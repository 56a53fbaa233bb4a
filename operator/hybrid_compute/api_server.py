"""The operator's small HTTP API for the router and for people.

``POST /v1/demand {"alias": ...}`` signals that a request for an alias arrived;
``POST /v1/spend {"policy": "namespace/name", "amount": USD}`` adds cloud spend to a
RoutePolicy's budget period; ``GET /v1/state`` returns every slot's phase,
residency and endpoint, the GPU ledger and each policy's budget. Every call needs
``Authorization: Bearer <token>``; the token comes from a Secret and is never
logged.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import replace
from typing import Any

from aiohttp import web

from hybrid_compute import clock
from hybrid_compute.routing import PolicyDecision, valid_spend
from hybrid_compute.runtime import Runtime

MAX_BODY_BYTES = 4096


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def state_document(runtime: Runtime) -> dict[str, Any]:
    result = runtime.last_plan
    if result is None:
        return {"ready": False, "slots": [], "gpus": []}
    return {
        "ready": True,
        "generatedAt": clock.now().isoformat().replace("+00:00", "Z"),
        "slots": [{
            "namespace": d.namespace,
            "name": d.name,
            "alias": d.alias,
            "phase": d.phase,
            "ready": d.ready,
            "reason": d.reason,
            "endpoint": d.endpoint,
            "fallback": d.fallback,
            "gpu": d.gpu,
            "node": d.node,
            "lastRequestTime": d.status.get("lastRequestTime"),
        } for d in result.slots],
        "gpus": [{
            "id": g.id,
            "capacityBytes": g.capacity_bytes,
            "plannedBytes": g.planned_bytes,
            "heldBytes": g.held_bytes,
            "residents": list(g.residents),
        } for g in result.gpus],
        "policies": {f"{p.namespace}/{p.name}": _policy_state(runtime, p)
                     for p in result.policies},
    }


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


def build_app(runtime: Runtime, token: str) -> web.Application:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
        supplied = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            return _error(401, "missing or wrong bearer token")
        response: web.StreamResponse = await handler(request)
        return response

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

    async def state(_request: web.Request) -> web.Response:
        return web.json_response(state_document(runtime))

    app = web.Application(middlewares=[authenticate], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/demand", demand)
    app.router.add_post("/v1/spend", spend)
    app.router.add_get("/v1/state", state)
    return app


async def start(runtime: Runtime, token: str, port: int, host: str = "0.0.0.0"
                ) -> web.AppRunner:
    runner = web.AppRunner(build_app(runtime, token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
