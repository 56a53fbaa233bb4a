"""The pure decision: which consumers hold which GPU, and what every object says.

``plan(view, now)`` reads a :class:`~hybrid_compute.plan.view.View` and returns a
:class:`Plan`; it does no I/O, so the same view and clock always give the same
plan. The rules are the seed's swap strategy and GPU scheduling:

* Always slots are resident when they fit; the default slot holds the GPU when no
  one else claims it; an OnDemand slot is wanted while requests keep coming
  (its last request is younger than ``idleTimeout``).
* Consumers are placed by rank: slots pinned by their minimum residency and
  running non-preemptible workloads; then Always slots, requested slots and a
  default slot in use; then GpuWorkloads by priority (:mod:`.admission`); then
  the idle default slot. Two consumers above the mutex size never share a GPU.
* Changes are break-before-make. VRAM is counted from what exists: every pod
  (Terminating ones too) and every child still asking for pods. A consumer is
  started only when that count plus its own VRAM fits the GPU, so the budget
  holds at every instant, across operator restarts too.
"""

from __future__ import annotations

import datetime
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from hybrid_compute.api.common import parse_duration
from hybrid_compute.api.modelslot import (
    ModelFetchProgress,
    ModelSlotSpec,
    ModelSlotStatus,
    SwapPhases,
    SwapProgress,
)
from hybrid_compute.api.units import gib
from hybrid_compute.plan import evaluation, model_vram, routing, swap_wait, workloads
from hybrid_compute.plan.conditions import render_status
from hybrid_compute.plan.ledger import (
    Candidate,
    Gpu,
    build_gpus,
    choose_gpus,
    fit_problem,
    most_free,
    record_holding,
    reserve,
    start,
    start_blockers,
)
from hybrid_compute.plan.model_vram import VramChoice
from hybrid_compute.plan.outputs import ConditionUpdate, EventIntent, GpuSummary
from hybrid_compute.plan.routing import PolicyDecision
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import DeploymentInfo, PodInfo, SlotInfo, View
from hybrid_compute.plan.warm_standby import WarmFile, page_cache_status, warm_lists
from hybrid_compute.plan.workloads import WorkloadDecision, WorkloadVerdicts
from hybrid_compute.render import children

Phase = Literal["Pending", "Standby", "Loading", "Evaluating", "Ready", "Draining",
                "Unloading", "Unschedulable", "Failed"]

__all__ = ["EventIntent", "GpuSummary", "Plan", "PolicyDecision", "SlotDecision",
           "WorkloadDecision", "plan"]


@dataclass
class SlotDecision:
    """Everything act applies for one slot. The status and the children are
    rendered on first use, so planning many unchanged slots stays cheap."""

    slot: SlotInfo
    settings: PlanSettings
    now: datetime.datetime
    phase: Phase
    reason: str
    replicas: int
    gpu: str | None = None
    node: str | None = None
    vram: int | None = None
    template_vram: int | None = None
    """VRAM written into the pod template; None for a slot with no children."""
    pinned_node: str | None = None
    """Where an idle Deployment already points, kept so scaling to 0 and back does
    not roll a new ReplicaSet."""
    status_updates: dict[str, Any] = field(default_factory=dict)
    condition_updates: list[ConditionUpdate] = field(default_factory=list)
    served: ModelSlotSpec | None = None
    """The spec the pod template is rendered from when it is not the slot's: spec.model
    replaced by the previous model while the spec's is rejected (:mod:`.evaluation`)."""
    evaluate: evaluation.EvaluationRequest | None = None
    """An evaluation the runtime should run before the slot is routed to."""
    waiting_on: tuple[str, ...] = ()
    """Slots whose pods a load waits for: draining ones mark its drain phase."""
    cut_requests: int = 0
    """Requests still running when a timed-out drain unloaded the slot anyway."""

    @property
    def namespace(self) -> str:
        return self.slot.namespace

    @property
    def name(self) -> str:
        return self.slot.name

    @property
    def alias(self) -> str | None:
        return self.slot.spec.alias if self.slot.spec else None

    @property
    def fallback(self) -> str | None:
        return self.slot.spec.fallback if self.slot.spec else None

    @property
    def ready(self) -> bool:
        return self.phase == "Ready"

    @property
    def endpoint(self) -> str | None:
        spec = self.slot.spec
        if spec is None:
            return None
        return children.endpoint(self.namespace, self.name, spec.server.port,
                                 self.settings.endpoint_template)

    @cached_property
    def status(self) -> dict[str, Any]:
        """The whole status this plan wants on the slot."""
        return render_status(self.slot.status, self.condition_updates, self.slot.generation,
                             self.now, {
                                 "phase": self.phase,
                                 "reason": self.reason,
                                 "endpoint": self.endpoint,
                                 "gpu": self.gpu,
                                 "node": self.node,
                                 "vram": gib(self.vram) if self.vram else None,
                                 **self.status_updates,
                             })

    @cached_property
    def template(self) -> dict[str, Any] | None:
        if self.slot.spec is None or self.template_vram is None:
            return None
        return _template(self.slot, self.served or self.slot.spec, self.template_vram,
                         self.settings)

    @cached_property
    def deployment(self) -> dict[str, Any] | None:
        if self.template is None:
            return None
        node = self.node if self.gpu else self.pinned_node
        return children.deployment(self.namespace, self.name, self.slot.uid, self.template,
                                   self.replicas, node)

    @cached_property
    def service(self) -> dict[str, Any] | None:
        spec = self.slot.spec
        if spec is None:
            return None
        return children.service(self.namespace, self.name, self.slot.uid, spec.server.port)


