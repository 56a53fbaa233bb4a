"""Rules across objects: ModelSlots and RoutePolicies that are each valid but
together would break a promise of the product.

* **AliasConflict**: an alias a ModelSlot serves names that slot alone in the whole
  cluster: no other ModelSlot (in any namespace: the router's demand signals and
  the operator's state know slots by alias) and no RoutePolicy cloud model may use
  it. Two deployments under one LiteLLM alias are balanced between, so a local
  alias that is also a cloud model could carry a private request off the box.
* **DefaultConflict**: ``default: true`` slots all compete for the same GPU pool
  (the GPU nodes; a slot names no node): at most one per GPU node.
* **UnknownAlias**: in a namespace with a RoutePolicy, a fallback (the policy's, or a
  slot's ``spec.fallback``), a task rule or a route changed from its default names
  an alias that no ModelSlot and no cloud model of a RoutePolicy there serves.
* **FallbackCycle**: the fallback chains a policy renders lead back to where they
  started.

Of two objects that conflict, the later (by creation time, then namespace and name;
an object without a creation time, as the admission webhook sees the one being
applied, counts as the latest) is refused: ``Accepted=False`` with the reason
naming the other, left out of the plan (no GPU) and out of every LiteLLM config,
while the earlier keeps serving. :func:`judge` is pure; the plan runs it at every
pass and the admission webhook at apply time.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hybrid_compute.api.routepolicy import RoutePolicySpec, Routes
from hybrid_compute.plan.conditions import find
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.outputs import ConditionUpdate, EventIntent, SlotDecision
from hybrid_compute.plan.view import DeploymentInfo, PolicyInfo, SlotInfo, View
from hybrid_compute.render import litellm_config

Key = tuple[str, str]
ConflictReason = Literal["AliasConflict", "DefaultConflict", "UnknownAlias", "FallbackCycle"]
_LATEST = datetime.datetime.max.replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Refusal:
    """Why an object is refused, for its Accepted condition and the webhook."""

    reason: ConflictReason
    message: str
    """Names the object it conflicts with, where there is one."""


@dataclass(frozen=True)
class Verdicts:
    """The refused objects; every other one is accepted."""

    slots: dict[Key, Refusal] = field(default_factory=dict)
    policies: dict[Key, Refusal] = field(default_factory=dict)
    refused_slots: tuple[SlotInfo, ...] = ()
    """The refused slots as observed, which the plan decides apart."""

    def accepted(self, view: View) -> View:
        """``view`` without the refused slots: what the rest of the plan sees."""
        if not self.slots:
            return view
        return dataclasses.replace(
            view, slots=tuple(s for s in view.slots if s.key not in self.slots))


def _order(created: datetime.datetime | None, key: Key, kind: str
           ) -> tuple[datetime.datetime, str, str, str]:
    return (created or _LATEST, key[0], key[1], kind)


def _slot_label(slot: SlotInfo) -> str:
    return f"ModelSlot {slot.namespace}/{slot.name}"


def _policy_label(policy: PolicyInfo) -> str:
    return f"RoutePolicy {policy.namespace}/{policy.name}"


def judge(slots: Sequence[SlotInfo], policies: Sequence[PolicyInfo], gpu_nodes: int
          ) -> Verdicts:
    """Which slots and policies are refused. Objects with an invalid spec are the
    schema's business and take part in nothing here."""
    verdicts = Verdicts()
    _claim_aliases(slots, policies, gpu_nodes, verdicts)
    _check_references(slots, policies, verdicts)
    refused = tuple(s for s in slots if s.key in verdicts.slots)
    return dataclasses.replace(verdicts, refused_slots=refused)


def judge_view(view: View, memo: PlanMemo | None = None) -> Verdicts:
    """:func:`judge` of the view's objects; with ``memo``, the previous plan's verdicts
    while the slots' specs and the policies are the same objects (nothing is changed
    after). A verdict reads a slot's spec, name and creation, never its status, and
    the watch caches keep a slot's spec object while only its status changes: the
    status writes of a swap do not judge every slot again. The refused slots are
    handed out as observed now."""
    inputs = (view.slots, view.policies, len(view.nodes))
    if memo is None:
        return judge(*inputs)
    verdicts = memo.while_specs_unchanged("verdicts", view.slots,
                                          (view.policies, len(view.nodes)), judge, *inputs)
    if verdicts.slots:
        # The refused slots as observed now: their statuses are written from these.
        observed = tuple(slot for slot in view.slots if slot.key in verdicts.slots)
        if observed != verdicts.refused_slots:
            verdicts = dataclasses.replace(verdicts, refused_slots=observed)
    return verdicts


