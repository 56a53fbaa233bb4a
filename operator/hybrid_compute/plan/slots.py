"""Each slot's decision: its phase, replicas, status and Events, from where the
placement put it and what still exists (break-before-make).

The state machine, one function per branch: an invalid spec fails; a CPU slot runs
while wanted; a GPU slot whose VRAM is not known, or that can never fit, does not
load; a slot without a place drains, unloads, waits for room or stands by; a
placed slot starts when what exists leaves room, loads, and serves (after the
evaluation gate).
"""

from __future__ import annotations

import datetime
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hybrid_compute.api.modelslot import (
    ModelFetchProgress,
    ModelPageCache,
    ModelSlotSpec,
    ModelSlotStatus,
    SwapPhases,
)
from hybrid_compute.api.units import gib
from hybrid_compute.plan import evaluation, idle, model_vram, prompt_cache, swaps
from hybrid_compute.plan.demand import SlotDemand, any_serving, cpu_demanded, last_request
from hybrid_compute.plan.drain import (
    DRAIN_POLL,
    DrainVerdict,
    drain_verdict,
    draining_decision,
    mark_drained,
)
from hybrid_compute.plan.holdings import Holdings, Key, Owned
from hybrid_compute.plan.ledger import Gpu, gpu_label, start, start_blockers
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.model_vram import vram_choice
from hybrid_compute.plan.outputs import (
    ACCEPTED,
    CompletedSwap,
    ConditionUpdate,
    EventIntent,
    Phase,
    SlotDecision,
)
from hybrid_compute.plan.placement import Departures, Placement
from hybrid_compute.plan.quiet import QuietSlot
from hybrid_compute.plan.slot_turn import SlotTurn
from hybrid_compute.plan.view import DeploymentInfo, PodInfo, SlotInfo, View
from hybrid_compute.plan.warm_standby import page_cache_status
from hybrid_compute.render import children

LOAD_POLL = datetime.timedelta(seconds=5)
"""How often a slot that is loading or unloading is looked at again."""


@dataclass(frozen=True)
class SlotFindings:
    """What the passes before the slot decisions found."""

    owned: Owned
    holdings: Holdings
    demand: SlotDemand
    placement: Placement
    departures: Departures
    quiet: Mapping[Key, QuietSlot] = field(default_factory=dict)
    """Slots whose decision is the kept one of the previous plan (:mod:`.quiet`)."""


def decide_slots(view: View, now: datetime.datetime, memo: PlanMemo, gpus: dict[str, Gpu],
                 findings: SlotFindings, wakeups: list[datetime.datetime],
                 made: dict[Key, tuple[SlotDecision, list[EventIntent]]]
                 ) -> tuple[list[SlotDecision], list[EventIntent]]:
    """Every slot's decision, in name order, and the Events they post; ``made`` gets
    the decisions made again from a kept one (:mod:`.quiet` hands them out again)."""
    decisions: list[SlotDecision] = []
    events: list[EventIntent] = []
    loading: list[SlotDecision] = []
    draining: set[str] = set()
    quiet = findings.quiet
    for slot in sorted(view.slots, key=_by_key):
        entry = quiet.get(slot.key)
        if entry is not None and entry.decision is not None and _shows_the_same(
                entry.decision, slot, view, memo):
            decision, new_events = entry.decision, list(entry.events)
        else:
            kept = memo.kept_settled(slot, now) if entry is not None else None
            decision, new_events = (kept if kept is not None
                                    else decide_slot(slot, view, now, memo, gpus, findings))
            if view.page_cache:  # without the agents' reports there is nothing to show
                decision.page_cache = _page_cache(view, slot, decision, memo)
            if decision.kept is not None:
                made[slot.key] = decision, new_events
        decisions.append(decision)
        events += new_events
        phase = decision.phase
        if phase == "Loading":
            loading.append(decision)
            wakeups.append(now + LOAD_POLL)
        elif phase == "Unloading":
            wakeups.append(now + LOAD_POLL)
        elif phase == "Draining":
            draining.add(slot.name)
            wakeups.append(now + DRAIN_POLL)
        elif phase == "Ready" and swaps.route_restore_pending(decision, view, now):
            wakeups.append(now + swaps.ROUTE_RESTORE_POLL)
    mark_drained(loading, draining, now)
    return decisions, events


