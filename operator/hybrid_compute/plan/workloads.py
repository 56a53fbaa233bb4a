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
compete for the GPU.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

from hybrid_compute.api.common import parse_bytes
from hybrid_compute.api.gpuworkload import CLASS_PRIORITY, GpuWorkloadSpec
from hybrid_compute.api.units import gib
from hybrid_compute.plan.conditions import render_status
from hybrid_compute.plan.holdings import Key, Owned, gpu_label, located_gpus
from hybrid_compute.plan.ledger import Gpu, fit_problem, start, start_blockers
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.outputs import ACCEPTED, ConditionUpdate, EventIntent, EventType
from hybrid_compute.plan.placement import Candidate, Rank, Tier
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import PodInfo, View, WorkloadChild, WorkloadInfo
from hybrid_compute.plan.windows import describe, local_text, window_state
from hybrid_compute.render import children

WorkloadPhase = Literal["Queued", "Admitted", "Running", "Preempted", "Succeeded", "Failed"]
KIND: Final = "GpuWorkload"


def priority(spec: GpuWorkloadSpec) -> int:
    return spec.priority if spec.priority is not None else CLASS_PRIORITY[spec.workload_class]


def uses_gpu(spec: GpuWorkloadSpec) -> bool:
    return spec.workload_class != "Embedding"


@dataclass
class WorkloadDecision:
    """What act applies for one GpuWorkload; status and child render on first use."""

    workload: WorkloadInfo
    settings: PlanSettings
    now: datetime.datetime
    phase: WorkloadPhase
    reason: str
    active: bool
    memo: PlanMemo
    gpu: str | None = None
    node: str | None = None
    manage_child: bool = True
    """False once the workload has finished: its Job is left as it ended."""
    recreate_child: bool = False
    """The template changed while the child was idle: delete it, the next plan
    creates it anew (a Job's template cannot change)."""
    pinned_node: str | None = None
    status_updates: dict[str, Any] = field(default_factory=dict)
    condition_updates: list[ConditionUpdate] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.workload.namespace

    @property
    def name(self) -> str:
        return self.workload.name

    @cached_property
    def template(self) -> dict[str, Any] | None:
        spec = self.workload.spec
        return self.memo.workload_template(self.name, spec, self.settings) if spec else None

    @cached_property
    def child(self) -> dict[str, Any] | None:
        spec = self.workload.spec
        if spec is None or self.template is None or not self.manage_child:
            return None
        return children.workload_child(self.namespace, self.name, self.workload.uid, spec,
                                       self.template, self.active,
                                       self.node or self.pinned_node)

    @cached_property
    def status(self) -> dict[str, Any]:
        spec = self.workload.spec
        return render_status(self.workload.status, self.condition_updates,
                             self.workload.generation, self.now, {
                                 "phase": self.phase,
                                 "reason": self.reason,
                                 "window": describe(spec.schedule)
                                 if spec and spec.schedule else None,
                                 "gpu": self.gpu,
                                 "node": self.node,
                                 **self.status_updates,
                             })


@dataclass
class WorkloadVerdicts:
    """Findings of the candidate pass, read by the per-workload decisions."""

    queued: dict[Key, str] = field(default_factory=dict)
    """Why a workload is not a candidate or did not get a place."""
    too_large: dict[Key, str] = field(default_factory=dict)
    taken_by: dict[Key, str] = field(default_factory=dict)


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
        vram = parse_bytes(spec.vram)
        problem = fit_problem(1, vram, gpus)
        if problem:
            verdicts.too_large[key] = problem
            continue
        if spec.schedule:
            window = window_state(spec.schedule, now)
            wakeups.append(window.next_change)
            if not window.inside:
                verdicts.queued[key] = (
                    f"outside its window {window.description}; opens "
                    f"{local_text(window.next_change, spec.schedule.time_zone)}")
                continue
        if spec.only_when_gpu_idle and busy:
            verdicts.queued[key] = f"waiting for an idle GPU: {', '.join(busy)} in use"
            continue
        active = child is not None and child.active
        pinned = active and not spec.preemptible
        rank = Rank(Tier.PINNED if pinned else Tier.WORKLOAD, -priority(spec),
                    0 if active else 1, workload.created or now, workload.namespace,
                    workload.name)
        current = held_gpus.get(key) or located_gpus(gpus, workload.status.gpu, (), 1)
        found.append(Candidate(KIND, key, workload.name, vram, 1, rank, current[:1],
                               running=active and bool(current)))
    return found


