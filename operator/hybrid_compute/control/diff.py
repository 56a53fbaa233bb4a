"""What a plan changes: the ordered writes that take the cluster from the View to the Plan.

Pure: every comparison of what the plan wants with what the View observed happens
here, and only what differs becomes a write; :mod:`hybrid_compute.control.act`
performs the list as it is. The order is part of the answer:

1. statuses that carry a new demand (``lastRequestTime``), so a demand is stored
   before anything acts on it;
2. per slot, scale-downs first: Deployment, Service, status;
3. per GpuWorkload: its child (deleted or applied), then its status;
4. per RoutePolicy: ConfigMap, LiteLLM Deployment, then the status that stores the
   reported spend;
5. Events.

Each write names its :class:`Group`: a failed write stops the rest of its group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from hybrid_compute.api.common import CrdInfo
from hybrid_compute.api.gpuworkload import GpuWorkload
from hybrid_compute.api.modelslot import ModelSlot
from hybrid_compute.api.routepolicy import RoutePolicy
from hybrid_compute.plan.outputs import ConditionUpdate, EventIntent, Plan, SlotDecision
from hybrid_compute.plan.routing import PolicyDecision
from hybrid_compute.plan.view import DeploymentInfo, SlotInfo, View, WorkloadChild
from hybrid_compute.plan.workloads import WorkloadDecision
from hybrid_compute.render.children import template_hash

GroupKind = Literal["demand", "slot", "workload", "policy", "event"]


@dataclass(frozen=True)
class Group:
    """The writes for one object in one step of the order. When one fails (the
    object changed or went away meanwhile), the rest of its group is skipped and the
    next plan starts from what is new; an Event's failure stops nothing."""

    kind: GroupKind
    namespace: str
    name: str


@dataclass(frozen=True)
class ApplyObject:
    """Server-side apply of a Deployment, Service, Job or ConfigMap."""

    manifest: dict[str, Any]
    line: str
    """What the write reports once done, for logs and tests."""
    group: Group
    resource_version: str | None = None
    """Apply only while the object is at this version: the scale-up of a Deployment
    the View saw, so one the garbage collector removed since (its slot was deleted)
    is not created again beside pods still terminating."""


@dataclass(frozen=True)
class ApplyStatus:
    """Server-side apply of the status of a ModelSlot, GpuWorkload or RoutePolicy."""

    crd: CrdInfo
    namespace: str
    name: str
    status: dict[str, Any]
    line: str
    group: Group
    repeats: Group | None = None
    """The demand write that stored this status first: this one is written only when
    that one failed."""
    stores_spend_of: PolicyDecision | None = None
    """The RoutePolicy decision whose reported spend this status holds once stored."""


@dataclass(frozen=True)
class DeleteChild:
    """Deletes a GpuWorkload's Job or Deployment whose template changed while idle."""

    kind: str
    namespace: str
    name: str
    line: str
    group: Group


@dataclass(frozen=True)
class PostEvent:
    event: EventIntent
    line: str
    group: Group


Write = ApplyObject | ApplyStatus | DeleteChild | PostEvent


class DiffMemo:
    """What one diff hands to the next, so that a pass over many unchanged objects
    costs little.

    * The stored statuses as the plan renders them, kept while their records are the
      same objects: the watch caches hand a record back unchanged until its object
      changes, and dumping a thousand statuses on every pass is most of a diff.
    * A stored status found equal to the rendered one is kept as the rendered dict
      itself: the plan hands out the same rendered dict while nothing it reads
      changed, so the next diff finds the two the same object rather than comparing
      them field by field, and one dict per status is held rather than two equal ones.
    * The slots a diff found nothing to write for, with what it read: a slot whose
      decision the plan copied from the same kept one (``SlotDecision.kept``), with
      the same record, Deployment and Service, needs no write again."""

    def __init__(self) -> None:
        self._dumps: dict[int, tuple[BaseModel, dict[str, Any]]] = {}
        self._owners: dict[int, int] = {}
        """id of a dict in ``_dumps`` -> the id of the status it is the dump of."""
        self._quiet: dict[tuple[str, str], _QuietSlot] = {}
        self._quiet_before: dict[tuple[str, str], _QuietSlot] = {}

    def start(self) -> None:
        """A new diff: what the last one found is what this one reads; only what
        this diff and the one before found is kept."""
        self._quiet_before, self._quiet = self._quiet, {}

    def dumps(self, statuses: Iterable[BaseModel]) -> list[dict[str, Any]]:
        """Each status as a dict; only the statuses asked for now are kept."""
        kept: dict[int, tuple[BaseModel, dict[str, Any]]] = {}
        owners: dict[int, int] = {}
        dumps: list[dict[str, Any]] = []
        for status in statuses:
            held = kept.get(id(status)) or self._dumps.get(id(status))
            if held is None or held[0] is not status:
                held = (status, _dump(status))
            kept[id(status)] = held
            owners[id(held[1])] = id(status)
            dumps.append(held[1])
        self._dumps, self._owners = kept, owners
        return dumps

    def quiet(self, decision: SlotDecision, observed: DeploymentInfo | None,
              service: bool | None) -> bool:
        """Whether the last diff wrote nothing for the same decision read against the
        same objects; if so, this one writes nothing either."""
        if decision.kept is None:
            return False
        held = self._quiet_before.get(decision.slot.key)
        if held is None or not held.holds(decision, observed, service):
            return False
        if held.observed is not observed:
            # Stored anew but equal: held as observed now, so found by identity next.
            held = replace(held, observed=observed)
        self._quiet[decision.slot.key] = held
        return True

    def wrote_nothing(self, decision: SlotDecision, observed: DeploymentInfo | None,
                      service: bool | None) -> None:
        if decision.kept is not None:
            self._quiet[decision.slot.key] = _QuietSlot.of(decision, observed, service)

    def same(self, stored: dict[str, Any], rendered: dict[str, Any]) -> bool:
        """``stored == rendered``, known at once for a pair found equal before: a
        stored dump found equal is replaced by the rendered dict (which neither side
        changes once made), so the next diff is handed the very object."""
        if stored is rendered:
            return True
        if stored != rendered:
            return False
        owner = self._owners.get(id(stored))
        held = self._dumps.get(owner) if owner is not None else None
        if owner is not None and held is not None and held[1] is stored:
            self._dumps[owner] = (held[0], rendered)
            del self._owners[id(stored)]
            self._owners[id(rendered)] = owner
        return True


