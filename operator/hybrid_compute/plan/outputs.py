"""What a plan decides: the :class:`Plan`, each slot's :class:`SlotDecision` with the
transitions it records, Events to post, condition updates and the per-GPU summary."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from hybrid_compute.api.modelslot import ModelFetchProgress, ModelPageCache, SwapPhases
from hybrid_compute.api.units import gib
from hybrid_compute.plan.view import ForeignProcess
from hybrid_compute.render import children

if TYPE_CHECKING:
    from hybrid_compute.api.modelslot import ModelSlotSpec
    from hybrid_compute.plan.evaluation import EvaluationRequest
    from hybrid_compute.plan.memo import PlanMemo
    from hybrid_compute.plan.prompt_cache import RestoreRequest, SaveRequest
    from hybrid_compute.plan.routing import PolicyDecision
    from hybrid_compute.plan.settings import PlanSettings
    from hybrid_compute.plan.view import SlotInfo
    from hybrid_compute.plan.warm_standby import WarmFile
    from hybrid_compute.plan.workloads import WorkloadDecision

EventType = Literal["Normal", "Warning"]
Phase = Literal["Pending", "Standby", "Loading", "Evaluating", "Ready", "Draining",
                "Unloading", "Unschedulable", "Failed"]


class ConditionUpdate(NamedTuple):
    """A condition a decision sets: True, False or None (Unknown)."""

    type: str
    status: bool | None
    reason: str
    message: str


ACCEPTED = ConditionUpdate("Accepted", True, "Valid", "the spec is valid")


@dataclass(frozen=True)
class EventIntent:
    """An Event the act layer posts on a ModelSlot, a GpuWorkload or a Node."""

    namespace: str
    name: str
    type: EventType
    reason: str
    message: str
    kind: str = "ModelSlot"


@dataclass(frozen=True)
class GpuSummary:
    id: str
    capacity_bytes: int
    """Memory the plan may use: the GPU's, less the headroom and foreign use."""
    planned_bytes: int
    held_bytes: int
    residents: tuple[str, ...]
    foreign_bytes: int = 0
    """Held outside hybrid-compute, which the plan treats as a reservation."""
    foreign: tuple[str, ...] = ()
    """Who holds it (:attr:`~.view.ForeignProcess.label`)."""
    slot_held_bytes: int = 0
    """Held by the pods of ModelSlots: 0 means no model is loaded on the GPU."""


@dataclass(frozen=True)
class ForeignUse:
    """A process outside hybrid-compute that holds memory on a GPU, large enough to
    be announced; the plan treats it as a reservation of that size while it lasts."""

    gpu: str
    node: str
    process: ForeignProcess


@dataclass(frozen=True)
class CompletedSwap:
    """A load that reached Ready in this pass."""

    seconds: float
    """From the decision to load to Ready."""
    phases: SwapPhases