def _claim_aliases(slots: Sequence[SlotInfo], policies: Sequence[PolicyInfo],
                   gpu_nodes: int, verdicts: Verdicts) -> None:
    """Aliases and the default role are claimed in creation order; a later claim
    on what an accepted object holds is refused."""
    entries: list[tuple[tuple[datetime.datetime, str, str, str], SlotInfo | PolicyInfo]] = [
        (_order(s.created, s.key, "ModelSlot"), s) for s in slots if s.spec is not None]
    entries += [(_order(p.created, p.key, "RoutePolicy"), p)
                for p in policies if p.spec is not None]
    local: dict[str, SlotInfo] = {}
    cloud: dict[str, PolicyInfo] = {}
    defaults: list[SlotInfo] = []
    default_limit = max(1, gpu_nodes)
    for _, entry in sorted(entries, key=lambda e: e[0]):
        if isinstance(entry, SlotInfo):
            refusal = _slot_claim(entry, local, cloud, defaults, default_limit)
            if refusal is not None:
                verdicts.slots[entry.key] = refusal
            continue
        assert entry.spec is not None
        aliases = sorted({m.alias for m in entry.spec.cloud_models})
        taken = [alias for alias in aliases if alias in local]
        if taken:
            verdicts.policies[entry.key] = Refusal(
                "AliasConflict",
                f"spec.cloudModels uses alias {taken[0]}, which {_slot_label(local[taken[0]])} "
                "serves locally; a local alias cannot also be a cloud model (LiteLLM would "
                "balance requests for it, private ones too, between the two): rename the "
                "cloud model's alias")
            continue
        for alias in aliases:
            cloud.setdefault(alias, entry)


def _slot_claim(slot: SlotInfo, local: dict[str, SlotInfo], cloud: dict[str, PolicyInfo],
                defaults: list[SlotInfo], default_limit: int) -> Refusal | None:
    spec = slot.spec
    assert spec is not None
    if spec.alias in local:
        return Refusal("AliasConflict",
                       f"alias {spec.alias} is already served by {_slot_label(local[spec.alias])}; "
                       "an alias names one ModelSlot in the whole cluster: choose another "
                       "spec.alias")
    if spec.alias in cloud:
        owner = _policy_label(cloud[spec.alias])
        return Refusal("AliasConflict",
                       f"alias {spec.alias} is a cloud model of {owner}; "
                       "a local alias cannot also be a cloud model (LiteLLM would balance "
                       "requests for it, private ones too, between the two): choose another "
                       "spec.alias")
    if spec.default and len(defaults) >= default_limit:
        holders = ", ".join(_slot_label(d) for d in defaults)
        return Refusal("DefaultConflict",
                       f"{holders} already {'is' if len(defaults) == 1 else 'are'} the default "
                       f"slot of the GPU pool (at most one per GPU node, {default_limit} "
                       "here): set spec.default to false")
    local[spec.alias] = slot
    if spec.default:
        defaults.append(slot)
    return None


def _changed_routes(spec: RoutePolicySpec) -> list[tuple[str, str]]:
    """(field, alias) of the routes the policy changed from their defaults: the
    defaults name the seed's aliases, which a policy need not all define."""
    routes = spec.routing.routes
    return [(f"spec.routing.routes.{info.alias or name}", getattr(routes, name))
            for name, info in Routes.model_fields.items()
            if getattr(routes, name) != info.default]


def _references(spec: RoutePolicySpec) -> Iterable[tuple[str, str]]:
    """(field, alias) of every alias the policy names besides its cloud models."""
    for index, fallback in enumerate(spec.fallbacks):
        yield f"spec.fallbacks[{index}].alias", fallback.alias
        for alias in fallback.to:
            yield f"spec.fallbacks[{index}].to", alias
    for task, alias in sorted(spec.routing.tasks.items()):
        yield f"spec.routing.tasks.{task}", alias
    yield from _changed_routes(spec)


def _unknown(field_name: str, alias: str, namespace: str) -> Refusal:
    return Refusal("UnknownAlias",
                   f"{field_name} names {alias}, which no ModelSlot and no RoutePolicy cloud "
                   f"model in namespace {namespace} serves")