_by_key = operator.attrgetter("key")


def _shows_the_same(before: SlotDecision, slot: SlotInfo, view: View, memo: PlanMemo
                    ) -> bool:
    """Whether a quiet slot's decision handed out before can be handed out again: it
    shows the page cache there is now (the rest it reads did not change; it keeps the
    moment it was made)."""
    return not view.page_cache or _page_cache(view, slot, before, memo) == before.page_cache


def _page_cache(view: View, slot: SlotInfo, decision: SlotDecision, memo: PlanMemo
                ) -> ModelPageCache | None:
    return page_cache_status(view, slot, decision.node or decision.pinned_node, memo)


class SlotPods(NamedTuple):
    """A slot's pods, by whether they run the template this plan renders."""

    all: list[PodInfo]
    """Every pod, Terminating ones included."""
    current: list[PodInfo]
    """Live pods of the current template."""
    stale: list[PodInfo]
    """Live pods of another template."""
    template_hash: str
    fetch_reason: str | None
    """What the current pods' model download is doing, for a reason."""


def decide_slot(slot: SlotInfo, view: View, now: datetime.datetime, memo: PlanMemo,
                gpus: dict[str, Gpu], findings: SlotFindings
                ) -> tuple[SlotDecision, list[EventIntent]]:
    """One slot's decision and the Events it posts; a slot that holds nothing and
    has no place is decided once while what its decision reads stays the same."""
    inputs = settled_inputs(slot, view, now, findings)
    if inputs is None:
        return _decide_with_idle_timeout(slot, view, now, memo, gpus, findings)
    return memo.settled_slot(slot, inputs, now, _decide_with_idle_timeout, slot, view, now,
                             memo, gpus, findings)


def settled_inputs(slot: SlotInfo, view: View, now: datetime.datetime,
                   findings: SlotFindings) -> tuple[object, ...] | None:
    """Everything the decision of a settled slot reads besides the slot record, or
    None for a slot that is not settled (its decision is made afresh every plan).

    Settled: a valid spec, no pods, no place, no evaluation result or prompt cache
    outcome to record, and a status that is not Ready (the decision of a slot
    leaving Ready records the moment). Such a slot's branch of the state machine
    reads the clock nowhere but in ``SlotDecision.now`` (no drain without a ready
    pod, no load, no Events that name a time), except a CPU slot's demand, which is
    in the key as whether it is wanted (without pods its deadline does not move
    with the clock). The rest: the settings, its Deployment record, its last
    request (with its UTC offset, so an equal time in another zone is not taken for
    it), its VRAM figure and what the placement and demand passes say of it."""
    spec = slot.spec
    key = slot.key
    if (spec is None or slot.status.phase == "Ready" or findings.owned.slot_pods.get(key)
            or key in findings.placement.slots or key in view.evaluations
            or key in view.prompt_caches):
        return None
    demand, placement = findings.demand, findings.placement
    requested = demand.requests[key] if key in demand.requests else last_request(slot, view)
    choice = demand.vram.get(key)
    if spec.device == "gpu" and choice is None:
        return None
    wanted = spec.device == "cpu" and cpu_demanded(slot, spec, view, False, now)
    return (view.settings, findings.owned.deployments.get(key), requested,
            requested.utcoffset() if requested is not None else None, choice, wanted,
            demand.unschedulable.get(key), demand.asleep.get(key),
            placement.slot_waiting.get(key), placement.slot_standby.get(key))


def _decide_with_idle_timeout(slot: SlotInfo, view: View, now: datetime.datetime,
                              memo: PlanMemo, gpus: dict[str, Gpu], findings: SlotFindings
                              ) -> tuple[SlotDecision, list[EventIntent]]:
    """The decision with ``status.idleTimeout`` of an Auto slot, which reads the records
    the decision writes and nothing else: a kept decision holds it already."""
    decision, events = _decide(slot, view, now, memo, gpus, findings)
    if slot.spec is not None:
        decision.status_updates["idle_timeout"] = idle.auto_status(
            slot.spec, slot.status, decision.status_updates, view.settings)
    return decision, events