@dataclass(frozen=True)
class Plan:
    slots: tuple[SlotDecision, ...]
    gpus: tuple[GpuSummary, ...]
    events: tuple[EventIntent, ...]
    next_wakeup: datetime.datetime | None
    workloads: tuple[WorkloadDecision, ...] = ()
    policies: tuple[PolicyDecision, ...] = ()
    warm: dict[str, tuple[WarmFile, ...]] = field(default_factory=dict)
    """GPU node -> the model files its agent keeps warm in the page cache, the most
    likely next load first (:mod:`hybrid_compute.plan.warm_standby`)."""

    def slot(self, namespace: str, name: str) -> SlotDecision:
        return next(s for s in self.slots if (s.namespace, s.name) == (namespace, name))

    def workload(self, namespace: str, name: str) -> WorkloadDecision:
        return next(w for w in self.workloads if (w.namespace, w.name) == (namespace, name))

    def by_alias(self, alias: str) -> list[SlotDecision]:
        return [s for s in self.slots if s.alias == alias]


# ------------------------------------------------------------------ helpers


def vram_choice(slot: SlotInfo, spec: ModelSlotSpec, view: View,
                deployment: DeploymentInfo | None) -> VramChoice:
    """The VRAM a GPU slot is planned with (:mod:`hybrid_compute.plan.model_vram`)."""
    running = None
    if (not spec.model.vram and deployment is not None and deployment.replicas > 0
            and deployment.vram_bytes > 0):
        started_with = _template(slot, spec, deployment.vram_bytes, view.settings)
        if children.template_hash(started_with) == deployment.template_hash:
            running = deployment.vram_bytes
    key = model_vram.model_file_key(spec, view.settings)
    header = view.model_headers.get(key) if key is not None else None
    return model_vram.choose(spec, slot.status, view.settings, header, running)


def _min_residency(spec: ModelSlotSpec, view: View) -> datetime.timedelta:
    if spec.min_residency:
        return parse_duration(spec.min_residency)
    return view.settings.min_residency


def last_request(slot: SlotInfo, view: View) -> datetime.datetime | None:
    """The newest demand seen for the slot: router signal, annotation, stored status."""
    assert slot.spec is not None
    candidates = [slot.status.last_request_time, slot.requested_at,
                  view.demands.get(slot.spec.alias)]
    known = [c for c in candidates if c is not None]
    return max(known) if known else None


@dataclass
class _Verdicts:
    """Per-slot findings of the placement pass that the per-slot decisions read."""

    unschedulable: dict[tuple[str, str], str]
    vram: dict[tuple[str, str], VramChoice]
    """The VRAM figure of every GPU slot; ``bytes`` None where it is not known."""
    requests: dict[tuple[str, str], datetime.datetime | None]
    """The newest request per GPU slot."""
    waiting: dict[tuple[str, str], str] = field(default_factory=dict)
    standby: dict[tuple[str, str], str] = field(default_factory=dict)
    evictions: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """GPU id -> aliases and workloads leaving it."""
    taken_by: dict[tuple[str, str], str] = field(default_factory=dict)
    """Evicted slot -> who takes its place."""


_TEMPLATES: dict[int, tuple[ModelSlotSpec, int, PlanSettings, str, dict[str, Any]]] = {}


def _template(slot: SlotInfo, spec: ModelSlotSpec, vram: int, settings: PlanSettings
              ) -> dict[str, Any]:
    """The slot's pod template, memoised per spec object: rendering and hashing it
    dominates the cost of planning an unchanged slot."""
    cached = _TEMPLATES.get(id(spec))
    if cached and cached[0] is spec and cached[1] == vram and cached[2] is settings \
            and cached[3] == slot.name:
        return cached[4]
    template = children.pod_template(slot.name, spec, vram, settings)
    if len(_TEMPLATES) > 8192:
        _TEMPLATES.clear()
    _TEMPLATES[id(spec)] = (spec, vram, settings, slot.name, template)
    return template


def _current_gpus(slot: SlotInfo, spec: ModelSlotSpec, nodes_of_pods: set[str],
                  gpus: dict[str, Gpu]) -> list[str]:
    """GPUs a slot's existing pods (or its last status) sit on."""
    recorded = [g for g in (slot.status.gpu or "").split(",") if g in gpus]
    if recorded and (not nodes_of_pods or gpus[recorded[0]].node.name in nodes_of_pods):
        return recorded
    for node_name in sorted(nodes_of_pods):
        ids = [g for g in gpus if gpus[g].node.name == node_name]
        if ids:
            return ids[: spec.gpus]
    return []


# --------------------------------------------------------------------- plan


def _held_gpus(gpus: dict[str, Gpu], recorded: str, nodes: set[str], gpu_count: int
               ) -> list[str]:
    """Where something that exists holds memory: its recorded GPUs, else the GPUs of
    the node its pods run on, else (not scheduled yet, no record) every GPU, so
    nothing else starts beside it."""
    placed = [g for g in recorded.split(",") if g in gpus
              and (not nodes or gpus[g].node.name in nodes)]
    if not placed and nodes:
        placed = [g for g in gpus if gpus[g].node.name in nodes][:gpu_count]
    return placed or list(gpus)