@dataclass
class SlotDecision:
    """Everything act applies for one slot, and the transitions it records. The
    status and the children are rendered on first use, so planning many unchanged
    slots stays cheap."""

    slot: SlotInfo
    settings: PlanSettings
    now: datetime.datetime
    phase: Phase
    reason: str
    replicas: int
    memo: PlanMemo
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
    evaluate: EvaluationRequest | None = None
    """An evaluation the runtime should run before the slot is routed to."""
    waiting_on: tuple[str, ...] = ()
    """Slots whose pods a load waits for: draining ones mark its drain phase."""
    cut_requests: int = 0
    """Requests still running when a timed-out drain unloaded the slot anyway."""
    fetch: ModelFetchProgress | None = None
    """The model download of the slot's pod; only a valid spec writes it."""
    page_cache: ModelPageCache | None = None
    """How much of the model file the node's page cache holds."""
    completed_swap: CompletedSwap | None = None
    phases_recorded: SwapPhases | None = None
    """Swap phases this pass writes: a completed swap's, or the last swap's with
    its route restoration filled in."""
    started_waiting: bool = False
    """The slot became Pending in this pass, waiting for room."""
    refused: bool = False
    """Refused for a conflict with an earlier object (:mod:`.conflicts`): the
    router must not take its alias for a local one."""
    cache_save: SaveRequest | None = None
    """Prompt caches the runtime has saved before it scales the slot down."""
    cache_restore: RestoreRequest | None = None
    """Prompt caches the runtime restores before the router may route to the slot."""
    kept: SlotDecision | None = field(default=None, compare=False, repr=False)
    """The decision of an earlier plan this one copies (:meth:`at`), made from the same
    slot record and inputs; the same object while they stay the same."""

    def at(self, now: datetime.datetime) -> SlotDecision:
        """The same decision made at ``now``: its own status fields and conditions to
        add to, and nothing rendered yet (the rendered status names the moment).
        Its fields are a copy of this decision's dict rather than set one by one, or
        through ``dataclasses.replace``, which takes several times as long, for every
        settled slot of every plan."""
        again = object.__new__(SlotDecision)
        fields = self.__dict__.copy()
        if len(fields) > _FIELD_COUNT:  # something was rendered: not carried over
            for name in _RENDERED:
                fields.pop(name, None)
        fields["now"] = now
        fields["status_updates"] = self.status_updates.copy()
        fields["condition_updates"] = self.condition_updates.copy()
        again.__dict__ = fields
        return again

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
        return self.memo.endpoint(self.slot, spec.server.port, self.settings.endpoint_template)

    @cached_property
    def status(self) -> dict[str, Any]:
        """The whole status this plan wants on the slot."""
        fields: dict[str, Any] = {
            "phase": self.phase,
            "reason": self.reason,
            "endpoint": self.endpoint,
            "gpu": self.gpu,
            "node": self.node,
            "vram": gib(self.vram) if self.vram else None,
            **self.status_updates,
            "page_cache": self.page_cache,
        }
        if self.slot.spec is not None:
            fields["fetch"] = self.fetch
        return self.memo.status(("ModelSlot", *self.slot.key), self.slot.status,
                                self.condition_updates, self.slot.generation, self.now, fields)

    @cached_property
    def template(self) -> dict[str, Any] | None:
        if self.slot.spec is None or self.template_vram is None:
            return None
        return self.memo.slot_template(self.slot.name, self.served or self.slot.spec,
                                       self.template_vram, self.settings)

    @property
    def deployment_node(self) -> str | None:
        """The node the Deployment's pods are pinned to, if any."""
        return self.node if self.gpu else self.pinned_node

    @cached_property
    def deployment(self) -> dict[str, Any] | None:
        if self.template is None:
            return None
        return children.deployment(self.namespace, self.name, self.slot.uid, self.template,
                                   self.replicas, self.deployment_node)

    @property
    def service_reaches_loading(self) -> bool | None:
        """Whether the slot's Service publishes pods that are not Ready yet (None: the
        slot has no Service), known without rendering it."""
        spec = self.slot.spec
        return None if spec is None else spec.server.readiness == "Operator"

    @cached_property
    def service(self) -> dict[str, Any] | None:
        spec = self.slot.spec
        if spec is None:
            return None
        return children.service(self.namespace, self.name, self.slot.uid, spec.server.port,
                                bool(self.service_reaches_loading))


_RENDERED = tuple(name for name, value in vars(SlotDecision).items()
                  if isinstance(value, cached_property))
"""What a :class:`SlotDecision` renders on first use and keeps."""
_FIELD_COUNT = len(dataclass_fields(SlotDecision))


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
    foreign: tuple[ForeignUse, ...] = ()
    """Foreign processes that hold memory as a reservation would
    (:mod:`hybrid_compute.plan.reservations`)."""
    at: datetime.datetime | None = None
    """The moment the plan was made for."""

    def slot(self, namespace: str, name: str) -> SlotDecision:
        return next(s for s in self.slots if (s.namespace, s.name) == (namespace, name))

    def workload(self, namespace: str, name: str) -> WorkloadDecision:
        return next(w for w in self.workloads if (w.namespace, w.name) == (namespace, name))

    def by_alias(self, alias: str) -> list[SlotDecision]:
        return [s for s in self.slots if s.alias == alias]
