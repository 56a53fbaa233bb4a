"""Draining: a serving slot that lost its place keeps its pod while requests in
flight finish (new ones go elsewhere), up to ``spec.drain.timeout``; then it is
unloaded anyway (Cut), or keeps serving and tries again later (Deferred)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from hybrid_compute.api.common import parse_duration
from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus, SwapProgress
from hybrid_compute.plan.holdings import Key
from hybrid_compute.plan.ledger import Gpu, gpu_label
from hybrid_compute.plan.outputs import ConditionUpdate, SlotDecision
from hybrid_compute.plan.slot_turn import SlotTurn
from hybrid_compute.plan.view import PodInfo, RouterFetch, View
from hybrid_compute.render import children

DRAIN_POLL = datetime.timedelta(seconds=0.5)
"""How often a draining slot's llama-server is asked whether it is still busy."""
ROUTER_ACTIVE_WINDOW = datetime.timedelta(seconds=10)
"""A router that fetched the state within this window (five of its refreshes) may
still route by it; one silent for longer is gone."""

ROUTER_STATE_MAX_AGE = datetime.timedelta(seconds=2.5)
"""Routers fetch a fresh state before routing by one older than 2 s (their
``STATE_REFRESH_SECONDS``), with some slack: this long after the operator started,
none routes by a state the previous operator served."""
PREVIOUS_OPERATOR = "(before this operator started)"
"""The fetch the operator counts at its start, for routers that may have fetched
from the operator before it."""
ANONYMOUS_ROUTER = ""
"""Fetches from routers that send no id: several may share it, so it never counts
as every one of them having seen a slot leave."""

DrainState = Literal["Draining", "Drained", "Deferred", "Cut"]


@dataclass(frozen=True)
class DrainVerdict:
    state: DrainState
    since: datetime.datetime
    busy: int
    reason: str


def drain_verdict(key: Key, spec: ModelSlotSpec, previous: ModelSlotStatus,
                  current: list[PodInfo], view: View, now: datetime.datetime
                  ) -> DrainVerdict | None:
    """Whether a serving slot that lost its place may be unloaded yet. None when
    there is nothing to drain: no ready pod, or a slot that was not serving."""
    if spec.device != "gpu" or previous.phase not in ("Ready", "Draining"):
        return None
    if not any(p.ready for p in current):
        return None
    timeout = parse_duration(spec.drain.timeout)
    if timeout <= datetime.timedelta(0):
        return None
    since = (previous.draining_since
             if previous.phase == "Draining" and previous.draining_since is not None
             and previous.draining_since <= now else now)
    waited = now - since
    # Routers refresh their state every 2 s: one that fetched recently may still
    # send a request the old way, until it has fetched a state showing the slot not
    # Ready, or at most until the grace has passed (a router that does not say who
    # it is).
    fetched = view.router_fetched_at
    routers_quiet = fetched is None or fetched < since - ROUTER_ACTIVE_WINDOW
    routers_informed = (routers_quiet or routers_acknowledged(view, key, since, now)
                        or waited >= view.settings.drain_route_grace)
    activity = view.slot_activity.get(key)
    busy = activity.busy if activity is not None else None
    if routers_informed and activity is not None and busy == 0:
        note = f" ({activity.error})" if activity.error else ""
        return DrainVerdict("Drained", since, 0, f"no request in flight{note}")
    if waited < timeout:
        what = ("waiting for routers to stop sending requests" if not routers_informed
                else "waiting for in-flight requests" if busy is None
                else f"waiting for {busy} request(s) in flight")
        return DrainVerdict("Draining", since, busy or 0,
                            f"draining: {what} (up to {spec.drain.timeout})")
    running = busy or 0
    summary = f"{running} request(s) still running after {spec.drain.timeout}"
    if spec.drain.on_timeout == "Cut":
        return DrainVerdict("Cut", since, running, summary)
    return DrainVerdict("Deferred", since, running, summary)


def routers_acknowledged(view: View, key: Key, since: datetime.datetime,
                         now: datetime.datetime) -> bool:
    """Every router that may still route by an older state has since fetched one that
    shows the slot not Ready. A fetch the operator cannot attribute (the latest one
    is newer than every known router's) proves nothing."""
    active = {name: fetch for name, fetch in view.router_fetches.items()
              if fetch.at >= since - ROUTER_ACTIVE_WINDOW}
    if not active or view.router_fetched_at is None:
        return False
    if view.router_fetched_at > max(fetch.at for fetch in active.values()):
        return False
    return all(_has_seen_it_leave(name, fetch, key, now) for name, fetch in active.items())


def _has_seen_it_leave(router: str, fetch: RouterFetch, key: Key,
                       now: datetime.datetime) -> bool:
    if router == PREVIOUS_OPERATOR:
        return now - fetch.at >= ROUTER_STATE_MAX_AGE
    return router != ANONYMOUS_ROUTER and key in fetch.not_ready


def draining_decision(turn: SlotTurn, spec: ModelSlotSpec, drain: DrainVerdict,
                      head: list[ConditionUpdate], still_held: list[str] | None,
                      gpus: dict[str, Gpu]) -> SlotDecision:
    """A slot that keeps its pod while requests finish, or after a drain that timed
    out with requests running (Deferred: it serves on, and the swap waits)."""
    previous = turn.slot.status
    label = gpu_label(still_held) if still_held else previous.gpu
    node = gpus[still_held[0]].node.name if still_held else previous.node
    template = turn.template_vram
    resident = ConditionUpdate("Resident", True, "Placed", f"placed on {label}")
    if drain.state == "Draining":
        turn.updates["draining_since"] = drain.since
        decision = turn.decide("Draining", drain.reason, 1, [
            *head, ConditionUpdate("Swapping", True, "Draining", drain.reason), resident,
            ConditionUpdate("Ready", False, "Draining", drain.reason)],
            gpu=label, node=node, vram=template)
        if previous.phase != "Draining":
            turn.event("Normal", "Draining",
                       f"Draining {spec.alias}: new requests go elsewhere while those in "
                       f"flight finish (up to {spec.drain.timeout})")
        return decision
    retry_at = turn.now + parse_duration(spec.drain.timeout)
    turn.updates.update(draining_since=None, drain_deferred_until=retry_at)
    reason = (f"swap deferred: {drain.reason}; serving until "
              f"{retry_at.strftime('%H:%M:%S')} UTC, then draining again")
    decision = turn.decide("Ready", reason, 1, [
        *head, ConditionUpdate("Swapping", False, "Deferred", reason), resident,
        ConditionUpdate("Ready", True, "Serving", f"serving {children.served_name(spec)}")],
        gpu=label, node=node, vram=template)
    turn.event("Warning", "SwapDeferred", f"Kept {spec.alias} loaded: {drain.reason}")
    return decision


def mark_drained(loading: list[SlotDecision], draining: set[str], now: datetime.datetime
                 ) -> None:
    """A load waiting only on slots that are no longer ``draining`` (names) has its
    drain phase over: what is left is their pods going away. Only ``loading``
    decisions mark the moments of a load."""
    for decision in loading:
        marks = decision.status_updates.get("swap_progress")
        if (isinstance(marks, SwapProgress) and marks.drained_at is None
                and not draining.intersection(decision.waiting_on)):
            decision.status_updates["swap_progress"] = marks.model_copy(
                update={"drained_at": now})