def _decide(slot: SlotInfo, view: View, now: datetime.datetime, memo: PlanMemo,
            gpus: dict[str, Gpu], findings: SlotFindings
            ) -> tuple[SlotDecision, list[EventIntent]]:
    deployment = findings.owned.deployments.get(slot.key)
    # Built here rather than kept for every slot through the plan: nothing after the
    # decision reads it, so it need not outlive it.
    gate = evaluation.gate(slot, view, now, memo) if slot.spec is not None else None
    turn = SlotTurn(slot, view, now, memo, gate, deployment.node if deployment else None)
    if slot.spec is None:
        return _invalid_spec(turn), turn.events
    spec = gate.served if gate is not None else slot.spec
    _record_prompt_caches(turn, spec)
    pods = _look_at_pods(turn, spec, findings.owned.slot_pods.get(slot.key, []), deployment,
                         findings.demand)
    if spec.device == "cpu":
        return _cpu_slot(turn, spec, pods), turn.events
    choice = turn.choice
    assert choice is not None  # _look_at_pods sizes every GPU slot
    if choice.bytes is None:
        return _vram_unknown(turn, choice.detail), turn.events
    problem = findings.demand.unschedulable.get(slot.key)
    if problem is not None:
        return _unschedulable(turn, spec, pods, problem), turn.events
    fits = turn.memo.fits_condition(choice)
    placed = findings.placement.slots.get(slot.key)
    if placed is None:
        return _not_placed(turn, spec, pods, fits, gpus, findings), turn.events
    return _placed(turn, spec, choice.bytes, pods, fits, placed, gpus, deployment,
                   findings), turn.events


def _look_at_pods(turn: SlotTurn, spec: ModelSlotSpec, pods: list[PodInfo],
                  deployment: DeploymentInfo | None, demand: SlotDemand) -> SlotPods:
    """The slot's demand, VRAM figure and template, and its pods sorted by template."""
    slot, view = turn.slot, turn.view
    key = slot.key
    requested = turn.updates["last_request_time"] = (
        demand.requests[key] if key in demand.requests else last_request(slot, view))
    gaps = idle.remember_gap(spec, slot.status, requested)
    if gaps is not None:
        turn.updates["recent_request_gaps"] = gaps
    vram: int | None = 0
    if spec.device == "gpu":
        choice = turn.choice = (demand.vram.get(key)
                                or vram_choice(slot, spec, view, deployment, turn.memo))
        vram = choice.bytes
        turn.updates["vram_source"] = choice.source
    template = turn.template_vram = vram or 0
    current_hash = ""
    if pods or deployment is not None:
        current_hash = children.template_hash(
            turn.memo.slot_template(slot.name, spec, template, view.settings))
    current: list[PodInfo] = []
    stale: list[PodInfo] = []
    for pod in pods:
        if not pod.terminating:
            (current if pod.template_hash == current_hash else stale).append(pod)
    turn.fetch, fetch_reason = fetch_status(current) if current else (None, None)
    previous = slot.status.fetch
    if (turn.fetch is not None and turn.fetch.state == "Failed"
            and (previous is None or previous.state != "Failed")):
        turn.event("Warning", "FetchFailed",
                   f"Fetching the model of {spec.alias} failed: {turn.fetch.message}")
    return SlotPods(pods, current, stale, current_hash, fetch_reason)


def _record_prompt_caches(turn: SlotTurn, spec: ModelSlotSpec) -> None:
    """The prompt cache saves and restores no status holds yet, into this pass's
    status and Events."""
    slot = turn.slot
    turn.prompt_cache = slot.status.prompt_cache
    outcomes = turn.view.prompt_caches.get(slot.key)
    if outcomes is None:
        return
    turn.prompt_cache, events = prompt_cache.record(slot.namespace, slot.name, spec.alias,
                                                    turn.prompt_cache, outcomes)
    turn.updates["prompt_cache"] = turn.prompt_cache
    turn.events.extend(events)