def plan(view: View, now: datetime.datetime) -> Plan:
    """Decides residency, swaps, admission, children and statuses."""
    settings = view.settings
    mutex = settings.mutex_bytes
    gpus = build_gpus(view)
    slot_pods: dict[tuple[str, str], list[PodInfo]] = defaultdict(list)
    workload_pods: dict[tuple[str, str], list[PodInfo]] = defaultdict(list)
    for pod in view.pods:
        group = slot_pods if pod.kind == "ModelSlot" else workload_pods
        group[(pod.namespace, pod.owner)].append(pod)
    deployments = {(d.namespace, d.owner): d for d in view.deployments}
    workload_children = {(c.namespace, c.owner): c for c in view.workload_children}
    wakeups: list[datetime.datetime] = []

    # What is held right now, per GPU. Pods of deleted objects count too.
    held_gpus: dict[tuple[str, str], list[str]] = {}
    slots_by_key = {slot.key: slot for slot in view.slots}
    for key in sorted(set(slots_by_key) | set(slot_pods) | set(deployments)):
        slot_info = slots_by_key.get(key)
        pods = slot_pods.get(key, [])
        deployment = deployments.get(key)
        asked = deployment.replicas * deployment.vram_bytes if deployment else 0
        held = max(sum(p.vram_bytes for p in pods), asked)
        if held == 0:
            continue
        gpu_count = max([p.gpus for p in pods] + [1])
        placed = _held_gpus(gpus, (slot_info.status.gpu or "") if slot_info else "",
                            {p.node for p in pods if p.node}, gpu_count)
        held_gpus[key] = placed
        record_holding(gpus, placed, held, gpu_count, key[1], mutex)
    workloads_by_key = {w.key: w for w in view.workloads}
    workload_held: dict[tuple[str, str], list[str]] = {}
    for key in sorted(set(workloads_by_key) | set(workload_pods) | set(workload_children)):
        workload = workloads_by_key.get(key)
        pods = workload_pods.get(key, [])
        child = workload_children.get(key)
        asked = child.vram_bytes if child and child.active else 0
        held = max(sum(p.vram_bytes for p in pods if p.gpus), asked)
        if held == 0:
            continue
        nodes = {p.node for p in pods if p.node} or ({child.node} if child and child.node
                                                     else set())
        placed = _held_gpus(gpus, (workload.status.gpu or "") if workload else "", nodes, 1)
        workload_held[key] = placed
        record_holding(gpus, placed, held, 1, key[1], mutex)

    # Who wants a GPU, in what order.
    # The evaluation gate picks the model each slot's pods run, before anything is sized.
    gates = {slot.key: evaluation.Gate.build(slot, view.evaluations.get(slot.key), now)
             for slot in view.slots if slot.spec is not None}
    candidates: list[Candidate] = []
    requests: dict[tuple[str, str], datetime.datetime | None] = {}
    unschedulable: dict[tuple[str, str], str] = {}
    vram_choices: dict[tuple[str, str], VramChoice] = {}
    busy: list[str] = []
    for slot in view.slots:
        spec = slot.spec
        if spec is None or spec.device != "gpu":
            continue
        spec = gates[slot.key].served
        choice = vram_choices[slot.key] = vram_choice(slot, spec, view,
                                                      deployments.get(slot.key))
        vram = choice.bytes
        if vram is None:
            continue
        problem = fit_problem(spec.gpus, vram, gpus)
        if problem:
            unschedulable[slot.key] = problem
            continue
        pods = slot_pods.get(slot.key, [])
        ready_pod = _any_serving(pods)
        pinned_until = None
        if ready_pod and slot.status.ready_since:
            pinned_until = slot.status.ready_since + _min_residency(spec, view)
        # A pin from the future (the clock was set back) does not hold.
        pinned = (pinned_until is not None and now < pinned_until
                  and slot.status.ready_since is not None and slot.status.ready_since <= now)
        if pinned and pinned_until:
            wakeups.append(pinned_until)
        # A drain that timed out with requests in flight keeps the slot for a while.
        deferred_until = slot.status.drain_deferred_until
        if ready_pod and deferred_until is not None and now < deferred_until:
            pinned = True
            wakeups.append(deferred_until)
        requested = last_request(slot, view)
        requests[slot.key] = requested
        in_use_until = None
        if requested is not None and (spec.activation == "OnDemand" or spec.default):
            idle = (parse_duration(spec.idle_timeout) if spec.idle_timeout
                    else settings.default_slot_busy)
            in_use_until = demanded_until(requested, idle, slot, ready_pod, settings, now)
        in_use = in_use_until is not None and now < in_use_until
        if in_use and in_use_until:
            wakeups.append(in_use_until)
        if spec.activation == "OnDemand" and (in_use or pods):
            busy.append(spec.alias)
        if pinned:
            tier = 0  # minimum residency
        elif (spec.activation == "Always" and not spec.default) or in_use:
            tier = 1  # always resident, or serving requests
        elif spec.default:
            tier = 3  # the idle default slot; workloads are tier 2
        else:
            continue
        current = _current_gpus(slot, spec, {p.node for p in pods if p.node}, gpus)
        resident_now = bool(pods) or slot.key in held_gpus
        rank = (tier, -spec.priority, 0 if resident_now else 1, requested or now,
                slot.namespace, slot.name)
        candidates.append(Candidate(
            "ModelSlot", slot.key, spec.alias, vram, spec.gpus, rank, current,
            is_default=spec.default,
            running=bool(current) and any(not p.terminating for p in pods)))
    workload_verdicts = WorkloadVerdicts()
    candidates += workloads.candidates(view.workloads, workload_children, workload_held,
                                       gpus, busy, now, workload_verdicts, wakeups,
                                       fit_problem)

    placement: dict[tuple[str, str], list[str]] = {}
    workload_placement: dict[tuple[str, str], list[str]] = {}
    verdicts = _Verdicts(unschedulable, vram_choices, requests)
    ready_nodes: dict[str, list[Gpu]] = defaultdict(list)
    for gpu in gpus.values():
        if gpu.node.ready:
            ready_nodes[gpu.node.name].append(gpu)
    by_node = [devices for _name, devices in sorted(ready_nodes.items())]
    free_bound, roomiest = most_free(gpus)
    for candidate in sorted(candidates, key=lambda c: c.rank):
        chosen = choose_gpus(candidate, gpus, by_node, mutex, free_bound)
        is_slot = candidate.kind == "ModelSlot"
        if chosen is None:
            where = candidate.current_gpus or list(gpus)
            if len(where) > 4:
                # Naming every resident of a large cluster helps nobody.
                where = [roomiest] if roomiest else where[:1]
            blockers = sorted({r for g in where for r in gpus[g].residents})
            large = candidate.vram // candidate.gpus > mutex and any(
                gpus[g].large_residents for g in where)
            foreign = max((gpus[g].foreign for g in where), default=0)
            if foreign:
                blockers.append(f"processes outside hybrid-compute ({gib(foreign)})")
            if not by_node:
                blockers = ["no GPU node is Ready"]
            holders = ", ".join(blockers) or "other consumers"
            if large:
                lock_holders = sorted({r for g in where for r in gpus[g].large_residents})
                message = (f"waiting for the GPU mutex: {', '.join(lock_holders)} already "
                           f"uses more than {gib(mutex)}")
            else:
                message = f"waiting for room: {gib(candidate.vram)} needed, held by {holders}"
            if not is_slot:
                workload_verdicts.queued[candidate.key] = message
            elif candidate.is_default and candidate.rank[0] != 0:
                verdicts.standby[candidate.key] = f"standby: the GPU is taken by {holders}"
            else:
                verdicts.waiting[candidate.key] = message
            continue
        (placement if is_slot else workload_placement)[candidate.key] = chosen
        reserve(gpus, chosen, candidate, mutex)
        if any(gpus[g].free_for_plan + candidate.vram // candidate.gpus >= free_bound
               for g in chosen):
            free_bound, roomiest = most_free(gpus)

    # Who gives way to whom, for reasons and Events.
    newcomers: dict[str, list[str]] = defaultdict(list)
    for candidate in candidates:
        target = (placement if candidate.kind == "ModelSlot"
                  else workload_placement).get(candidate.key)
        already = (held_gpus if candidate.kind == "ModelSlot"
                   else workload_held).get(candidate.key)
        if target and already != target:
            for gpu_id in target:
                newcomers[gpu_id].append(candidate.label)
    for slot in view.slots:
        if slot.key in held_gpus and slot.key not in placement and slot.spec:
            for gpu_id in held_gpus[slot.key]:
                verdicts.evictions[gpu_id].append(slot.spec.alias)
                if newcomers.get(gpu_id):
                    verdicts.taken_by[slot.key] = ", ".join(sorted(newcomers[gpu_id]))
    for key, held_on in workload_held.items():
        if key not in workload_placement:
            for gpu_id in held_on:
                verdicts.evictions[gpu_id].append(key[1])
                if newcomers.get(gpu_id):
                    workload_verdicts.taken_by[key] = ", ".join(sorted(newcomers[gpu_id]))

    # Turn placement into replicas, respecting what is still held (break-before-make).
    # Workloads are decided after slots: a slot starting now counts against them.
    decisions: list[SlotDecision] = []
    events: list[EventIntent] = []
    for slot in sorted(view.slots, key=lambda s: s.key):
        decision, new_events = _decide_slot(
            slot, view, now, gpus, placement, held_gpus, slot_pods.get(slot.key, []),
            deployments.get(slot.key), verdicts, gates.get(slot.key))
        decisions.append(decision)
        decision.status_updates["page_cache"] = page_cache_status(
            view, slot, decision.node or decision.pinned_node)
        events += new_events
        if decision.phase in ("Loading", "Unloading"):
            wakeups.append(now + datetime.timedelta(seconds=5))
        elif decision.phase == "Draining":
            wakeups.append(now + DRAIN_POLL)
        elif _route_restore_pending(decision, view, now):
            wakeups.append(now + ROUTE_RESTORE_POLL)
    _mark_drained(decisions, now)
    workload_decisions: list[WorkloadDecision] = []
    for workload in sorted(view.workloads, key=lambda w: w.key):
        workload_decision, new_events = workloads.decide(
            workload, settings, now, gpus, workload_placement, workload_held,
            workload_pods.get(workload.key, []), workload_children.get(workload.key),
            workload_verdicts)
        workload_decisions.append(workload_decision)
        events += new_events

    policies = routing.plan_policies(
        view, [routing.SlotRouting(d.namespace, d.alias, d.ready) for d in decisions], now)
    for policy in policies:
        events += policy.events
        if policy.recheck_at:
            wakeups.append(policy.recheck_at)

    summaries = tuple(
        GpuSummary(g.id, g.capacity, g.reserved, g.held, tuple(g.residents))
        for g in gpus.values())
    wakeups.append(now + settings.idle_check_interval)
    return Plan(tuple(decisions), summaries, tuple(events), min(wakeups),
                tuple(workload_decisions), tuple(policies),
                warm_lists(view, decisions, lambda s: last_request(s, view), now))