@dataclass(frozen=True, eq=False)
class _QuietSlot:
    """What a slot's writes are made from, besides what the kept decision holds: the
    decision's own additions, the slot record and the objects observed."""

    kept: SlotDecision
    slot: SlotInfo
    status_updates: dict[str, Any]
    condition_updates: list[ConditionUpdate]
    page_cache: object
    observed: DeploymentInfo | None
    service: bool | None

    @classmethod
    def of(cls, decision: SlotDecision, observed: DeploymentInfo | None,
           service: bool | None) -> _QuietSlot:
        assert decision.kept is not None
        return cls(decision.kept, decision.slot, decision.status_updates,
                   decision.condition_updates, decision.page_cache, observed, service)

    def holds(self, decision: SlotDecision, observed: DeploymentInfo | None,
              service: bool | None) -> bool:
        """Whether ``decision``, read against ``observed`` and ``service``, is what was
        held. Identity first: on a settled pass every part is the same object."""
        return (self.kept is decision.kept and self.slot is decision.slot
                and self.service == service
                and (self.observed is observed or self.observed == observed)
                and (self.page_cache is decision.page_cache
                     or self.page_cache == decision.page_cache)
                and self.status_updates == decision.status_updates
                and self.condition_updates == decision.condition_updates)


def diff(plan: Plan, view: View, memo: DiffMemo | None = None) -> list[Write]:
    """The writes that make the cluster read as ``plan``, in the order to write them.
    ``memo`` carries what one diff hands to the next."""
    memo = memo or DiffMemo()
    memo.start()
    dumps = memo.dumps([*(slot.status for slot in view.slots),
                        *(workload.status for workload in view.workloads)])
    stored = {slot.key: dump for slot, dump in zip(view.slots, dumps, strict=False)}
    stored_workloads = {workload.key: dump for workload, dump
                        in zip(view.workloads, dumps[len(view.slots):], strict=True)}
    deployments = _first_per_key(view.deployments, lambda d: (d.namespace, d.owner))
    services = view.services
    quiet = {decision.slot.key for decision in plan.slots
             if memo.quiet(decision, deployments.get(decision.slot.key),
                           services.get(decision.slot.key))}
    demands = _demand_statuses(plan, stored, quiet)
    demanded = {(write.namespace, write.name) for write in demands}
    writes: list[Write] = list(demands)
    # Scale-downs first, so VRAM is released before anything else asks for it.
    for decision in sorted(plan.slots, key=lambda d: d.replicas):
        key = decision.slot.key
        if key in quiet:
            continue
        observed = deployments.get(key)
        slot_writes = _slot_writes(decision, view, observed, stored.get(key, {}),
                                   key in demanded, memo)
        if not slot_writes and key not in demanded:
            memo.wrote_nothing(decision, observed, services.get(key))
        writes += slot_writes
    children = _first_per_key(view.workload_children, lambda c: (c.namespace, c.owner))
    for workload in plan.workloads:
        key = (workload.namespace, workload.name)
        writes += _workload_writes(workload, children.get(key),
                                   stored_workloads.get(key, {}), memo)
    for policy in plan.policies:
        writes += _policy_writes(policy)
    writes += [PostEvent(event, f"event {event.reason} {event.namespace}/{event.name}",
                         Group("event", event.namespace, event.name))
               for event in plan.events]
    return writes