def _invalid_spec(turn: SlotTurn) -> SlotDecision:
    message = turn.slot.invalid_reason or "the spec is invalid"
    return turn.decide("Failed", f"invalid spec: {message}", 0, [
        ConditionUpdate("Accepted", False, "InvalidSpec", message),
        ConditionUpdate("Ready", False, "InvalidSpec", message)])


def _cpu_slot(turn: SlotTurn, spec: ModelSlotSpec, pods: SlotPods) -> SlotDecision:
    """A CPU slot runs while it is Always or its requests keep it wanted."""
    previous = turn.slot.status
    serving = any_serving(pods.current)
    wanted = spec.activation == "Always" or cpu_demanded(turn.slot, spec, turn.view, serving,
                                                         turn.now)
    phase, reason = _phase_from_pods(wanted, pods, "on CPU")
    if phase == "Loading" and pods.fetch_reason:
        reason = pods.fetch_reason
    if turn.gate is not None:
        phase, reason = turn.gate.live(phase, reason, turn.now, previous.phase)
    if phase == "Ready" and previous.phase != "Ready":
        turn.updates["ready_since"] = turn.now
    fits = ConditionUpdate("Fits", True, "CpuSlot", "runs on CPU; no GPU memory needed")
    return turn.decide(phase, reason, 1 if wanted else 0,
                       [ACCEPTED, fits, _readiness(phase, reason)])


def _vram_unknown(turn: SlotTurn, message: str) -> SlotDecision:
    return turn.decide("Pending", message, 0, [
        ACCEPTED, ConditionUpdate("Fits", None, "VramUnknown", message),
        ConditionUpdate("Ready", False, "VramUnknown", message)])


def _unschedulable(turn: SlotTurn, spec: ModelSlotSpec, pods: SlotPods, message: str
                   ) -> SlotDecision:
    """A slot that fits no GPU of the cluster."""
    if turn.slot.status.phase != "Unschedulable":
        turn.event("Warning", "Unschedulable", f"{spec.alias} {message}")
    return turn.decide("Unloading" if pods.all else "Unschedulable", message, 0, [
        ACCEPTED, ConditionUpdate("Fits", False, "TooLarge", message),
        ConditionUpdate("Resident", False, "Unschedulable", message),
        ConditionUpdate("Ready", False, "Unschedulable", message)])


# ------------------------------------------------------------------ not placed


def _not_placed(turn: SlotTurn, spec: ModelSlotSpec, pods: SlotPods, fits: ConditionUpdate,
                gpus: dict[str, Gpu], findings: SlotFindings) -> SlotDecision:
    """A slot without a place drains, unloads, waits for room or stands by."""
    slot, updates = turn.slot, turn.updates
    key = slot.key
    updates.update(loading_since=None, evicting=None, swap_progress=None)
    still_held = findings.holdings.slots.get(key) if pods.all else None
    drain = drain_verdict(key, spec, slot.status, pods.current, turn.view, turn.now)
    if drain is not None and drain.state in ("Draining", "Deferred"):
        return draining_decision(turn, spec, drain, [ACCEPTED, fits], still_held, gpus)
    updates["draining_since"] = None
    phase: Phase
    waiting = findings.placement.slot_waiting.get(key)
    if pods.all:
        phase = "Unloading"
        reason = _unloading(turn, spec, drain, findings.departures.slot_taken_by.get(key),
                            key in findings.demand.asleep)
    elif waiting is not None:
        phase, reason = "Pending", waiting
    else:
        phase = "Standby"
        reason = (findings.placement.slot_standby.get(key) or findings.demand.asleep.get(key)
                  or ("idle: loads on the next request" if spec.activation == "OnDemand"
                      else "standby"))
    # While its pods exist the slot keeps its GPU on record: the next plan
    # counts their VRAM there, not on whichever device comes first.
    decision = turn.decide(phase, reason, 0, [
        ACCEPTED, fits,
        *turn.memo.conditions((phase, reason), _not_placed_conditions, phase, reason)],
        node=gpus[still_held[0]].node.name if still_held else None,
        gpu=gpu_label(still_held) if still_held else None,
        cut_requests=drain.busy if drain and drain.state == "Cut" else 0,
        started_waiting=phase == "Pending" and slot.status.phase != "Pending")
    if drain is not None and drain.state == "Drained":
        # Saved before the scale-down this pass writes: nothing runs in it now.
        decision.cache_save = prompt_cache.save_request(
            slot.namespace, slot.name, spec, turn.prompt_cache, turn.view.settings,
            slot.status.node)
    return decision


