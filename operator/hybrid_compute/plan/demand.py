"""Demand: how long requests keep a slot wanted, and so which slots want a GPU in
this plan and at what :class:`~.placement.Rank`.

An Always slot is resident when it fits; the default slot holds the GPU when no one
else claims it; an OnDemand slot is wanted while requests keep coming (its last
request is younger than ``idleTimeout``); a slot within its minimum residency
keeps its place.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hybrid_compute.api.common import parse_duration
from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.plan import sleep, swaps
from hybrid_compute.plan.holdings import Holdings, Key, Owned
from hybrid_compute.plan.idle import idle_timeout
from hybrid_compute.plan.ledger import Gpu, fit_problem, located_gpus
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.model_vram import VramChoice, vram_choice
from hybrid_compute.plan.placement import Candidate, Rank, Tier
from hybrid_compute.plan.quiet import QuietSlot
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import SlotInfo, View


class _MaybeServing(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def terminating(self) -> bool: ...


def any_serving(pods: Sequence[_MaybeServing]) -> bool:
    """A pod that answers requests: Ready and not on its way out."""
    return any(p.ready and not p.terminating for p in pods)


def last_request(slot: SlotInfo, view: View) -> datetime.datetime | None:
    """The newest demand seen for the slot: router signal, annotation, stored status."""
    assert slot.spec is not None
    latest = slot.status.last_request_time
    for other in (slot.requested_at, view.demands.get(slot.spec.alias)):
        # The first of equal times wins, as max() keeps it.
        if other is not None and (latest is None or other > latest):
            latest = other
    return latest


def demanded_until(requested: datetime.datetime, idle: datetime.timedelta, slot: SlotInfo,
                   serving: bool, settings: PlanSettings, now: datetime.datetime
                   ) -> datetime.datetime:
    """Until when a request keeps its slot wanted. The idle clock runs while the slot
    serves: a request that came while the slot was still swapping in counts from the
    moment it became Ready (now, when its pod has just turned Ready or is still being
    evaluated), and while no pod is Ready the request also covers the swap itself
    (twice its typical time), or a short idleTimeout would expire during the drain
    or the load and give the GPU back before anything was served."""
    since = slot.status.ready_since
    typical = swaps.typical_swap(slot.status.recent_swap_seconds,
                                 settings.default_swap_time.total_seconds())
    covered = requested + 2 * datetime.timedelta(seconds=typical) + idle
    if serving:
        coming_in = slot.status.phase in ("Pending", "Standby", "Loading", "Evaluating")
        if coming_in or since is None:
            # Just Ready (or being evaluated): the clock starts now, unless the request
            # had already given up on the swap.
            return now + idle if now < covered else covered
        return max(requested, since) + idle
    if since is not None and since >= requested:
        return since + idle  # it served after the request: the idle clock ran from then
    ended = slot.status.served_until
    if since is not None and ended is not None and since <= requested <= ended:
        return requested + idle  # the slot was serving when the request came
    return covered


def cpu_demanded(slot: SlotInfo, spec: ModelSlotSpec, view: View, serving: bool,
                 now: datetime.datetime) -> bool:
    """A CPU slot with an idle timeout is wanted while its requests keep it so."""
    requested = last_request(slot, view)
    idle = idle_timeout(spec, slot.status, view.settings)
    if requested is None or idle is None:
        return False
    return now < demanded_until(requested, idle, slot, serving, view.settings, now)


def min_residency(spec: ModelSlotSpec, view: View) -> datetime.timedelta:
    if spec.min_residency:
        return parse_duration(spec.min_residency)
    return view.settings.min_residency


@dataclass
class SlotDemand:
    """What the candidate pass found per GPU slot, which the slot decisions read."""

    candidates: list[Candidate] = field(default_factory=list)
    unschedulable: dict[Key, str] = field(default_factory=dict)
    vram: dict[Key, VramChoice] = field(default_factory=dict)
    """The VRAM figure of every GPU slot; ``bytes`` None where it is not known."""
    requests: dict[Key, datetime.datetime | None] = field(default_factory=dict)
    """The newest request per GPU slot."""
    busy: list[str] = field(default_factory=list)
    """Aliases of OnDemand slots in use, which ``onlyWhenGpuIdle`` workloads wait for."""
    asleep: dict[Key, str] = field(default_factory=dict)
    """Idle default slots that sleep (:mod:`.sleep`), and why."""
    idle: list[Key] = field(default_factory=list)
    """OnDemand slots that nothing keeps wanted and that have no pods (:mod:`.quiet`)."""


def slot_demand(view: View, owned: Owned, holdings: Holdings,
                gpus: dict[str, Gpu], memo: PlanMemo, now: datetime.datetime,
                wakeups: list[datetime.datetime],
                quiet: Mapping[Key, QuietSlot] | None = None) -> SlotDemand:
    """The GPU slots that want a GPU now, ranked; the VRAM and demand of every one.
    A ``quiet`` slot is no candidate, with the VRAM and request it had."""
    found = SlotDemand()
    # Many slots share a size, and whether one fits reads only the GPUs' sizes.
    problems: dict[tuple[int, int], str | None] = {}
    quiet = quiet or {}
    for slot in view.slots:
        if slot.spec is None or slot.spec.device != "gpu":
            continue
        kept = quiet.get(slot.key)
        if kept is not None:
            found.vram[slot.key] = kept.choice
            found.requests[slot.key] = kept.requested
            continue
        # The evaluation gate picks the model the slot's pods run before it is sized.
        spec = memo.gate_served(slot, view.evaluations.get(slot.key), now)
        choice = found.vram[slot.key] = vram_choice(slot, spec, view,
                                                    owned.deployments.get(slot.key), memo)
        if choice.bytes is None:
            continue
        size = (spec.gpus, choice.bytes)
        if size not in problems:
            problems[size] = fit_problem(spec.gpus, choice.bytes, gpus)
        problem = problems[size]
        if problem:
            found.unschedulable[slot.key] = problem
            continue
        candidate = _slot_candidate(slot, spec, choice.bytes, view, owned, holdings, gpus,
                                    now, wakeups, found)
        if candidate is not None:
            found.candidates.append(candidate)
    return found


def _slot_candidate(slot: SlotInfo, spec: ModelSlotSpec, vram: int, view: View,
                    owned: Owned, holdings: Holdings, gpus: dict[str, Gpu],
                    now: datetime.datetime, wakeups: list[datetime.datetime],
                    found: SlotDemand) -> Candidate | None:
    pods = owned.slot_pods.get(slot.key, [])
    requested = found.requests[slot.key] = last_request(slot, view)
    if not pods and requested is None and spec.activation == "OnDemand" and not spec.default:
        found.idle.append(slot.key)
        return None  # never asked for and holding nothing: most slots of a large install
    ready_pod = bool(pods) and any_serving(pods)
    pinned = _pinned(slot, spec, view, ready_pod, now, wakeups)
    in_use = _in_use(slot, spec, view, requested, ready_pod, now, wakeups)
    if spec.activation == "OnDemand" and (in_use or pods):
        found.busy.append(spec.alias)
    if pinned:
        tier = Tier.PINNED  # minimum residency
    elif (spec.activation == "Always" and not spec.default) or in_use:
        tier = Tier.WANTED  # always resident, or serving requests
    elif spec.default:
        rest = _sleep(slot, spec, view, requested, ready_pod, now)
        if rest.next_change is not None:
            wakeups.append(rest.next_change)
        if rest.asleep:
            found.asleep[slot.key] = rest.reason
            return None
        tier = Tier.IDLE_DEFAULT  # the idle default slot; workloads come before it
    else:
        if not pods:  # an OnDemand slot whose requests no longer keep it wanted
            found.idle.append(slot.key)
        return None
    current = located_gpus(gpus, slot.status.gpu, {p.node for p in pods if p.node},
                           spec.gpus)
    resident_now = bool(pods) or slot.key in holdings.slots
    rank = Rank(tier, -spec.priority, 0 if resident_now else 1, requested or now,
                slot.namespace, slot.name)
    return Candidate("ModelSlot", slot.key, spec.alias, vram, spec.gpus, rank, current,
                     is_default=spec.default,
                     running=bool(current) and any(not p.terminating for p in pods))


def _pinned(slot: SlotInfo, spec: ModelSlotSpec, view: View, ready_pod: bool,
            now: datetime.datetime, wakeups: list[datetime.datetime]) -> bool:
    """Within its minimum residency, or serving on after a drain that timed out."""
    ready_since = slot.status.ready_since
    pinned_until = None
    if ready_pod and ready_since:
        pinned_until = ready_since + min_residency(spec, view)
    # A pin from the future (the clock was set back) does not hold.
    pinned = (pinned_until is not None and now < pinned_until
              and ready_since is not None and ready_since <= now)
    if pinned and pinned_until:
        wakeups.append(pinned_until)
    # A drain that timed out with requests in flight keeps the slot for a while.
    deferred_until = slot.status.drain_deferred_until
    if ready_pod and deferred_until is not None and now < deferred_until:
        pinned = True
        wakeups.append(deferred_until)
    return pinned


def _idle(slot: SlotInfo, spec: ModelSlotSpec, view: View) -> datetime.timedelta:
    """How long a request keeps an OnDemand or default slot in use."""
    return (idle_timeout(spec, slot.status, view.settings) or sleep.sleep_after(spec)
            or view.settings.default_slot_busy)


def _sleep(slot: SlotInfo, spec: ModelSlotSpec, view: View,
           requested: datetime.datetime | None, ready_pod: bool, now: datetime.datetime
           ) -> sleep.Sleep:
    """The sleep of an idle default slot, awake for ``sleepAfter`` after a request."""
    if not sleep.sleeps(spec):
        return sleep.AWAKE
    awake_until = None
    if requested is not None:
        awake_for = sleep.sleep_after(spec) or _idle(slot, spec, view)
        awake_until = demanded_until(requested, awake_for, slot, ready_pod, view.settings,
                                     now)
    return sleep.default_sleep(slot, spec, awake_until, now)


def _in_use(slot: SlotInfo, spec: ModelSlotSpec, view: View,
            requested: datetime.datetime | None, ready_pod: bool, now: datetime.datetime,
            wakeups: list[datetime.datetime]) -> bool:
    """An OnDemand or default slot whose requests keep it wanted."""
    if requested is None or not (spec.activation == "OnDemand" or spec.default):
        return False
    idle = _idle(slot, spec, view)
    in_use_until = demanded_until(requested, idle, slot, ready_pod, view.settings, now)
    if now < in_use_until:
        wakeups.append(in_use_until)
        return True
    return False

