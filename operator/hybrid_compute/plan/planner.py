"""The pure decision: which consumers hold which GPU, and what every object says.

``plan(view, now)`` reads a :class:`~hybrid_compute.plan.view.View` and returns a
:class:`Plan`; it does no I/O, so the same view and clock always give the same
plan. The rules are the seed's swap strategy and GPU scheduling:

* Always slots are resident when they fit; the default slot holds the GPU when no
  one else claims it; an OnDemand slot is wanted while requests keep coming
  (its last request is younger than ``idleTimeout``) (:mod:`.demand`).
* Consumers are placed by rank: slots pinned by their minimum residency and
  running non-preemptible workloads; then Always slots, requested slots and a
  default slot in use; then GpuWorkloads by priority (:mod:`.workloads`); then
  the idle default slot. Two consumers above the mutex size never share a GPU
  (:mod:`.placement`).
* Changes are break-before-make. VRAM is counted from what exists: every pod
  (Terminating ones too) and every child still asking for pods (:mod:`.holdings`).
  A consumer is started only when that count plus its own VRAM fits the GPU, so
  the budget holds at every instant, across operator restarts too (:mod:`.slots`).
"""

from __future__ import annotations

import datetime
import gc

from hybrid_compute.plan import conflicts, reservations, routing, workloads
from hybrid_compute.plan.demand import last_request, slot_demand
from hybrid_compute.plan.holdings import Key, group_owned, record_holdings
from hybrid_compute.plan.ledger import build_gpus, summarize
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.outputs import EventIntent, GpuSummary, Plan, SlotDecision
from hybrid_compute.plan.placement import departures, place
from hybrid_compute.plan.routing import PolicyDecision
from hybrid_compute.plan.slots import SlotFindings, decide_slots
from hybrid_compute.plan.view import View
from hybrid_compute.plan.warm_standby import warm_lists
from hybrid_compute.plan.workloads import WorkloadDecision, WorkloadFindings, WorkloadVerdicts

__all__ = ["EventIntent", "GpuSummary", "Plan", "PolicyDecision", "SlotDecision",
           "WorkloadDecision", "plan"]


def plan(view: View, now: datetime.datetime, memo: PlanMemo | None = None) -> Plan:
    """Decides residency, swaps, admission, children and statuses. ``memo`` carries
    rendered templates from one plan to the next; None plans without one.

    The garbage collector waits while it plans: a plan makes tens of thousands of
    objects on a large install, and its temporaries go by reference counting, so a
    collection in the middle only walks the plan being built (a fifth of the time
    with 10,000 objects). Whatever the plan leaves is collected afterwards."""
    memo = PlanMemo() if memo is None else memo
    if not gc.isenabled():
        return _plan(view, now, memo)
    gc.disable()
    try:
        return _plan(view, now, memo)
    finally:
        gc.enable()


def _plan(view: View, now: datetime.datetime, memo: PlanMemo) -> Plan:
    view = memo.known_settings(view)
    # 0. Objects that conflict with an earlier one are refused; the rest of the plan
    #    does not see the refused slots (:mod:`.conflicts`).
    verdicts = conflicts.judge_view(view, memo)
    view = verdicts.accepted(view)
    mutex_bytes = view.settings.mutex_bytes
    wakeups: list[datetime.datetime] = [now + view.settings.idle_check_interval]
    # 1. What exists, and what each GPU holds right now.
    gpus = build_gpus(view)
    owned = group_owned(view)
    holdings = record_holdings(view, owned, gpus, mutex_bytes)
    holdings.workloads.update(reservations.record_holdings(view, gpus, mutex_bytes))
    # 2. Who wants a GPU, in what order; the evaluation gate picks the model each
    #    slot's pods run, before it is sized.
    quiet = memo.quiet.find(view, owned, now)
    demand = slot_demand(view, owned, holdings, gpus, memo, now, wakeups, quiet)
    workload_verdicts = WorkloadVerdicts()
    candidates = demand.candidates + workloads.candidates(
        view.workloads, owned.workload_children, holdings.workloads, gpus, demand.busy, now,
        workload_verdicts, wakeups)
    # 3. Each in rank order takes a place where it fits, or waits.
    placement = place(candidates, gpus, mutex_bytes)
    # 4. Who gives way to whom, for reasons and Events.
    leaving = departures(view, candidates, placement, holdings)
    workload_verdicts.queued.update(placement.workload_waiting)
    workload_verdicts.taken_by.update(leaving.workload_taken_by)
    # 5. Slots turn their place into replicas, respecting what is still held.
    made: dict[Key, tuple[SlotDecision, list[EventIntent]]] = {}
    slot_decisions, events = decide_slots(
        view, now, memo, gpus,
        SlotFindings(owned, holdings, demand, placement, leaving, quiet), wakeups, made)
    memo.quiet.remember(view, owned, holdings, demand.idle, quiet, demand.vram,
                        demand.requests, memo.is_settled, made, memo.renders_timeless, now)
    # 6. Workloads after slots: a slot starting now counts against them.
    workload_decisions, workload_events = workloads.decide_all(
        view, now, memo, gpus, owned,
        WorkloadFindings(placement.workloads, holdings.workloads, workload_verdicts, leaving))
    events += workload_events
    # 7. Route policies, from the slots' readiness.
    policies = routing.plan_policies(
        view, [routing.SlotRouting(d.namespace, d.alias, d.ready) for d in slot_decisions]
        if view.policies else [], now, verdicts.policies)
    for policy in policies:
        events += policy.events
        if policy.recheck_at:
            wakeups.append(policy.recheck_at)
    refused, refused_events = conflicts.refused_decisions(verdicts, owned.deployments, view,
                                                          memo, now)
    events += refused_events
    foreign = reservations.foreign_uses(view)
    events += reservations.foreign_events(view, foreign)
    requests = demand.requests
    # The slot decisions come in key order: only refused ones need sorting in.
    return Plan(tuple(sorted([*slot_decisions, *refused], key=lambda d: d.slot.key)
                      if refused else slot_decisions),
                summarize(gpus), tuple(events), min(wakeups),
                tuple(workload_decisions), tuple(policies),
                warm_lists(view, slot_decisions,
                           lambda s: requests[s.key] if s.key in requests
                           else last_request(s, view), now, memo),
                foreign, now)
