"""GpuWorkload admission, the seed's GPU scheduling rules, as part of ``plan``.

Workloads are queued by priority (TTS > embeddings > image generation >
fine-tuning, unless ``priority`` says otherwise) and placed after the slots that
serve requests, before the idle default slot: LLM inference is king, but an idle
8B model gives way to overnight work. A workload is admitted only inside its
time window, when it fits, when no other consumer above the mutex size shares
its GPU, and (``onlyWhenGpuIdle``) while no on-demand model is in use. It starts
only when what exists leaves room (break-before-make, as for slots). A running
preemptible workload that loses its place is suspended; a non-preemptible one
keeps its place and makes slots wait. Embedding workloads run on CPU and never
compete for the GPU. Reservations (kind ``Reservation``) are workloads without a
child, decided by :mod:`.reservations`.
"""

from __future__ import annotations

import datetime
from typing import Any

from hybrid_compute.api.common import parse_bytes
from hybrid_compute.api.gpuworkload import CLASS_PRIORITY, GpuWorkloadSpec
from hybrid_compute.api.units import gib
from hybrid_compute.plan import reservations
from hybrid_compute.plan.holdings import Key, Owned
from hybrid_compute.plan.ledger import (
    Gpu,
    fit_problem,
    gpu_label,
    located_gpus,
    start,
    start_blockers,
)
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.outputs import ACCEPTED, ConditionUpdate, EventIntent
from hybrid_compute.plan.placement import Candidate, Rank, Tier
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import PodInfo, View, WorkloadChild, WorkloadInfo
from hybrid_compute.plan.windows import local_text, window_state
from hybrid_compute.plan.workload_turn import (
    KIND,
    WorkloadDecision,
    WorkloadFindings,
    WorkloadPhase,
    WorkloadTurn,
    WorkloadVerdicts,
)
from hybrid_compute.render import children

__all__ = ["WorkloadDecision", "WorkloadFindings", "WorkloadVerdicts", "candidates",
           "decide", "decide_all", "priority", "uses_gpu"]


def priority(spec: GpuWorkloadSpec) -> int:
    if spec.priority is not None:
        return spec.priority
    return CLASS_PRIORITY[spec.workload_class or "Other"]


def uses_gpu(spec: GpuWorkloadSpec) -> bool:
    return spec.workload_class != "Embedding"


def candidates(view_workloads: tuple[WorkloadInfo, ...],
               workload_children: dict[Key, WorkloadChild], held_gpus: dict[Key, list[str]],
               gpus: dict[str, Gpu], busy: list[str], now: datetime.datetime,
               verdicts: WorkloadVerdicts, wakeups: list[datetime.datetime]) -> list[Candidate]:
    """The workloads that want a GPU now, ranked; the others get a Queued reason."""
    found = []
    for workload in view_workloads:
        spec = workload.spec
        key = workload.key
        child = workload_children.get(key)
        if spec is None or not uses_gpu(spec) or (child and (child.succeeded or child.failed)):
            continue
        if reservations.ended(workload, now):
            continue
        vram, whole_gpu = reservations.candidate_size(spec, gpus)
        problem = fit_problem(1, vram, gpus, spec.node)
        if problem:
            verdicts.too_large[key] = problem
            continue
        waiting = _waiting(spec, busy, now, wakeups)
        if waiting is not None:
            verdicts.queued[key] = waiting
            continue
        found.append(_candidate(workload, spec, (vram, whole_gpu), child, held_gpus, gpus,
                                now, wakeups))
    return found


def _waiting(spec: GpuWorkloadSpec, busy: list[str], now: datetime.datetime,
             wakeups: list[datetime.datetime]) -> str | None:
    """Why a workload does not want a GPU now: outside its window, or the GPU is busy."""
    if spec.schedule:
        window = window_state(spec.schedule, now)
        wakeups.append(window.next_change)
        if not window.inside:
            return (f"outside its window {window.description}; opens "
                    f"{local_text(window.next_change, spec.schedule.time_zone)}")
    if spec.only_when_gpu_idle and busy:
        return f"waiting for an idle GPU: {', '.join(busy)} in use"
    return None


def _candidate(workload: WorkloadInfo, spec: GpuWorkloadSpec, size: tuple[int, bool],
               child: WorkloadChild | None, held_gpus: dict[Key, list[str]],
               gpus: dict[str, Gpu], now: datetime.datetime,
               wakeups: list[datetime.datetime]) -> Candidate:
    reservation = reservations.is_reservation(spec)
    if reservation:
        active = reservations.holding(workload)
        if active and workload.status.ends_at is not None:
            wakeups.append(workload.status.ends_at)
    else:
        active = child is not None and child.active
    tier = Tier.WORKLOAD
    if active and not spec.preemptible:
        tier = Tier.PINNED
    elif reservation and spec.priority_class != "Workload":
        tier = Tier.HOUSEHOLD
    rank = Rank(tier, -priority(spec), 0 if active else 1, workload.created or now,
                workload.namespace, workload.name)
    current = held_gpus.get(workload.key) or located_gpus(gpus, workload.status.gpu, (), 1)
    vram, whole_gpu = size
    return Candidate(KIND, workload.key, reservations.label(workload), vram, 1, rank,
                     current[:1], running=active and bool(current), whole_gpu=whole_gpu,
                     node=spec.node, reservation=reservation)