def _decide_slot(
    slot: SlotInfo,
    view: View,
    now: datetime.datetime,
    gpus: dict[str, Gpu],
    placement: dict[tuple[str, str], list[str]],
    held_gpus: dict[tuple[str, str], list[str]],
    pods: list[PodInfo],
    deployment: DeploymentInfo | None,
    verdicts: _Verdicts,
    gate: evaluation.Gate | None = None,
) -> tuple[SlotDecision, list[EventIntent]]:
    spec = slot.spec
    previous = slot.status
    events: list[EventIntent] = []

    pinned_node = deployment.node if deployment else None
    choice: VramChoice | None = None

    def decide(phase: Phase, reason: str, replicas: int, **kwargs: Any) -> SlotDecision:
        if choice is not None and choice.bytes is not None and choice.source != "Spec":
            # A figure the user did not give is named, so a surprising one is traced.
            reason = f"{reason}; VRAM {choice.detail}"
        if gate is not None:
            kwargs["status_updates"] = {**gate.status_updates(),
                                        **kwargs.get("status_updates", {})}
            kwargs["condition_updates"] = [*kwargs.get("condition_updates", []),
                                           *gate.conditions(phase)]
            kwargs.update(served=gate.served, evaluate=gate.request)
            events.extend(gate.events)
        return SlotDecision(slot, view.settings, now, phase, reason, replicas,
                            pinned_node=pinned_node, **kwargs)

    if spec is None:
        message = slot.invalid_reason or "the spec is invalid"
        return decide("Failed", f"invalid spec: {message}", 0, condition_updates=[
            ("Accepted", False, "InvalidSpec", message),
            ("Ready", False, "InvalidSpec", message)]), events

    if gate is not None:
        spec = gate.served
    accepted: ConditionUpdate = ("Accepted", True, "Valid", "the spec is valid")
    key = slot.key
    requested = verdicts.requests[key] if key in verdicts.requests else last_request(slot, view)
    updates: dict[str, Any] = {"last_request_time": requested}
    vram: int | None = 0
    if spec.device == "gpu":
        choice = verdicts.vram.get(key) or vram_choice(slot, spec, view, deployment)
        vram = choice.bytes
        updates["vram_source"] = choice.source
    template = vram or 0
    current_hash = ""
    if pods or deployment is not None:
        current_hash = children.template_hash(_template(slot, spec, template, view.settings))
    live = [p for p in pods if not p.terminating]
    stale = [p for p in live if p.template_hash != current_hash]
    current = [p for p in live if p.template_hash == current_hash]
    fetch_progress, fetch_reason = _fetch_status(current)
    updates["fetch"] = fetch_progress
    if (fetch_progress is not None and fetch_progress.state == "Failed"
            and (previous.fetch is None or previous.fetch.state != "Failed")):
        events.append(EventIntent(slot.namespace, slot.name, "Warning", "FetchFailed",
                                  f"Fetching the model of {spec.alias} failed: "
                                  f"{fetch_progress.message}"))
    phase: Phase
    reason: str

    if spec.device == "cpu":
        serving = _any_serving(current)
        wanted = spec.activation == "Always" or _cpu_demanded(slot, spec, view, serving, now)
        replicas = 1 if wanted else 0
        phase, reason = _phase_from_pods(wanted, current, pods, "on CPU")
        if phase == "Loading" and fetch_reason:
            reason = fetch_reason
        if gate is not None:
            phase, reason = gate.live(phase, reason, now, previous.phase)
        if phase == "Ready" and previous.phase != "Ready":
            updates["ready_since"] = now
        fits: ConditionUpdate = ("Fits", True, "CpuSlot", "runs on CPU; no GPU memory needed")
        return decide(phase, reason, replicas, template_vram=template, status_updates=updates,
                      condition_updates=[accepted, fits, *_readiness(phase, reason)]), events

    if vram is None:
        assert choice is not None
        message = choice.detail
        return decide("Pending", message, 0, template_vram=template, status_updates=updates,
                      condition_updates=[accepted, ("Fits", None, "VramUnknown", message),
                                         ("Ready", False, "VramUnknown", message)]), events
    assert choice is not None
    if key in verdicts.unschedulable:
        message = verdicts.unschedulable[key]
        if previous.phase != "Unschedulable":
            events.append(EventIntent(slot.namespace, slot.name, "Warning", "Unschedulable",
                                      f"{spec.alias} {message}"))
        return decide("Unloading" if pods else "Unschedulable", message, 0, template_vram=template,
                      status_updates=updates, condition_updates=[
                          accepted, ("Fits", False, "TooLarge", message),
                          ("Resident", False, "Unschedulable", message),
                          ("Ready", False, "Unschedulable", message)]), events
    fits = ("Fits", True, "Fits", f"needs {model_vram.describe(choice)}")

    placed = placement.get(key)
    if placed is None:
        updates.update(loading_since=None, evicting=None, swap_progress=None)
        still_held = held_gpus.get(key) if pods else None
        drain = _drain(key, spec, previous, current, view, now)
        if drain is not None and drain.state in ("Draining", "Deferred"):
            return _draining_decision(decide, slot, spec, previous, drain, now, updates,
                                      [accepted, fits], still_held, gpus, template, events)
        updates["draining_since"] = None
        if pods:
            phase = "Unloading"
            taker = verdicts.taken_by.get(key)
            reason = f"unloading for {taker}" if taker else "unloading"
            swapping: ConditionUpdate = ("Swapping", True, "Unloading", reason)
            if previous.phase != "Unloading":
                drained = ""
                if drain is not None and previous.draining_since is not None:
                    drained = (f" after draining for "
                               f"{(now - previous.draining_since).total_seconds():.1f}s")
                events.append(EventIntent(slot.namespace, slot.name, "Normal", "Unloading",
                                          f"Unloading {spec.alias}"
                                          + (f" for {taker}" if taker else "") + drained))
            if drain is not None and drain.state == "Cut":
                events.append(EventIntent(slot.namespace, slot.name, "Warning", "DrainCut",
                                          f"Unloading {spec.alias} with {drain.busy} "
                                          f"request(s) still running: {drain.reason}"))
        elif key in verdicts.waiting:
            phase, reason = "Pending", verdicts.waiting[key]
            swapping = ("Swapping", False, "Waiting", reason)
        else:
            phase = "Standby"
            reason = verdicts.standby.get(key) or (
                "idle: loads on the next request" if spec.activation == "OnDemand"
                else "standby")
            swapping = ("Swapping", False, "Idle", reason)
        # While its pods exist the slot keeps its GPU on record: the next plan
        # counts their VRAM there, not on whichever device comes first.
        node = gpus[still_held[0]].node.name if still_held else None
        return decide(phase, reason, 0, node=node,
                      gpu=",".join(still_held) if still_held else None,
                      cut_requests=drain.busy if drain and drain.state == "Cut" else 0,
                      template_vram=template, status_updates=updates,
                      condition_updates=[accepted, fits, swapping,
                                         ("Resident", False, phase, reason),
                                         ("Ready", False, phase, reason)]), events

    # Wanted on `placed`.
    waiting_on: tuple[str, ...] = ()
    updates["draining_since"] = None
    if previous.drain_deferred_until is not None and now >= previous.drain_deferred_until:
        updates["drain_deferred_until"] = None
    # The status records where the slot's pods hold memory, which the next plan
    # counts them on: while pods placed elsewhere still exist (Terminating, or of an
    # older template) that is their GPU, not the new place, or a newcomer could start
    # beside them on a GPU that looks free.
    old_place = held_gpus.get(key)
    recorded = old_place if pods and old_place and set(old_place) != set(placed) else placed
    node_name = gpus[recorded[0]].node.name
    gpu_label = ",".join(recorded)
    own_held = sum(p.vram_bytes for p in pods)
    asked = deployment.replicas * deployment.vram_bytes if deployment else 0
    already_started = bool(current) or (
        deployment is not None and deployment.replicas > 0
        and deployment.template_hash == current_hash)
    if stale:
        replicas, phase = 0, "Loading"
        reason = "model changed: unloading the previous model first"
    elif already_started:
        replicas = 1
        phase = "Ready" if any(p.ready for p in current) else "Loading"
        reason = "serving" if phase == "Ready" else (fetch_reason or "loading the model")
    else:
        # Break-before-make: start only when everything that exists still fits.
        per_device = vram // spec.gpus
        own_share = max(own_held, asked) // len(placed) if key in held_gpus else 0
        blocked = start_blockers(gpus, placed, per_device, slot.name, own_share,
                                 view.settings.mutex_bytes)
        if blocked or any(p.terminating for p in pods):
            replicas, phase = 0, "Loading"
            holders = sorted({h for g in blocked for h in g.holders if h != slot.name})
            waiting_on = tuple(holders)
            held_text = gib(max(g.held for g in blocked)) if blocked else gib(own_held)
            reason = (f"waiting for {', '.join(holders) or 'its old pods'} to unload "
                      f"({held_text} still held)")
        else:
            replicas, phase, reason = 1, "Loading", "loading the model"
            start(gpus, placed, per_device, slot.name, view.settings.mutex_bytes)
    if gate is not None:
        phase, reason = gate.live(phase, reason, now, previous.phase)

    if phase == "Loading":
        progress_marks = _progress(previous, current, replicas, now)
        updates["swap_progress"] = progress_marks
        if previous.loading_since is None:
            evicted = sorted({a for g in placed for a in verdicts.evictions.get(g, [])
                              if a != spec.alias})
            updates.update(loading_since=now, evicting=evicted or None)
            events.append(EventIntent(
                slot.namespace, slot.name, "Normal", "SwapStarted",
                f"Loading {spec.alias} on {node_name}"
                + (f", evicting {', '.join(evicted)}" if evicted else "")))
        progress: list[ConditionUpdate] = [
            ("Swapping", True, "Loading", reason),
            ("Resident", True, "Placed", f"placed on {gpu_label}"),
            ("Ready", False, "Loading", reason)]
    else:
        if previous.loading_since is not None:
            seconds = (now - previous.loading_since).total_seconds()
            evicted = previous.evicting or []
            phases = swap_phases(previous.loading_since,
                                 _progress(previous, current, replicas, now), now,
                                 bool(evicted))
            updates.update(last_swap_seconds=round(seconds, 2), swaps=(previous.swaps or 0) + 1,
                           last_swap_phases=phases, swap_progress=None)
            updates["recent_swap_seconds"] = swap_wait.remember_swap(
                previous.recent_swap_seconds, seconds)
            events.append(EventIntent(
                slot.namespace, slot.name, "Normal", "Swapped",
                f"Swapped {spec.alias} in on {node_name} in {seconds:.1f}s"
                + (f", evicting {', '.join(evicted)}" if evicted else "")
                + f" ({describe_phases(phases)})"))
        restored = _route_restored(previous, view, now)
        if restored is not None:
            updates["last_swap_phases"] = restored
        if previous.phase not in (phase, "Ready", "Draining") or previous.ready_since is None:
            updates["ready_since"] = now
        updates.update(_measurement(spec, previous, view, key, current))
        updates.update(loading_since=None, evicting=None)
        progress = [("Swapping", False, "Resident", "loaded"),
                    ("Resident", True, "Placed", f"placed on {gpu_label}"),
                    ("Ready", True, "Serving", f"serving {children.served_name(spec)}")
                    if phase == "Ready" else ("Ready", False, phase, reason)]
    return decide(phase, reason, replicas, gpu=gpu_label, node=node_name, vram=vram,
                  template_vram=template, status_updates=updates, waiting_on=waiting_on,
                  condition_updates=[accepted, fits, *progress]), events


