"""A slot with ``readiness: Operator`` serves the moment its model is loaded: the
operator asks the llama-server of each of its running pods the kubelet has not
called Ready whether it answers /health, and a pod that does counts as Ready until
the kubelet agrees. Its Service then publishes pods that are not Ready yet."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import replace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hybrid_compute.control import health_probe
from hybrid_compute.control import observe as observe_module
from hybrid_compute.control.observe import Signals, observe
from hybrid_compute.plan import plan
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import PodInfo, View
from hybrid_compute.render import children
from tests.simworld import SEED_SLOTS, START, dreamteam, slot

SETTINGS = PlanSettings()


def pod(name: str, owner: str = "quality", **fields: Any) -> PodInfo:
    values: dict[str, Any] = {
        "name": name, "namespace": "lab", "owner": owner, "node": "dreamteam",
        "vram_bytes": 0, "gpus": 1, "template_hash": "", "ready": False, "terminating": False,
        "phase": "Running", "uid": f"uid-{name}", **fields}
    return PodInfo(**values)


def view(*pods: PodInfo, services: dict[tuple[str, str], bool] | None = None) -> View:
    """The seed's slots; quality and fast answer for themselves (readiness: Operator)."""
    slots = tuple(slot(name, {**spec, "server": {"readiness": "Operator"}}
                       if name in ("quality", "fast") else spec)
                  for name, spec in SEED_SLOTS.items())
    return View(nodes=(dreamteam(),), slots=slots, pods=pods, settings=SETTINGS,
                services={("lab", "quality"): True, ("lab", "fast"): True}
                if services is None else services)


def test_the_running_pods_not_ready_yet_are_asked_through_their_service() -> None:
    seen = view(pod("loading"), pod("ready", ready=True),
                pod("early", ready=True, ready_early=True), pod("pending", phase="Pending"),
                pod("leaving", terminating=True), pod("job", kind="GpuWorkload"),
                pod("old-service", owner="fast"), pod("no-slot", owner="gone"),
                pod("kubelet-readiness", owner="quality-alt"),
                services={("lab", "quality"): True, ("lab", "fast"): False,
                          ("lab", "quality-alt"): True})
    url = children.endpoint("lab", "quality", 8080).removesuffix("/v1") + "/health"
    assert health_probe.loading_pods(seen) == {"uid-loading": url, "uid-early": url}


def test_only_an_operator_readiness_slot_publishes_pods_not_ready_yet() -> None:
    spec = slot("fast", SEED_SLOTS["fast"]).spec
    assert spec is not None
    kubelet = children.service("lab", "fast", "u", 8080)
    operator = children.service("lab", "fast", "u", 8080, reaches_loading=True)
    assert "publishNotReadyAddresses" not in kubelet["spec"]
    assert operator["spec"]["publishNotReadyAddresses"] is True
    assert spec.server.readiness == "Kubelet"


def test_a_pod_whose_server_answered_counts_as_ready_until_the_kubelet_says_so() -> None:
    pods = (pod("loading"), pod("silent"), pod("ready", ready=True),
            pod("leaving", terminating=True))
    marked = health_probe.ready_early(pods, {"uid-loading", "uid-ready", "uid-leaving"})
    assert [(p.name, p.ready, p.ready_early) for p in marked] == [
        ("loading", True, True), ("silent", False, False), ("ready", True, False),
        ("leaving", False, False)]


def test_only_the_servers_that_answer_200_count() -> None:
    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if request.match_info["name"] == "up" else 503)

    async def ask() -> frozenset[str]:
        app = web.Application()
        app.router.add_get("/{name}/health", health)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            base = str(server.make_url(""))
            return await health_probe.answering(session, {
                "a": f"{base}/up/health", "b": f"{base}/loading/health",
                "c": "http://127.0.0.1:1/nobody/health"})

    assert asyncio.run(ask()) == frozenset({"a"})


def test_observe_marks_the_answering_pods_and_the_plan_serves_the_slot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    listed = view(pod("quality-1", template_hash="t"))

    def cluster_view(*_: Any) -> View:
        return listed

    monkeypatch.setattr(observe_module, "cluster_view", cluster_view)
    signals = Signals(demands={}, spend_reports={}, router_fetched_at=lambda: None,
                      router_fetches=lambda: {}, unrecorded_evaluations=lambda _: {},
                      answering=lambda: frozenset({"uid-quality-1"}))
    seen = asyncio.run(observe(cast(Any, None), cast(Any, None), SETTINGS, signals, START))
    [marked] = seen.pods
    assert marked.ready and marked.ready_early
    without = asyncio.run(observe(cast(Any, None), cast(Any, None), SETTINGS, replace(
        signals, answering=lambda: frozenset()), START))
    assert not without.pods[0].ready

    # The plan sees quality's current pod ready: Ready, whatever the kubelet says yet.
    quality = next(s for s in seen.slots if s.name == "quality")
    result = plan(replace(seen, demands={"local/quality": START}), START)
    template = result.slot("lab", "quality").template
    assert template is not None
    current = replace(marked, template_hash=children.template_hash(template))
    loading = replace(quality, status=quality.status.model_copy(update={
        "phase": "Loading", "loading_since": START}))
    later = START + datetime.timedelta(seconds=5)
    result = plan(replace(seen, pods=(current,), demands={"local/quality": START},
                          slots=tuple(loading if s.name == "quality" else s
                                      for s in seen.slots)), later)
    assert result.slot("lab", "quality").phase == "Ready"