_SWAPPING_WHEN_NOT_PLACED = {"Unloading": (True, "Unloading"), "Pending": (False, "Waiting"),
                             "Standby": (False, "Idle")}


def _not_placed_conditions(phase: Phase, reason: str) -> tuple[ConditionUpdate, ...]:
    """Swapping, Resident and Ready of a slot without a place."""
    swapping, why = _SWAPPING_WHEN_NOT_PLACED[phase]
    return (ConditionUpdate("Swapping", swapping, why, reason),
            ConditionUpdate("Resident", False, phase, reason),
            ConditionUpdate("Ready", False, phase, reason))


def _unloading(turn: SlotTurn, spec: ModelSlotSpec, drain: DrainVerdict | None,
               taker: str | None, asleep: bool) -> str:
    """The reason of a slot whose pods go away, with its Events."""
    previous = turn.slot.status
    purpose = f" for {taker}" if taker else " to sleep" if asleep else ""
    reason = f"unloading{purpose}"
    if previous.phase != "Unloading":
        drained = ""
        if drain is not None and previous.draining_since is not None:
            drained = (f" after draining for "
                       f"{(turn.now - previous.draining_since).total_seconds():.1f}s")
        turn.event("Normal", "Unloading", f"Unloading {spec.alias}{purpose}{drained}")
    if drain is not None and drain.state == "Cut":
        turn.event("Warning", "DrainCut", f"Unloading {spec.alias} with {drain.busy} "
                                          f"request(s) still running: {drain.reason}")
    return reason


# ------------------------------------------------------------------ placed


class _Start(NamedTuple):
    replicas: int
    phase: Phase
    reason: str
    waiting_on: tuple[str, ...] = ()
    """Slots whose pods the load waits for."""


def _placed(turn: SlotTurn, spec: ModelSlotSpec, vram: int, pods: SlotPods,
            fits: ConditionUpdate, placed: list[str], gpus: dict[str, Gpu],
            deployment: DeploymentInfo | None, findings: SlotFindings) -> SlotDecision:
    """A slot wanted on ``placed``: it starts when what exists leaves room, loads,
    and serves once the evaluation gate lets it."""
    slot, previous, now = turn.slot, turn.slot.status, turn.now
    turn.updates["draining_since"] = None
    if previous.drain_deferred_until is not None and now >= previous.drain_deferred_until:
        turn.updates["drain_deferred_until"] = None
    # The status records where the slot's pods hold memory, which the next plan
    # counts them on: while pods placed elsewhere still exist (Terminating, or of an
    # older template) that is their GPU, not the new place, or a newcomer could start
    # beside them on a GPU that looks free.
    old_place = findings.holdings.slots.get(slot.key)
    recorded = (old_place if pods.all and old_place and set(old_place) != set(placed)
                else placed)
    where = _Where(gpus[recorded[0]].node.name, gpu_label(recorded))
    replicas, phase, reason, waiting_on = _start(turn, spec, vram, pods, placed, gpus,
                                                 deployment, findings.holdings)
    if turn.gate is not None:
        phase, reason = turn.gate.live(phase, reason, now, previous.phase)
    if phase == "Loading":
        conditions = _loading(turn, spec, pods, replicas, reason, placed, where,
                              findings.departures)
        return turn.decide(phase, reason, replicas, [ACCEPTED, fits, *conditions],
                           gpu=where.gpu, node=where.node, vram=vram, waiting_on=waiting_on)
    resident = _resident(turn, spec, pods, replicas, phase, reason, where)
    decision = turn.decide(phase, reason, replicas, [ACCEPTED, fits, *resident.conditions],
                           gpu=where.gpu, node=where.node, vram=vram, waiting_on=waiting_on,
                           completed_swap=resident.completed_swap,
                           phases_recorded=resident.phases_recorded)
    if phase == "Ready" and (previous.loading_since is not None
                             or previous.phase == "Evaluating"):
        # A server just loaded: its caches come back before the router sees it Ready.
        decision.cache_restore = prompt_cache.restore_request(
            slot.namespace, slot.name, spec, turn.prompt_cache, turn.view.settings,
            where.node)
    return decision