def decide(workload: WorkloadInfo, settings: PlanSettings, now: datetime.datetime,
           memo: PlanMemo, gpus: dict[str, Gpu], findings: WorkloadFindings,
           pods: list[PodInfo], child: WorkloadChild | None
           ) -> tuple[WorkloadDecision, list[EventIntent]]:
    """One workload's decision and the Events it posts."""
    turn = WorkloadTurn(workload, settings, now, memo, child.node if child else None)
    spec = workload.spec
    if spec is None:
        message = workload.invalid_reason or "the spec is invalid"
        return turn.decide("Failed", f"invalid spec: {message}", False,
                           [ConditionUpdate("Accepted", False, "InvalidSpec", message)],
                           manage_child=False), turn.events
    if child and (child.succeeded or child.failed):
        return _finished(turn, child), turn.events
    if reservations.is_reservation(spec):
        return reservations.decide(turn, spec, gpus, findings), turn.events
    template_hash = children.template_hash(memo.workload_template(workload.name, spec,
                                                                  settings))
    stale = child is not None and child.template_hash != template_hash
    running = any(p.phase == "Running" and not p.terminating for p in pods)
    if not uses_gpu(spec):
        phase: WorkloadPhase = "Running" if running else "Admitted"
        reason = "runs on CPU" if running else "admitted: runs on CPU, never competes"
        return turn.decide(phase, reason, True,
                           [ACCEPTED, ConditionUpdate("Admitted", True, "Cpu", reason),
                            ConditionUpdate("Preempted", False, "Cpu", reason)],
                           recreate_child=stale and not (child and child.active)), turn.events
    key = workload.key
    if key in findings.verdicts.too_large:
        message = f"can never fit: {findings.verdicts.too_large[key]}"
        return turn.decide("Queued", message, False,
                           [ACCEPTED, ConditionUpdate("Fits", False, "TooLarge", message),
                            ConditionUpdate("Admitted", False, "TooLarge", message)]
                           ), turn.events
    placed = findings.placement.get(key)
    was_active = child is not None and child.active
    if placed is None:
        return turn.not_placed(findings, bool(pods), was_active), turn.events
    return _placed(turn, spec, gpus, findings, pods, placed, stale, was_active,
                   running), turn.events


def _finished(turn: WorkloadTurn, child: WorkloadChild) -> WorkloadDecision:
    """A workload whose Job ended: its child is left as it ended."""
    if child.succeeded:
        return turn.decide("Succeeded", "completed", False,
                           [ACCEPTED, ConditionUpdate("Finished", True, "Succeeded", "completed"),
                            ConditionUpdate("Admitted", False, "Finished", "completed")],
                           manage_child=False)
    failure = child.failure or "the Job failed"
    return turn.decide("Failed", failure, False,
                       [ACCEPTED, ConditionUpdate("Finished", True, "Failed", failure),
                        ConditionUpdate("Admitted", False, "Finished", failure)],
                       manage_child=False)


def _placed(turn: WorkloadTurn, spec: GpuWorkloadSpec, gpus: dict[str, Gpu],
            findings: WorkloadFindings, pods: list[PodInfo], placed: list[str], stale: bool,
            was_active: bool, running: bool) -> WorkloadDecision:
    """A workload with a place: admitted, and started once what exists leaves room."""
    name = turn.workload.name
    node = gpus[placed[0]].node.name
    label = gpu_label(placed)
    if stale and not was_active:
        return turn.decide("Admitted", f"template changed: recreating its {spec.kind}", False,
                           [ACCEPTED, ConditionUpdate("Admitted", True, "Recreating",
                                                      "template changed")],
                           gpu=label, node=node, recreate_child=True)
    assert spec.vram is not None  # a Job or Deployment names its VRAM
    vram = parse_bytes(spec.vram)
    phase: WorkloadPhase
    if was_active:
        active = True
        phase = "Running" if running else "Admitted"
        reason = f"running on {label}" if running else f"admitted on {label}"
    else:
        own_share = (max(sum(p.vram_bytes for p in pods), 0)
                     if turn.workload.key in findings.held_gpus else 0)
        mutex_bytes = turn.settings.mutex_bytes
        blocked = start_blockers(gpus, placed, vram, name, own_share, mutex_bytes)
        phase = "Admitted"
        active = not blocked and not any(p.terminating for p in pods)
        if active:
            reason = f"admitted on {label}"
            start(gpus, placed, vram, name, mutex_bytes)
        else:
            holders = sorted({h for g in blocked for h in g.holders if h != name})
            reason = (f"admitted; waiting for {', '.join(holders) or 'its old pods'} "
                      f"to release {label}")
            recorded = turn.workload.status
            if pods and recorded.gpu:
                # Its old pods still hold memory where the status says they run: the
                # record is what locates them, so it moves only once they are gone.
                label, node = recorded.gpu, recorded.node or node
    updates: dict[str, Any] = {}
    if active and not was_active:
        updates["admitted_at"] = turn.now
    return turn.decide(phase, reason, active,
                       [ACCEPTED, ConditionUpdate("Fits", True, "Fits", f"needs {gib(vram)}"),
                        ConditionUpdate("Admitted", True, "Admitted", reason),
                        ConditionUpdate("Preempted", False, "Admitted", reason)],
                       gpu=label, node=node, status_updates=updates)


def decide_all(view: View, now: datetime.datetime, memo: PlanMemo, gpus: dict[str, Gpu],
               owned: Owned, findings: WorkloadFindings
               ) -> tuple[list[WorkloadDecision], list[EventIntent]]:
    """Every workload's decision, in name order, and the Events they post."""
    decisions: list[WorkloadDecision] = []
    events: list[EventIntent] = []
    for workload in sorted(view.workloads, key=lambda w: w.key):
        decision, new_events = decide(workload, view.settings, now, memo, gpus, findings,
                                      owned.workload_pods.get(workload.key, []),
                                      owned.workload_children.get(workload.key))
        decisions.append(decision)
        events += new_events
    return decisions, events