@dataclass
class _WorkloadTurn:
    """One workload's decision in the making: the Events it posts, and the one way
    its branches build a decision."""

    workload: WorkloadInfo
    settings: PlanSettings
    now: datetime.datetime
    memo: PlanMemo
    pinned_node: str | None
    events: list[EventIntent] = field(default_factory=list)

    def decide(self, phase: WorkloadPhase, reason: str, active: bool,
               conditions: list[ConditionUpdate], *, gpu: str | None = None,
               node: str | None = None, manage_child: bool = True,
               recreate_child: bool = False, status_updates: dict[str, Any] | None = None
               ) -> WorkloadDecision:
        workload = self.workload
        if phase != workload.status.phase and phase in ("Admitted", "Preempted", "Succeeded",
                                                          "Failed"):
            kind: EventType = "Warning" if phase == "Failed" else "Normal"
            self.events.append(EventIntent(workload.namespace, workload.name, kind, phase,
                                           reason[:1].upper() + reason[1:], KIND))
        return WorkloadDecision(workload, self.settings, self.now, phase, reason, active,
                                self.memo, gpu=gpu, node=node, manage_child=manage_child,
                                recreate_child=recreate_child, pinned_node=self.pinned_node,
                                status_updates=status_updates or {},
                                condition_updates=conditions)


@dataclass(frozen=True)
class WorkloadFindings:
    """What the passes before the workload decisions found."""

    placement: dict[Key, list[str]]
    held_gpus: dict[Key, list[str]]
    verdicts: WorkloadVerdicts


def decide(workload: WorkloadInfo, settings: PlanSettings, now: datetime.datetime,
           memo: PlanMemo, gpus: dict[str, Gpu], findings: WorkloadFindings,
           pods: list[PodInfo], child: WorkloadChild | None
           ) -> tuple[WorkloadDecision, list[EventIntent]]:
    """One workload's decision and the Events it posts."""
    turn = _WorkloadTurn(workload, settings, now, memo, child.node if child else None)
    spec = workload.spec
    if spec is None:
        message = workload.invalid_reason or "the spec is invalid"
        return turn.decide("Failed", f"invalid spec: {message}", False,
                           [ConditionUpdate("Accepted", False, "InvalidSpec", message)],
                           manage_child=False), turn.events
    if child and (child.succeeded or child.failed):
        return _finished(turn, child), turn.events
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
        return _not_placed(turn, findings, pods, was_active), turn.events
    return _placed(turn, spec, gpus, findings, pods, placed, stale, was_active,
                   running), turn.events


def _finished(turn: _WorkloadTurn, child: WorkloadChild) -> WorkloadDecision:
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


def _not_placed(turn: _WorkloadTurn, findings: WorkloadFindings, pods: list[PodInfo],
                was_active: bool) -> WorkloadDecision:
    """A workload without a place: preempted when it ran, else queued."""
    key = turn.workload.key
    previous = turn.workload.status
    taker = findings.verdicts.taken_by.get(key)
    reason = findings.verdicts.queued.get(key) or "waiting for room"
    if was_active or previous.phase == "Preempted":
        why = f"preempted by {taker}" if taker else reason
        counted: dict[str, Any] = {}
        if was_active and previous.phase != "Preempted":
            counted["preemptions"] = (previous.preemptions or 0) + 1
        held = findings.held_gpus.get(key)
        return turn.decide("Preempted", why, False,
                           [ACCEPTED, ConditionUpdate("Admitted", False, "Preempted", why),
                            ConditionUpdate("Preempted", True, "Preempted", why)],
                           gpu=gpu_label(held) if held is not None and pods else None,
                           status_updates=counted)
    return turn.decide("Queued", reason, False,
                       [ACCEPTED, ConditionUpdate("Admitted", False, "Queued", reason),
                        ConditionUpdate("Preempted", False, "Queued", reason)])


def _placed(turn: _WorkloadTurn, spec: GpuWorkloadSpec, gpus: dict[str, Gpu],
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