class _Where(NamedTuple):
    node: str
    gpu: str
    """The GPUs on record, as ``status.gpu`` names them."""


def _start(turn: SlotTurn, spec: ModelSlotSpec, vram: int, pods: SlotPods,
           placed: list[str], gpus: dict[str, Gpu], deployment: DeploymentInfo | None,
           holdings: Holdings) -> _Start:
    """Replicas, phase and reason of a placed slot: it starts only when everything
    that exists still fits beside it (break-before-make)."""
    slot = turn.slot
    mutex_bytes = turn.view.settings.mutex_bytes
    own_held = sum(p.vram_bytes for p in pods.all)
    asked = deployment.replicas * deployment.vram_bytes if deployment else 0
    already_started = bool(pods.current) or (
        deployment is not None and deployment.replicas > 0
        and deployment.template_hash == pods.template_hash)
    if pods.stale:
        return _Start(0, "Loading", "model changed: unloading the previous model first")
    if already_started:
        if any(p.ready for p in pods.current):
            return _Start(1, "Ready", "serving")
        return _Start(1, "Loading", pods.fetch_reason or "loading the model")
    per_device = vram // spec.gpus
    own_share = max(own_held, asked) // len(placed) if slot.key in holdings.slots else 0
    blocked = start_blockers(gpus, placed, per_device, slot.name, own_share, mutex_bytes)
    if blocked or any(p.terminating for p in pods.all):
        holders = sorted({h for g in blocked for h in g.holders if h != slot.name})
        held_text = gib(max(g.held for g in blocked)) if blocked else gib(own_held)
        return _Start(0, "Loading", f"waiting for {', '.join(holders) or 'its old pods'} to "
                                    f"unload ({held_text} still held)", tuple(holders))
    start(gpus, placed, per_device, slot.name, mutex_bytes)
    return _Start(1, "Loading", "loading the model")


def _loading(turn: SlotTurn, spec: ModelSlotSpec, pods: SlotPods, replicas: int, reason: str,
             placed: list[str], where: _Where, departures: Departures
             ) -> tuple[ConditionUpdate, ...]:
    """Marks the load's progress; its first pass names who it evicts."""
    previous, now = turn.slot.status, turn.now
    turn.updates["swap_progress"] = swaps.progress(previous, pods.current, replicas, now)
    if previous.loading_since is None:
        evicted = departures.evicted_from(placed, spec.alias)
        turn.updates.update(loading_since=now, evicting=evicted or None)
        turn.event("Normal", "SwapStarted", f"Loading {spec.alias} on {where.node}"
                   + (f", evicting {', '.join(evicted)}" if evicted else ""))
    return turn.memo.conditions(("Loading", reason, where.gpu), _loading_conditions, reason,
                                where.gpu)


def _loading_conditions(reason: str, gpu: str) -> tuple[ConditionUpdate, ...]:
    return (ConditionUpdate("Swapping", True, "Loading", reason),
            ConditionUpdate("Resident", True, "Placed", f"placed on {gpu}"),
            ConditionUpdate("Ready", False, "Loading", reason))


class _Resident(NamedTuple):
    conditions: list[ConditionUpdate]
    completed_swap: CompletedSwap | None
    phases_recorded: SwapPhases | None
    """What ``last_swap_phases`` becomes in this pass, if anything."""


