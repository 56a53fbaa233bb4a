"""The RoutePolicy part of the plan: what LiteLLM is given, whether the LiteLLM
Deployment runs it, how much of the cloud budget is left, and the policy's status.

Pure like the rest of :func:`hybrid_compute.plan.plan`. A policy routes to the
ModelSlots of its own namespace. Its rendering goes into the ConfigMap it names;
LiteLLM reads its config only at start, so the Deployment's pod template carries
the rendering's hash and a new hash rolls it. Swaps change nothing here (a slot's
endpoint is its Service), so LiteLLM restarts only when the policy or the set of
slots changes.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from hybrid_compute.api.common import API_VERSION
from hybrid_compute.api.labels import (
    CONFIG_HASH_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POLICY_LABEL,
)
from hybrid_compute.api.routepolicy import (
    AliasState,
    Budget,
    BudgetPeriod,
    RoutePolicySpec,
    Spend,
)
from hybrid_compute.plan.conditions import render_status
from hybrid_compute.plan.conflicts import Key, Refusal
from hybrid_compute.plan.outputs import ACCEPTED, ConditionUpdate, EventIntent
from hybrid_compute.plan.view import LiteLLMDeployment, PolicyInfo, SlotInfo, View
from hybrid_compute.render import litellm_config

ROLLOUT_CHECK = datetime.timedelta(seconds=2)
UNBUDGETED_PERIOD: BudgetPeriod = "Month"


@dataclass(frozen=True)
class SlotRouting:
    """What a policy needs to know of one slot's decision."""

    namespace: str
    alias: str | None
    ready: bool


@dataclass(frozen=True)
class BudgetState:
    """Cloud spend in the current period against the policy's budget."""

    period: BudgetPeriod
    period_start: datetime.datetime
    spent: float
    amount: float | None
    """None: no budget, spend is only reported."""

    @property
    def remaining(self) -> float | None:
        return None if self.amount is None else round(self.amount - self.spent, 6)

    @property
    def exhausted(self) -> bool:
        return self.amount is not None and self.spent >= self.amount

    def document(self) -> dict[str, Any]:
        return {"period": self.period,
                "periodStart": self.period_start.isoformat().replace("+00:00", "Z"),
                "spent": round(self.spent, 6), "amount": self.amount,
                "remaining": self.remaining, "exhausted": self.exhausted}


@dataclass(frozen=True)
class PolicyDecision:
    """Everything act applies for one RoutePolicy."""

    policy: PolicyInfo
    status: dict[str, Any]
    config_map: dict[str, Any] | None = None
    """The ConfigMap to apply; None when it already holds this rendering."""
    litellm_patch: dict[str, Any] | None = None
    """The server-side apply of the hash annotation and secret env to the LiteLLM
    Deployment; None when it already runs this rendering."""
    config_hash: str | None = None
    budget: BudgetState | None = None
    gpu_busy: bool = False
    spend_included: float = 0.0
    """Reported spend this status adds to what was stored."""
    events: tuple[EventIntent, ...] = ()
    recheck_at: datetime.datetime | None = None

    @property
    def namespace(self) -> str:
        return self.policy.namespace

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def key(self) -> tuple[str, str]:
        return self.policy.key


def period_start(now: datetime.datetime, period: BudgetPeriod, time_zone: str
                 ) -> datetime.datetime:
    """The start of the calendar period containing ``now`` in ``time_zone``, in UTC."""
    zone = ZoneInfo(time_zone)
    local = now.astimezone(zone)
    day = local.date()
    if period == "Week":
        day -= datetime.timedelta(days=day.weekday())
    elif period == "Month":
        day = day.replace(day=1)
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=zone)
    return start.astimezone(datetime.UTC)


def budget_state(policy: PolicyInfo, reported: float, now: datetime.datetime
                 ) -> BudgetState:
    """This period's spend: what the status holds (unless a new period began) plus
    what the router reported since."""
    budget: Budget | None = policy.spec.budget if policy.spec else None
    period = budget.period if budget else UNBUDGETED_PERIOD
    start = period_start(now, period, budget.time_zone if budget else "UTC")
    stored = policy.status.spend
    carried = stored.amount if stored and stored.period_start == start else 0.0
    return BudgetState(period, start, carried + reported, budget.amount if budget else None)


def gpu_busy(view: View, threshold: int) -> bool:
    return any(value > threshold for value in view.gpu_utilisation.values())


