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
from typing import Any, Literal

from hybrid_compute.api.common import parse_bytes
from hybrid_compute.api.gpuworkload import CLASS_PRIORITY, GpuWorkloadSpec
from hybrid_compute.api.units import gib
from hybrid_compute.plan.conditions import render_status
from hybrid_compute.plan.ledger import Candidate, Gpu, start, start_blockers
from hybrid_compute.plan.outputs import ConditionUpdate, EventIntent, EventType
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import PodInfo, WorkloadChild, WorkloadInfo
from hybrid_compute.plan.windows import describe, local_text, window_state
from hybrid_compute.render import children

WorkloadPhase = Literal["Queued", "Admitted", "Running", "Preempted", "Succeeded", "Failed"]
KIND = "GpuWorkload"


_TEMPLATES: dict[int, tuple[GpuWorkloadSpec, str, str | None, dict[str, Any]]] = {}


def _template(name: str, spec: GpuWorkloadSpec, settings: PlanSettings) -> dict[str, Any]:
    """The workload's pod template, memoised per spec object (as for slots)."""
    runtime_class = settings.gpu_runtime_class
    cached = _TEMPLATES.get(id(spec))
    if cached and cached[0] is spec and cached[1] == name and cached[2] == runtime_class:
        return cached[3]
    template = children.workload_template(name, spec, runtime_class)
    if len(_TEMPLATES) > 4096:
        _TEMPLATES.clear()
    _TEMPLATES[id(spec)] = (spec, name, runtime_class, template)
    return template


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
        return _template(self.name, spec, self.settings) if spec else None

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

    queued: dict[tuple[str, str], str] = field(default_factory=dict)
    """Why a workload is not a candidate or did not get a place."""
    too_large: dict[tuple[str, str], str] = field(default_factory=dict)
    taken_by: dict[tuple[str, str], str] = field(default_factory=dict)


def candidates(view_workloads: tuple[WorkloadInfo, ...],
               workload_children: dict[tuple[str, str], WorkloadChild],
               held_gpus: dict[tuple[str, str], list[str]],
               gpus: dict[str, Gpu], busy: list[str], now: datetime.datetime,
               verdicts: WorkloadVerdicts, wakeups: list[datetime.datetime],
               fit_problem: Any) -> list[Candidate]:
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
        created = workload.created or now
        rank = (0 if pinned else 2, -priority(spec), 0 if active else 1, created,
                workload.namespace, workload.name)
        current = held_gpus.get(key) or [g for g in (workload.status.gpu or "").split(",")
                                          if g in gpus]
        found.append(Candidate(KIND, key, workload.name, vram, 1, rank, current[:1],
                               running=active and bool(current)))
    return found


