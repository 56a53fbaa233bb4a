"""For slots with ``spec.server.readiness: Operator``: asks the llama-server of each
of their pods that runs but is not Ready yet whether its model is loaded (``GET
/health`` answers 200 once it is, 503 while it loads).

The kubelet probes every period (2 s for a slot's startup probe, and never more
often than once a second); a swap is over the moment the model is loaded, so the
operator asks itself, every :data:`INTERVAL_SECONDS`, through the slot's Service,
which then reaches pods before they are Ready (``publishNotReadyAddresses``). A
pod whose server answers counts as Ready (:func:`ready_early`) until the kubelet
says so too, or as long as the server keeps answering.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Mapping

import aiohttp

from hybrid_compute.control.drain_probe import server_base
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import PodInfo, SlotInfo, View
from hybrid_compute.render import children

INTERVAL_SECONDS = 0.1
TIMEOUT_SECONDS = 1.0


def loading_pods(view: View) -> dict[str, str]:
    """Pod UID -> the /health URL of each pod to ask: a pod of a slot with
    ``readiness: Operator``, running, not Ready by the kubelet, behind a Service
    that reaches it."""
    slots = {s.key: s for s in view.slots
             if s.spec is not None and s.spec.server.readiness == "Operator"}
    found: dict[str, str] = {}
    if not slots:
        return found
    for pod in view.pods:
        slot = slots.get((pod.namespace, pod.owner))
        if (pod.kind != "ModelSlot" or slot is None or not pod.uid
                or pod.phase != "Running" or pod.terminating
                or (pod.ready and not pod.ready_early) or not view.services.get(slot.key)):
            continue
        found[pod.uid] = health_url(slot, view.settings)
    return found


def health_url(slot: SlotInfo, settings: PlanSettings) -> str:
    assert slot.spec is not None
    endpoint = children.endpoint(slot.namespace, slot.name, slot.spec.server.port,
                                 settings.endpoint_template)
    return f"{server_base(endpoint)}/health"


async def answering(session: aiohttp.ClientSession, urls: Mapping[str, str]
                    ) -> frozenset[str]:
    """The UIDs whose server answered /health with 200, all asked at once."""
    async def healthy(url: str) -> bool:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(
                    total=TIMEOUT_SECONDS)) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    answers = await asyncio.gather(*(healthy(url) for url in urls.values()))
    return frozenset(uid for uid, ok in zip(urls, answers, strict=True) if ok)


def ready_early(pods: tuple[PodInfo, ...], answered: Collection[str]) -> tuple[PodInfo, ...]:
    """The pods, those whose server answered while the kubelet has not called them
    Ready marked Ready."""
    return tuple(dataclasses.replace(p, ready=True, ready_early=True)
                 if p.uid in answered and not p.ready and not p.terminating else p
                 for p in pods)