# ------------------------------------------------------------------ draining

DRAIN_POLL = datetime.timedelta(seconds=0.5)
"""How often a draining slot's llama-server is asked whether it is still busy."""
ROUTER_ACTIVE_WINDOW = datetime.timedelta(seconds=10)
"""A router that fetched the state within this window (five of its refreshes) may
still route by it; one silent for longer is gone."""
ROUTE_RESTORE_POLL = datetime.timedelta(seconds=1)
ROUTE_RESTORE_LIMIT = datetime.timedelta(minutes=5)
"""A router fetch later than this after Ready is not the swap's route restoration."""

DrainState = Literal["Draining", "Drained", "Deferred", "Cut"]


@dataclass(frozen=True)
class DrainVerdict:
    state: DrainState
    since: datetime.datetime
    busy: int
    reason: str


def _drain(key: tuple[str, str], spec: ModelSlotSpec, previous: ModelSlotStatus,
           current: list[PodInfo], view: View, now: datetime.datetime) -> DrainVerdict | None:
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
    # send a request the old way until the grace has passed.
    fetched = view.router_fetched_at
    routers_quiet = fetched is None or fetched < since - ROUTER_ACTIVE_WINDOW
    routers_informed = routers_quiet or waited >= view.settings.drain_route_grace
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