def _alias_states(spec: RoutePolicySpec, slots: list[SlotRouting],
                  chains: dict[str, list[str]]) -> list[AliasState]:
    states: list[AliasState] = []
    by_alias: dict[str, list[SlotRouting]] = {}
    for slot in slots:
        if slot.alias:
            by_alias.setdefault(slot.alias, []).append(slot)
    for alias, members in sorted(by_alias.items()):
        if any(m.ready for m in members):
            states.append(AliasState(alias=alias, state="Local", target=alias))
        elif chains.get(alias):
            states.append(AliasState(alias=alias, state="Bridged", target=chains[alias][0]))
        else:
            states.append(AliasState(alias=alias, state="Unavailable"))
    for alias in sorted({m.alias for m in spec.cloud_models} - set(by_alias)):
        models = sorted(m.model for m in spec.cloud_models if m.alias == alias)
        states.append(AliasState(alias=alias, state="Cloud", target=", ".join(models)))
    return states


def config_map_manifest(policy: PolicyInfo, spec: RoutePolicySpec, files: dict[str, str],
                        digest: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": spec.litellm.config_map_name,
            "namespace": policy.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, POLICY_LABEL: policy.name},
            "annotations": {CONFIG_HASH_ANNOTATION: digest},
            # Deleting the policy takes its rendering with it.
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "RoutePolicy",
                                 "name": policy.name, "uid": policy.uid,
                                 "controller": True, "blockOwnerDeletion": False}],
        },
        "data": files,
    }


