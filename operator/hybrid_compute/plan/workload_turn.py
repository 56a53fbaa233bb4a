"""One GpuWorkload's decision in the making: what act applies for it (the
:class:`WorkloadDecision`), and the one way the branches of :mod:`.workloads` and
:mod:`.reservations` build one."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

from hybrid_compute.plan.holdings import Key
from hybrid_compute.plan.ledger import gpu_label
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.outputs import ACCEPTED, ConditionUpdate, EventIntent, EventType
from hybrid_compute.plan.placement import Departures
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import WorkloadInfo
from hybrid_compute.plan.windows import describe
from hybrid_compute.render import children

WorkloadPhase = Literal["Queued", "Admitted", "Running", "Preempted", "Succeeded", "Failed"]
KIND: Final = "GpuWorkload"


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
        if spec is None or spec.template is None:
            return None  # a Reservation runs nothing
        return self.memo.workload_template(self.name, spec, self.settings)

    @property
    def has_child(self) -> bool:
        """Whether the plan wants a Job or Deployment for the workload (:attr:`child`)."""
        return (self.workload.spec is not None and self.manage_child
                and self.template is not None)

    @property
    def child_node(self) -> str | None:
        """The node the child's pod template is pinned to, when the plan pins it."""
        return self.node or self.pinned_node

    @cached_property
    def child(self) -> dict[str, Any] | None:
        spec = self.workload.spec
        if spec is None or self.template is None or not self.has_child:
            return None
        return children.workload_child(self.namespace, self.name, self.workload.uid, spec,
                                       self.template, self.active, self.child_node)

    @cached_property
    def status(self) -> dict[str, Any]:
        spec = self.workload.spec
        fields = {
            "phase": self.phase,
            "reason": self.reason,
            "window": describe(spec.schedule) if spec and spec.schedule else None,
            "gpu": self.gpu,
            "node": self.node,
            **self.status_updates,
        }
        return self.memo.status(("GpuWorkload", *self.workload.key), self.workload.status,
                                self.condition_updates, self.workload.generation, self.now,
                                fields)


@dataclass(slots=True)
class WorkloadTurn:
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

    def event(self, type_: EventType, reason: str, message: str) -> None:
        workload = self.workload
        self.events.append(EventIntent(workload.namespace, workload.name, type_, reason,
                                       message, KIND))

    def not_placed(self, findings: WorkloadFindings, holds: bool, was_active: bool
                   ) -> WorkloadDecision:
        """A workload without a place: preempted when it ran, else queued. ``holds``:
        its memory is still held where it ran."""
        key = self.workload.key
        previous = self.workload.status
        taker = findings.verdicts.taken_by.get(key)
        reason = findings.verdicts.queued.get(key) or "waiting for room"
        if was_active or previous.phase == "Preempted":
            why = f"preempted by {taker}" if taker else reason
            counted: dict[str, Any] = {}
            if was_active and previous.phase != "Preempted":
                counted["preemptions"] = (previous.preemptions or 0) + 1
            held = findings.held_gpus.get(key)
            return self.decide("Preempted", why, False,
                               [ACCEPTED, ConditionUpdate("Admitted", False, "Preempted", why),
                                ConditionUpdate("Preempted", True, "Preempted", why)],
                               gpu=gpu_label(held) if held is not None and holds else None,
                               status_updates=counted)
        return self.decide("Queued", reason, False,
                           [ACCEPTED, *self.memo.conditions(("Queued", reason),
                                                            _queued_conditions, reason)])


def _queued_conditions(reason: str) -> tuple[ConditionUpdate, ...]:
    return (ConditionUpdate("Admitted", False, "Queued", reason),
            ConditionUpdate("Preempted", False, "Queued", reason))


@dataclass
class WorkloadVerdicts:
    """Findings of the candidate pass, read by the per-workload decisions."""

    queued: dict[Key, str] = field(default_factory=dict)
    """Why a workload is not a candidate or did not get a place."""
    too_large: dict[Key, str] = field(default_factory=dict)
    taken_by: dict[Key, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadFindings:
    """What the passes before the workload decisions found."""

    placement: dict[Key, list[str]]
    held_gpus: dict[Key, list[str]]
    verdicts: WorkloadVerdicts
    departures: Departures = field(default_factory=Departures)
    """Who leaves which GPU: what a Reservation evicts."""