def _draining_decision(decide: Any, slot: SlotInfo, spec: ModelSlotSpec,
                       previous: ModelSlotStatus, drain: DrainVerdict,
                       now: datetime.datetime, updates: dict[str, Any],
                       head: list[ConditionUpdate], still_held: list[str] | None,
                       gpus: dict[str, Gpu], template: int, events: list[EventIntent]
                       ) -> tuple[SlotDecision, list[EventIntent]]:
    """A slot that keeps its pod while requests finish, or after a drain that timed
    out with requests running (Deferred: it serves on, and the swap waits)."""
    gpu_label = ",".join(still_held) if still_held else previous.gpu
    node = gpus[still_held[0]].node.name if still_held else previous.node
    if drain.state == "Draining":
        updates["draining_since"] = drain.since
        decision: SlotDecision = decide(
            "Draining", drain.reason, 1, gpu=gpu_label, node=node, vram=template,
            template_vram=template, status_updates=updates, condition_updates=[
                *head, ("Swapping", True, "Draining", drain.reason),
                ("Resident", True, "Placed", f"placed on {gpu_label}"),
                ("Ready", False, "Draining", drain.reason)])
        if previous.phase != "Draining":
            events.append(EventIntent(
                slot.namespace, slot.name, "Normal", "Draining",
                f"Draining {spec.alias}: new requests go elsewhere while those in flight "
                f"finish (up to {spec.drain.timeout})"))
        return decision, events
    retry_at = now + parse_duration(spec.drain.timeout)
    updates.update(draining_since=None, drain_deferred_until=retry_at)
    reason = (f"swap deferred: {drain.reason}; serving until "
              f"{retry_at.strftime('%H:%M:%S')} UTC, then draining again")
    decision = decide("Ready", reason, 1, gpu=gpu_label, node=node, vram=template,
                      template_vram=template, status_updates=updates, condition_updates=[
                          *head, ("Swapping", False, "Deferred", reason),
                          ("Resident", True, "Placed", f"placed on {gpu_label}"),
                          ("Ready", True, "Serving", f"serving {children.served_name(spec)}")])
    events.append(EventIntent(slot.namespace, slot.name, "Warning", "SwapDeferred",
                              f"Kept {spec.alias} loaded: {drain.reason}"))
    return decision, events