def _check_references(slots: Sequence[SlotInfo], policies: Sequence[PolicyInfo],
                      verdicts: Verdicts) -> None:
    """Unknown aliases and fallback cycles, where a RoutePolicy renders them. What
    exists counts whether accepted or not, so one refusal does not cascade."""
    for namespace in sorted({p.namespace for p in policies if p.spec is not None}):
        own_slots = [s for s in slots if s.namespace == namespace and s.spec is not None]
        own_policies = [p for p in policies if p.namespace == namespace and p.spec is not None]
        known = {s.spec.alias for s in own_slots if s.spec is not None}
        known |= {m.alias for p in own_policies if p.spec is not None
                  for m in p.spec.cloud_models}
        for policy in own_policies:
            assert policy.spec is not None
            if policy.key in verdicts.policies:
                continue
            missing = next(((f, a) for f, a in _references(policy.spec) if a not in known),
                           None)
            if missing is not None:
                verdicts.policies[policy.key] = _unknown(*missing, namespace)
        for slot in own_slots:
            assert slot.spec is not None
            fallback = slot.spec.fallback
            if slot.key not in verdicts.slots and fallback and fallback not in known:
                verdicts.slots[slot.key] = _unknown("spec.fallback", fallback, namespace)
        for policy in own_policies:
            if policy.key not in verdicts.policies:
                _break_cycles(policy, own_slots, verdicts)


def find_cycle(chains: Mapping[str, Sequence[str]]) -> list[str] | None:
    """The aliases of one cycle in the fallback chains (the first repeated at the
    end), or None."""
    done: set[str] = set()
    for start in sorted(chains):
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            alias, index = stack.pop()
            if index == 0:
                if alias in on_path:
                    return [*path[path.index(alias):], alias]
                if alias in done:
                    continue
                path.append(alias)
                on_path.add(alias)
            targets = chains.get(alias, ())
            if index < len(targets):
                stack.append((alias, index + 1))
                stack.append((targets[index], 0))
            else:
                done.add(alias)
                on_path.discard(alias)
                path.pop()
    return None


def _break_cycles(policy: PolicyInfo, slots: list[SlotInfo], verdicts: Verdicts) -> None:
    """Refuses the latest object that contributes to a cycle in the chains the
    policy renders, until none is left."""
    spec = policy.spec
    assert spec is not None
    policy_sources = {f.alias for f in spec.fallbacks}
    while True:
        rendered = [s for s in slots if s.key not in verdicts.slots]
        cycle = find_cycle(litellm_config.fallbacks(spec, rendered))
        if cycle is None:
            return
        contributors: list[tuple[tuple[datetime.datetime, str, str, str], str, Key | None]]
        contributors = [(_order(policy.created, policy.key, "RoutePolicy"),
                         _policy_label(policy), None)] if set(cycle) & policy_sources else []
        contributors += [(_order(s.created, s.key, "ModelSlot"), _slot_label(s), s.key)
                         for s in rendered if s.spec is not None and s.spec.alias in cycle
                         and s.spec.alias not in policy_sources]
        contributors.sort(key=lambda c: c[0])
        *others, (_, _, latest) = contributors
        path = " -> ".join(cycle)
        named = ", ".join(label for _, label, _ in others)
        refusal = Refusal("FallbackCycle",
                          f"fallbacks form a cycle {path}"
                          + (f" with {named}" if named else "")
                          + ": a fallback chain must end")
        if latest is None:
            verdicts.policies[policy.key] = refusal
            return
        verdicts.slots[latest] = refusal


def refused_decisions(verdicts: Verdicts, deployments: Mapping[Key, DeploymentInfo],
                      view: View, memo: PlanMemo, now: datetime.datetime
                      ) -> tuple[list[SlotDecision], list[EventIntent]]:
    """A refused slot gives back its GPU: its Deployment (where one exists) is
    scaled to 0 on the template it has, and its status says why."""
    decisions: list[SlotDecision] = []
    events: list[EventIntent] = []
    for slot in verdicts.refused_slots:
        refusal = verdicts.slots[slot.key]
        deployment = deployments.get(slot.key)
        conditions = [ConditionUpdate("Accepted", False, refusal.reason, refusal.message),
                      ConditionUpdate("Ready", False, refusal.reason, refusal.message)]
        decisions.append(SlotDecision(
            slot, view.settings, now, "Failed", f"refused: {refusal.message}", 0, memo,
            template_vram=deployment.vram_bytes if deployment else None,
            pinned_node=deployment.node if deployment else None,
            condition_updates=conditions, refused=True))
        accepted = find(slot.status.conditions, "Accepted")
        if accepted is None or accepted.reason != refusal.reason:
            events.append(EventIntent(slot.namespace, slot.name, "Warning", refusal.reason,
                                      refusal.message))
    return decisions, events