def _demand_statuses(plan: Plan, stored: dict[tuple[str, str], dict[str, Any]],
                     quiet: set[tuple[str, str]]) -> list[ApplyStatus]:
    """A demand lives in the operator's memory until a status holds it: it is
    recorded before it is acted on, or an operator killed between evicting the old
    slot and writing the new one's status forgets why it evicted anything."""
    writes: list[ApplyStatus] = []
    for decision in plan.slots:
        if decision.slot.key in quiet:
            continue
        namespace, name = decision.namespace, decision.name
        current = stored.get((namespace, name))
        heard = decision.status.get("lastRequestTime")
        if heard and current is not None and current.get("lastRequestTime") != heard:
            writes.append(ApplyStatus(
                ModelSlot.crd, namespace, name, decision.status,
                f"status {namespace}/{name} phase={decision.phase} (demand)",
                Group("demand", namespace, name)))
    return writes


def _slot_writes(decision: SlotDecision, view: View, observed: DeploymentInfo | None,
                 current: dict[str, Any], demanded: bool, memo: DiffMemo
                 ) -> list[Write]:
    namespace, name = decision.namespace, decision.name
    group = Group("slot", namespace, name)
    writes: list[Write] = []
    if decision.template is not None and not _deployment_matches(decision, observed):
        desired = decision.deployment
        assert desired is not None
        precondition = (observed.resource_version
                        if observed is not None and decision.replicas > 0 else None)
        writes.append(ApplyObject(
            desired, f"deployment {namespace}/{name} replicas={desired['spec']['replicas']}",
            group, precondition))
    reaches_loading = decision.service_reaches_loading
    if reaches_loading is not None and view.services.get((namespace, name)) != reaches_loading:
        service = decision.service
        assert service is not None
        writes.append(ApplyObject(service, f"service {namespace}/{name}", group))
    if not memo.same(current, decision.status):
        writes.append(ApplyStatus(
            ModelSlot.crd, namespace, name, decision.status,
            f"status {namespace}/{name} phase={decision.phase}", group,
            repeats=Group("demand", namespace, name) if demanded else None))
    return writes


def _deployment_matches(decision: SlotDecision, observed: DeploymentInfo | None) -> bool:
    """Compared on what the Deployment would carry, without rendering it: most slots
    match on most passes."""
    template = decision.template
    if observed is None or template is None:
        return False
    node = decision.deployment_node or _hostname(template)
    return (observed.replicas == decision.replicas
            and observed.template_hash == template_hash(template)
            and observed.node == node)


def _workload_writes(decision: WorkloadDecision, child: WorkloadChild | None,
                     current: dict[str, Any], memo: DiffMemo) -> list[Write]:
    namespace, name = decision.namespace, decision.name
    key = f"{namespace}/{name}"
    group = Group("workload", namespace, name)
    writes: list[Write] = []
    if decision.recreate_child and child is not None:
        writes.append(DeleteChild(child.kind, namespace, name,
                                  f"deleted {child.kind.lower()} {key} (template changed)",
                                  group))
    elif decision.has_child and not _child_matches(decision, child):
        desired = decision.child
        assert desired is not None
        writes.append(ApplyObject(
            desired, f"{desired['kind'].lower()} {key} active={decision.active}", group))
    if not memo.same(current, decision.status):
        writes.append(ApplyStatus(GpuWorkload.crd, namespace, name, decision.status,
                                  f"status {key} phase={decision.phase}", group))
    return writes


def _child_matches(decision: WorkloadDecision, observed: WorkloadChild | None) -> bool:
    """Compared on what the child would carry, without rendering it."""
    template = decision.template
    if observed is None or template is None:
        return False
    return (observed.active == decision.active
            and observed.node == (decision.child_node or _hostname(template))
            and observed.template_hash == template_hash(template))


def _policy_writes(decision: PolicyDecision) -> list[Write]:
    """ConfigMap first, then the Deployment that loads it, then the status; the
    status carries reported spend, so it is written last, once the rest held."""
    namespace, name = decision.namespace, decision.name
    group = Group("policy", namespace, name)
    config = (decision.config_hash or "")[:12]
    writes: list[Write] = []
    if decision.config_map is not None:
        writes.append(ApplyObject(
            decision.config_map,
            f"configmap {namespace}/{decision.config_map['metadata']['name']} config={config}",
            group))
    if decision.litellm_patch is not None:
        writes.append(ApplyObject(
            decision.litellm_patch,
            f"deployment {namespace}/{decision.litellm_patch['metadata']['name']} "
            f"config={config}", group))
    if _dump(decision.policy.status) != decision.status:
        writes.append(ApplyStatus(RoutePolicy.crd, namespace, name, decision.status,
                                  f"status routepolicy {namespace}/{name}", group,
                                  stores_spend_of=decision))
    return writes


def _hostname(template: dict[str, Any]) -> str | None:
    hostname: str | None = template["spec"].get("nodeSelector", {}).get(
        "kubernetes.io/hostname")
    return hostname


def _dump(status: BaseModel) -> dict[str, Any]:
    """A stored status as the plan renders one, to compare the two."""
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)


ObjectT = TypeVar("ObjectT")


def _first_per_key(objects: Iterable[ObjectT], key: Callable[[ObjectT], tuple[str, str]]
                   ) -> dict[tuple[str, str], ObjectT]:
    """(namespace, name) -> the first object the View lists under it."""
    found: dict[tuple[str, str], ObjectT] = {}
    for item in objects:
        found.setdefault(key(item), item)
    return found