def _mark_drained(decisions: list[SlotDecision], now: datetime.datetime) -> None:
    """A load waiting only on slots that are no longer draining has its drain
    phase over: what is left is their pods going away."""
    draining = {d.name for d in decisions if d.phase == "Draining"}
    for decision in decisions:
        marks = decision.status_updates.get("swap_progress")
        if (isinstance(marks, SwapProgress) and marks.drained_at is None
                and not draining.intersection(decision.waiting_on)):
            decision.status_updates["swap_progress"] = marks.model_copy(
                update={"drained_at": now})


# ------------------------------------------------------------------ swap timing


def _progress(previous: ModelSlotStatus, current: list[PodInfo], replicas: int,
              now: datetime.datetime) -> SwapProgress:
    """The moments of the load in progress, with the ones first seen in this pass."""
    marks = (previous.swap_progress if previous.loading_since is not None
             and previous.swap_progress is not None else SwapProgress())
    seen: dict[str, datetime.datetime] = {}
    if replicas > 0 or current:
        seen["started_at"] = marks.started_at or now
        seen["drained_at"] = marks.drained_at or now
    if any(p.node for p in current):
        seen["scheduled_at"] = marks.scheduled_at or now
    if any(p.phase == "Running" or p.ready for p in current):
        seen["running_at"] = marks.running_at or now
    return marks.model_copy(update=seen) if seen else marks