def decide(workload: WorkloadInfo, settings: PlanSettings, now: datetime.datetime,
           gpus: dict[str, Gpu], placement: dict[tuple[str, str], list[str]],
           held_gpus: dict[tuple[str, str], list[str]], pods: list[PodInfo],
           child: WorkloadChild | None, verdicts: WorkloadVerdicts
           ) -> tuple[WorkloadDecision, list[EventIntent]]:
    spec = workload.spec
    previous = workload.status
    key = workload.key
    events: list[EventIntent] = []
    pinned_node = child.node if child else None

    def decision(phase: WorkloadPhase, reason: str, active: bool,
                 conditions: list[ConditionUpdate], **kwargs: Any) -> WorkloadDecision:
        if phase != previous.phase and phase in ("Admitted", "Preempted", "Succeeded",
                                                   "Failed"):
            kind: EventType = "Warning" if phase == "Failed" else "Normal"
            events.append(EventIntent(workload.namespace, workload.name, kind, phase,
                                      reason[:1].upper() + reason[1:], KIND))
        return WorkloadDecision(workload, settings, now, phase, reason, active,
                                pinned_node=pinned_node, condition_updates=conditions,
                                **kwargs)

    if spec is None:
        message = workload.invalid_reason or "the spec is invalid"
        return decision("Failed", f"invalid spec: {message}", False,
                        [("Accepted", False, "InvalidSpec", message)],
                        manage_child=False), events
    accepted: ConditionUpdate = ("Accepted", True, "Valid", "the spec is valid")
    if child and child.succeeded:
        return decision("Succeeded", "completed", False,
                        [accepted, ("Finished", True, "Succeeded", "completed"),
                         ("Admitted", False, "Finished", "completed")],
                        manage_child=False), events
    if child and child.failed:
        failure = child.failure or "the Job failed"
        return decision("Failed", failure, False,
                        [accepted, ("Finished", True, "Failed", failure),
                         ("Admitted", False, "Finished", failure)],
                        manage_child=False), events

    template_hash = children.template_hash(_template(workload.name, spec, settings))
    stale = child is not None and child.template_hash != template_hash
    running = any(p.phase == "Running" and not p.terminating for p in pods)

    if not uses_gpu(spec):
        phase: WorkloadPhase = "Running" if running else "Admitted"
        reason = "runs on CPU" if running else "admitted: runs on CPU, never competes"
        return decision(phase, reason, True,
                        [accepted, ("Admitted", True, "Cpu", reason),
                         ("Preempted", False, "Cpu", reason)],
                        recreate_child=stale and not (child and child.active)), events

    vram = parse_bytes(spec.vram)
    if key in verdicts.too_large:
        message = f"can never fit: {verdicts.too_large[key]}"
        return decision("Queued", message, False,
                        [accepted, ("Fits", False, "TooLarge", message),
                         ("Admitted", False, "TooLarge", message)]), events

    placed = placement.get(key)
    was_active = child is not None and child.active
    if placed is None:
        taker = verdicts.taken_by.get(key)
        reason = verdicts.queued.get(key) or "waiting for room"
        if was_active or previous.phase == "Preempted":
            why = f"preempted by {taker}" if taker else reason
            counted: dict[str, Any] = {}
            if was_active and previous.phase != "Preempted":
                counted["preemptions"] = (previous.preemptions or 0) + 1
            return decision("Preempted", why, False,
                            [accepted, ("Admitted", False, "Preempted", why),
                             ("Preempted", True, "Preempted", why)],
                            gpu=",".join(held_gpus[key]) if key in held_gpus and pods else None,
                            status_updates=counted), events
        return decision("Queued", reason, False,
                        [accepted, ("Admitted", False, "Queued", reason),
                         ("Preempted", False, "Queued", reason)]), events

    node = gpus[placed[0]].node.name
    gpu_label = ",".join(placed)
    if stale and not was_active:
        return decision("Admitted", "template changed: recreating its "
                        f"{spec.kind}", False,
                        [accepted, ("Admitted", True, "Recreating", "template changed")],
                        gpu=gpu_label, node=node, recreate_child=True), events
    if was_active:
        active = True
        phase = "Running" if running else "Admitted"
        reason = f"running on {gpu_label}" if running else f"admitted on {gpu_label}"
    else:
        own_share = max(sum(p.vram_bytes for p in pods), 0) if key in held_gpus else 0
        blocked = start_blockers(gpus, placed, vram, workload.name, own_share,
                                 settings.mutex_bytes)
        if blocked or any(p.terminating for p in pods):
            active = False
            holders = sorted({h for g in blocked for h in g.holders if h != workload.name})
            phase = "Admitted"
            reason = (f"admitted; waiting for {', '.join(holders) or 'its old pods'} "
                      f"to release {gpu_label}")
        else:
            active, phase = True, "Admitted"
            reason = f"admitted on {gpu_label}"
            start(gpus, placed, vram, workload.name, settings.mutex_bytes)
    updates: dict[str, Any] = {}
    if active and not was_active:
        updates["admitted_at"] = now
    return decision(phase, reason, active,
                    [accepted, ("Fits", True, "Fits", f"needs {gib(vram)}"),
                     ("Admitted", True, "Admitted", reason),
                     ("Preempted", False, "Admitted", reason)],
                    gpu=gpu_label, node=node, status_updates=updates), events