def _resident(turn: SlotTurn, spec: ModelSlotSpec, pods: SlotPods, replicas: int,
              phase: Phase, reason: str, where: _Where) -> _Resident:
    """A loaded slot (Ready, Evaluating or Failed): a load that just finished is
    recorded with its phases, and what the GPU agent measured is kept."""
    previous, now, updates = turn.slot.status, turn.now, turn.updates
    completed = None
    if previous.loading_since is not None:
        completed = _complete_swap(turn, spec, pods, replicas, previous.loading_since, where)
    restored = swaps.route_restored(previous, turn.view, now)
    if restored is not None:
        updates["last_swap_phases"] = restored
    if previous.phase not in (phase, "Ready", "Draining") or previous.ready_since is None:
        updates["ready_since"] = now
    updates.update(_measurement(spec, previous, turn.view, turn.slot.key, pods.current))
    updates.update(loading_since=None, evicting=None)
    ready = (ConditionUpdate("Ready", True, "Serving", f"serving {children.served_name(spec)}")
             if phase == "Ready" else ConditionUpdate("Ready", False, phase, reason))
    return _Resident([ConditionUpdate("Swapping", False, "Resident", "loaded"),
                      ConditionUpdate("Resident", True, "Placed", f"placed on {where.gpu}"),
                      ready],
                     completed, restored or (completed.phases if completed else None))


def _complete_swap(turn: SlotTurn, spec: ModelSlotSpec, pods: SlotPods, replicas: int,
                   loading_since: datetime.datetime, where: _Where) -> CompletedSwap:
    """Records a load that reached Ready: its duration, phases and Event."""
    previous, now = turn.slot.status, turn.now
    # A clock set back during the load (by hand, by NTP) must not make a swap look
    # negative: the wait predictions and idle times build on these figures.
    seconds = max((now - loading_since).total_seconds(), 0.0)
    evicted = previous.evicting or []
    phases = swaps.swap_phases(loading_since,
                               swaps.progress(previous, pods.current, replicas, now), now,
                               bool(evicted))
    turn.updates.update(last_swap_seconds=round(seconds, 2), swaps=(previous.swaps or 0) + 1,
                        last_swap_phases=phases, swap_progress=None,
                        recent_swap_seconds=swaps.remember_swap(previous.recent_swap_seconds,
                                                                seconds))
    turn.event("Normal", "Swapped", f"Swapped {spec.alias} in on {where.node} in {seconds:.1f}s"
               + (f", evicting {', '.join(evicted)}" if evicted else "")
               + f" ({swaps.describe_phases(phases)})")
    return CompletedSwap(round(seconds, 2), phases)


# ------------------------------------------------------------------ helpers


def _measurement(spec: ModelSlotSpec, previous: ModelSlotStatus, view: View,
                 key: Key, current: list[PodInfo]) -> dict[str, Any]:
    """The status fields recording what the GPU agent sees a Ready slot's pods hold.
    The largest figure seen for the same llama-server is kept: memory only grows
    after the load, and a record that only grows stops rewriting the status."""
    seen = view.measured_vram.get(key)
    if not seen or not any(p.ready for p in current):
        return {}
    fingerprint = model_vram.server_fingerprint(spec, view.settings)
    earlier = model_vram.measured_bytes(spec, previous, view.settings) or 0
    return {"measured_vram": model_vram.quantity(max(seen, earlier)),
            "measured_vram_for": fingerprint}


def fetch_status(pods: list[PodInfo]) -> tuple[ModelFetchProgress | None, str | None]:
    """The model download of the slot's pod, for its status, and a reason naming it."""
    fetching = next((p.fetch for p in pods if p.fetch is not None), None)
    if fetching is None:
        return None, None
    progress = ModelFetchProgress(state=fetching.state, bytes=fetching.bytes,
                                  total_bytes=fetching.total_bytes,
                                  percent=fetching.percent, message=fetching.message or None)
    if fetching.state == "Failed":
        return progress, f"fetching the model failed (the kubelet retries): {fetching.message}"
    if fetching.bytes is None:
        return progress, "fetching the model"
    done = (f"{gib(fetching.bytes)} of {gib(fetching.total_bytes)} ({fetching.percent}%)"
            if fetching.total_bytes else gib(fetching.bytes))
    return progress, f"fetching the model: {done}"


def _readiness(phase: Phase, reason: str) -> ConditionUpdate:
    return ConditionUpdate("Ready", phase == "Ready",
                           "Serving" if phase == "Ready" else phase, reason)


def _phase_from_pods(wanted: bool, pods: SlotPods, where: str) -> tuple[Phase, str]:
    if not wanted:
        return ("Unloading", "unloading") if pods.all else ("Standby", "standby")
    if any(p.ready for p in pods.current):
        return "Ready", f"serving {where}"
    return "Loading", f"loading {where}"