def swap_phases(decided: datetime.datetime, marks: SwapProgress, ready: datetime.datetime,
                evicted: bool) -> SwapPhases:
    """Seconds per phase from the moments seen. A moment the operator did not see
    (two steps between two passes) counts as the next one, so the phases always add
    up to the whole swap."""
    points = [decided, marks.drained_at, marks.started_at, marks.scheduled_at,
              marks.running_at, ready]
    for index in range(len(points) - 2, 0, -1):
        points[index] = points[index] or points[index + 1]
    moments = [p or ready for p in points]
    for index in range(1, len(moments)):  # clocks never run backwards here
        moments[index] = max(moments[index], moments[index - 1])
    spans = [round((b - a).total_seconds(), 2) for a, b in itertools.pairwise(moments)]
    drain, unload, schedule, container_start, model_load = spans
    return SwapPhases(drain=drain if evicted else None, unload=unload if evicted else None,
                      schedule=schedule + (0 if evicted else drain + unload),
                      container_start=container_start, model_load=model_load)


def describe_phases(phases: SwapPhases) -> str:
    names = {"drain": "drain", "unload": "unload", "schedule": "schedule",
             "container_start": "container start", "model_load": "model load",
             "route_restored": "route restored"}
    return ", ".join(f"{label} {value:.1f}s" for key, label in names.items()
                     if (value := getattr(phases, key)) is not None)


def _route_restored(previous: ModelSlotStatus, view: View, now: datetime.datetime
                    ) -> SwapPhases | None:
    """The last swap's phases with the route restoration filled in, once a router
    has fetched a state in which the slot is Ready."""
    phases = previous.last_swap_phases
    fetched = view.router_fetched_at
    if (phases is None or phases.route_restored is not None or previous.phase != "Ready"
            or previous.ready_since is None or fetched is None):
        return None
    if not previous.ready_since < fetched <= now:
        return None
    waited = fetched - previous.ready_since
    if waited > ROUTE_RESTORE_LIMIT:
        return None
    return phases.model_copy(update={"route_restored": round(waited.total_seconds(), 2)})


def _route_restore_pending(decision: SlotDecision, view: View, now: datetime.datetime) -> bool:
    """A slot that just swapped in while a router is active: plan again soon, so the
    router's next fetch is timed."""
    if decision.phase != "Ready" or view.router_fetched_at is None:
        return False
    if now - view.router_fetched_at > ROUTER_ACTIVE_WINDOW:
        return False
    phases = decision.status_updates.get("last_swap_phases") or \
        decision.slot.status.last_swap_phases
    ready_since = decision.status_updates.get("ready_since") or decision.slot.status.ready_since
    return (isinstance(phases, SwapPhases) and phases.route_restored is None
            and ready_since is not None and now - ready_since < ROUTE_RESTORE_LIMIT)


def _measurement(spec: ModelSlotSpec, previous: ModelSlotStatus, view: View,
                 key: tuple[str, str], current: list[PodInfo]) -> dict[str, Any]:
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


def _fetch_status(pods: list[PodInfo]) -> tuple[ModelFetchProgress | None, str | None]:
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


def _readiness(phase: Phase, reason: str) -> list[ConditionUpdate]:
    return [("Ready", phase == "Ready", "Serving" if phase == "Ready" else phase, reason)]


def _any_serving(pods: list[Any]) -> bool:
    """A pod that answers requests: Ready and not on its way out."""
    return any(p.ready and not p.terminating for p in pods)


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
    typical = swap_wait.typical_swap(slot.status.recent_swap_seconds,
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
    return covered


def _cpu_demanded(slot: SlotInfo, spec: ModelSlotSpec, view: View, serving: bool,
                  now: datetime.datetime) -> bool:
    requested = last_request(slot, view)
    if requested is None or spec.idle_timeout is None:
        return False
    return now < demanded_until(requested, parse_duration(spec.idle_timeout), slot, serving,
                                view.settings, now)


def _phase_from_pods(wanted: bool, current: list[Any], pods: list[Any],
                     where: str) -> tuple[Phase, str]:
    if not wanted:
        return ("Unloading", "unloading") if pods else ("Standby", "standby")
    if any(p.ready for p in current):
        return "Ready", f"serving {where}"
    return "Loading", f"loading {where}"