def litellm_patch(deployment: LiteLLMDeployment, spec: RoutePolicySpec, digest: str
                  ) -> dict[str, Any]:
    """Only the fields the operator owns on a Deployment someone else created: the
    hash that rolls it and the env that carries the Secret references."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment.name, "namespace": deployment.namespace},
        "spec": {"template": {
            "metadata": {"annotations": {CONFIG_HASH_ANNOTATION: digest}},
            "spec": {"containers": [{"name": deployment.container,
                                     "env": litellm_config.secret_env(spec)}]},
        }},
    }


def _claimed_config_maps(policies: Iterable[PolicyInfo], refused: Mapping[Key, Refusal]
                         ) -> dict[tuple[str, str], str]:
    """Which policy owns each ConfigMap name: the first accepted one by name, so a
    second policy naming the same ConfigMap cannot make two renderings fight."""
    owners: dict[tuple[str, str], str] = {}
    for policy in sorted(policies, key=lambda p: p.key):
        if policy.spec is not None and policy.key not in refused:
            owners.setdefault((policy.namespace, policy.spec.litellm.config_map_name),
                              policy.name)
    return owners


def plan_policies(view: View, slots: list[SlotRouting], now: datetime.datetime,
                  refused: Mapping[Key, Refusal] | None = None) -> list[PolicyDecision]:
    """``refused``: the policies :mod:`.conflicts` refuses, which render nothing."""
    refused = refused or {}
    owners = _claimed_config_maps(view.policies, refused)
    return [_decide_policy(policy, view, slots, owners, now, refused.get(policy.key))
            for policy in sorted(view.policies, key=lambda p: p.key)]


def _decide_policy(policy: PolicyInfo, view: View, slot_routing: list[SlotRouting],
                   owners: dict[tuple[str, str], str], now: datetime.datetime,
                   refusal: Refusal | None = None) -> PolicyDecision:
    reported = view.spend_reports.get(policy.key, 0.0)
    budget = budget_state(policy, reported, now)
    spend_fields: dict[str, Any] = {
        "spend": Spend(amount=round(budget.spent, 6), period_start=budget.period_start),
        "budget_remaining": budget.remaining,
    }
    spec = policy.spec
    if spec is None or refusal is not None:
        reason, message, what = (
            ("InvalidSpec", policy.invalid_reason or "invalid spec", "an invalid spec")
            if refusal is None else (refusal.reason, refusal.message, "a refused policy"))
        updates = [
            ConditionUpdate("Accepted", False, reason, message),
            ConditionUpdate("Rendered", False, reason, f"nothing is rendered for {what}"),
            ConditionUpdate("Ready", False, reason, f"nothing is rendered for {what}")]
        status = render_status(policy.status, updates, policy.generation, now, spend_fields)
        return PolicyDecision(policy, status, budget=budget, spend_included=reported)

    busy = gpu_busy(view, spec.routing.gpu_busy_threshold)
    namespace_slots = [s for s in view.slots if s.namespace == policy.namespace]
    routing = [s for s in slot_routing if s.namespace == policy.namespace]
    chains = litellm_config.fallbacks(spec, namespace_slots)
    fields = {**spend_fields, "gpu_busy": busy,
              "aliases": _alias_states(spec, routing, chains)}
    problem = _render_problem(policy, spec, view, owners)
    if problem is not None:
        reason, message = problem
        updates = [ACCEPTED, ConditionUpdate("Rendered", False, reason, message),
                   ConditionUpdate("Ready", False, reason, message)]
        status = render_status(policy.status, updates, policy.generation, now, fields)
        return PolicyDecision(policy, status, budget=budget, gpu_busy=busy,
                              spend_included=reported)
    return _rendered(policy, spec, view, namespace_slots, fields, budget, busy, reported, now)


def _render_problem(policy: PolicyInfo, spec: RoutePolicySpec, view: View,
                    owners: dict[tuple[str, str], str]) -> tuple[str, str] | None:
    """Why the policy cannot render its ConfigMap (reason, message), or None."""
    forbidden = view.litellm_forbidden.get(policy.namespace)
    if forbidden:
        return "Forbidden", forbidden
    owner = owners.get((policy.namespace, spec.litellm.config_map_name))
    if owner != policy.name:
        return "ConfigMapConflict", (
            f"ConfigMap {spec.litellm.config_map_name} is rendered by RoutePolicy "
            f"{owner}; name another ConfigMap in spec.litellm.configMapName")
    return None


def _rendered(policy: PolicyInfo, spec: RoutePolicySpec, view: View,
              namespace_slots: list[SlotInfo], fields: dict[str, Any], budget: BudgetState,
              busy: bool, reported: float, now: datetime.datetime) -> PolicyDecision:
    """A policy that renders its ConfigMap, and whether LiteLLM runs the rendering."""
    files = litellm_config.config_files(spec, _sorted(namespace_slots),
                                        view.settings.endpoint_template,
                                        f"{policy.namespace}/{policy.name}")
    digest = litellm_config.config_hash(files)
    config_map = None
    if view.config_maps.get((policy.namespace, spec.litellm.config_map_name)) != digest:
        config_map = config_map_manifest(policy, spec, files, digest)
    deployment = view.litellm.get((policy.namespace, spec.litellm.deployment_name))
    ready, patch, recheck = _rollout(policy, spec, deployment, digest, now)
    updates = [ACCEPTED,
               ConditionUpdate("Rendered", True, "Rendered",
                               f"config {digest[:12]} in ConfigMap "
                               f"{spec.litellm.config_map_name}"),
               ready]
    status = render_status(policy.status, updates, policy.generation, now,
                           {**fields, "config_hash": digest})
    events: tuple[EventIntent, ...] = ()
    if policy.status.config_hash != digest:
        events = (EventIntent(policy.namespace, policy.name, "Normal", "ConfigRendered",
                              f"LiteLLM config {digest[:12]} written to ConfigMap "
                              f"{spec.litellm.config_map_name}; "
                              f"{spec.litellm.deployment_name} restarts to load it",
                              kind="RoutePolicy"),)
    return PolicyDecision(policy, status, config_map, patch, digest, budget, busy, reported,
                          events, recheck)


def _rollout(policy: PolicyInfo, spec: RoutePolicySpec, deployment: LiteLLMDeployment | None,
             digest: str, now: datetime.datetime
             ) -> tuple[ConditionUpdate, dict[str, Any] | None, datetime.datetime | None]:
    """The Ready condition, the Deployment patch that rolls LiteLLM onto the
    rendering, and when to look again."""
    wanted_env = {entry["name"] for entry in litellm_config.secret_env(spec)}
    if deployment is None:
        return ConditionUpdate(
            "Ready", False, "DeploymentNotFound",
            f"Deployment {spec.litellm.deployment_name} not found in {policy.namespace}; "
            "install LiteLLM (the Helm chart does) or set spec.litellm.deploymentName"
        ), None, now + ROLLOUT_CHECK * 5
    if deployment.config_hash != digest or deployment.env_names != wanted_env:
        return (ConditionUpdate("Ready", False, "RollingOut",
                                f"restarting {deployment.name} with config {digest[:12]}"),
                litellm_patch(deployment, spec, digest), now + ROLLOUT_CHECK)
    if not deployment.updated_ready:
        return (ConditionUpdate("Ready", False, "RollingOut",
                                f"waiting for {deployment.name} to run config {digest[:12]}"),
                None, now + ROLLOUT_CHECK)
    return (ConditionUpdate("Ready", True, "Serving",
                            f"{deployment.name} serves config {digest[:12]}"), None, None)


def _sorted(slots: list[SlotInfo]) -> list[SlotInfo]:
    return sorted(slots, key=lambda s: s.key)


def valid_spend(amount: object) -> float | None:
    """A reported spend: a finite, non-negative number of USD, else None."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        return None
    value = float(amount)
    if not math.isfinite(value) or value < 0 or value > 1_000_000:
        return None
    return value
