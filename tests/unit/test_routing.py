"""The RoutePolicy part of the plan: ConfigMap and LiteLLM rollout, budget periods,
alias states and the policy's conditions."""

from __future__ import annotations

import datetime
from dataclasses import replace

from hybrid_compute.api.routepolicy import RoutePolicySpec, RoutePolicyStatus, Spend
from hybrid_compute.plan import plan
from hybrid_compute.plan.conditions import find, parse_conditions
from hybrid_compute.plan.routing import PolicyDecision, period_start, valid_spend
from hybrid_compute.plan.view import LiteLLMDeployment, PolicyInfo, View
from tests.simworld import SEED_SLOTS, START, World, slot

POLICY = {
    "cloudModels": [
        {"alias": "cloud/mid", "model": "gemini/gemini-2.5-flash",
         "apiKeySecretRef": {"name": "cloud-keys", "key": "gemini"}},
        {"alias": "cloud/fast", "model": "openai/gpt-4o-mini"},
    ],
    "budget": {"amount": 20, "period": "Month", "timeZone": "Pacific/Auckland"},
    "litellm": {"masterKeySecretRef": {"name": "litellm", "key": "master"}},
}


def policy(spec: dict | None = None, generation: int = 1,  # type: ignore[type-arg]
           status: RoutePolicyStatus | None = None, name: str = "hybrid") -> PolicyInfo:
    return PolicyInfo("lab", name, f"uid-{name}", generation,
                      RoutePolicySpec.model_validate(spec if spec is not None else POLICY),
                      status or RoutePolicyStatus())


def litellm(config_hash: str = "", env: frozenset[str] = frozenset(),
            ready: bool = True) -> LiteLLMDeployment:
    return LiteLLMDeployment("lab", "litellm", "litellm", config_hash, env, 1, ready)


def settled_world() -> World:
    world = World([slot(name, spec) for name, spec in SEED_SLOTS.items()])
    world.run_until(lambda: world.phase("fast") == "Ready")
    return world


def decide(view: View, now: datetime.datetime = START) -> PolicyDecision:
    return plan(view, now).policies[0]


def condition(decision: PolicyDecision, type_: str) -> tuple[str, str, str]:
    found = find(parse_conditions(decision.status["conditions"]), type_)
    assert found is not None, decision.status
    return found.status, found.reason, found.message


def test_first_plan_renders_the_config_map_and_rolls_litellm() -> None:
    view = replace(settled_world().view(), policies=(policy(generation=3),),
                   litellm={("lab", "litellm"): litellm()})
    decision = decide(view)
    assert decision.config_map is not None and decision.config_hash
    assert decision.config_map["metadata"]["annotations"] == {
        "hybridcompute.io/config-hash": decision.config_hash}
    assert set(decision.config_map["data"]) == {"config.yaml", "hybrid_router.py",
                                                "hybrid_router.json"}
    patch = decision.litellm_patch
    assert patch is not None
    template = patch["spec"]["template"]
    assert template["metadata"]["annotations"]["hybridcompute.io/config-hash"] == \
        decision.config_hash
    env = template["spec"]["containers"][0]["env"]
    assert {e["name"] for e in env} == {"HC_CLOUD_KEYS_GEMINI", "HC_LITELLM_MASTER"}
    assert all("value" not in e for e in env), "secrets are referenced, never copied"
    assert decision.status["observedGeneration"] == 3
    assert decision.status["configHash"] == decision.config_hash
    assert condition(decision, "Accepted")[0] == "True"
    assert condition(decision, "Rendered")[0] == "True"
    assert condition(decision, "Ready")[:2] == ("False", "RollingOut")
    assert [e.reason for e in decision.events] == ["ConfigRendered"]


def test_nothing_is_written_when_litellm_runs_the_current_rendering() -> None:
    first = decide(replace(settled_world().view(), policies=(policy(),)))
    digest = first.config_hash
    assert digest
    stored = RoutePolicyStatus.model_validate(first.status)
    view = replace(settled_world().view(), policies=(policy(status=stored),),
                   config_maps={("lab", "litellm-config"): digest},
                   litellm={("lab", "litellm"): litellm(
                       digest, frozenset({"HC_CLOUD_KEYS_GEMINI", "HC_LITELLM_MASTER"}))})
    decision = decide(view)
    assert decision.config_map is None and decision.litellm_patch is None
    assert decision.events == ()
    assert condition(decision, "Ready")[:2] == ("True", "Serving")


def test_a_swap_changes_neither_the_config_nor_litellm() -> None:
    world = settled_world()
    before = decide(replace(world.view(), policies=(policy(),)))
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    after = decide(replace(world.view(), policies=(policy(),)), world.now)
    assert after.config_hash == before.config_hash
    states = {a["alias"]: a for a in after.status["aliases"]}
    assert states["local/quality"]["state"] == "Local"
    assert states["local/fast"] == {"alias": "local/fast", "state": "Bridged",
                                    "target": "cloud/fast"}


def test_a_new_slot_changes_the_rendering() -> None:
    world = settled_world()
    before = decide(replace(world.view(), policies=(policy(),)))
    extra = slot("coder", {"alias": "local/coder", "model": {"path": "c.gguf"},
                           "device": "cpu"})
    after = decide(replace(world.view(), slots=(*world.view().slots, extra),
                           policies=(policy(),)))
    assert after.config_hash != before.config_hash
    assert "local/coder" in after.config_map["data"]["config.yaml"]  # type: ignore[index]


def test_slots_of_other_namespaces_are_not_routed() -> None:
    world = settled_world()
    elsewhere = slot("other", {"alias": "local/other", "model": {"path": "o.gguf"},
                               "device": "cpu"}, namespace="elsewhere")
    decision = decide(replace(world.view(), slots=(*world.view().slots, elsewhere),
                              policies=(policy(),)))
    assert "local/other" not in decision.config_map["data"]["config.yaml"]  # type: ignore[index]


def test_alias_states_name_where_each_alias_goes() -> None:
    decision = decide(replace(settled_world().view(), policies=(policy(),)))
    states = {a["alias"]: a for a in decision.status["aliases"]}
    assert states["local/fast"]["state"] == "Local"
    assert states["local/quality"] == {"alias": "local/quality", "state": "Bridged",
                                       "target": "cloud/mid"}
    assert states["local/quality-alt"] == {"alias": "local/quality-alt",
                                           "state": "Unavailable"}
    assert states["cloud/mid"] == {"alias": "cloud/mid", "state": "Cloud",
                                   "target": "gemini/gemini-2.5-flash"}


def test_missing_litellm_deployment_is_a_reason_not_an_error() -> None:
    decision = decide(replace(settled_world().view(), policies=(policy(),)))
    assert decision.litellm_patch is None
    status, reason, message = condition(decision, "Ready")
    assert (status, reason) == ("False", "DeploymentNotFound")
    assert "litellm" in message


def test_second_policy_on_the_same_config_map_is_refused() -> None:
    view = replace(settled_world().view(),
                   policies=(policy(name="a"), policy(name="b")))
    first, second = plan(view, START).policies
    assert first.config_map is not None
    assert second.config_map is None and second.litellm_patch is None
    status, reason, message = condition(second, "Rendered")
    assert (status, reason) == ("False", "ConfigMapConflict")
    assert "RoutePolicy a" in message


def test_invalid_policy_gets_a_condition_naming_the_field() -> None:
    broken = PolicyInfo("lab", "hybrid", "uid", 2, None,
                        invalid_reason="spec.budget.amount: Input should be greater than 0")
    decision = decide(replace(settled_world().view(), policies=(broken,)))
    assert decision.config_map is None
    status, reason, message = condition(decision, "Accepted")
    assert (status, reason) == ("False", "InvalidSpec")
    assert "spec.budget.amount" in message
    assert decision.status["observedGeneration"] == 2


def test_periods_start_at_local_midnight() -> None:
    now = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)  # Friday 01:00 NZDT
    auckland = "Pacific/Auckland"
    assert period_start(now, "Day", auckland) == datetime.datetime(
        2026, 12, 3, 11, 0, tzinfo=datetime.UTC)
    assert period_start(now, "Week", auckland) == datetime.datetime(
        2026, 11, 29, 11, 0, tzinfo=datetime.UTC)  # Monday 30 Nov 00:00 NZDT
    assert period_start(now, "Month", auckland) == datetime.datetime(
        2026, 11, 30, 11, 0, tzinfo=datetime.UTC)
    assert period_start(now, "Month", "UTC") == datetime.datetime(
        2026, 12, 1, tzinfo=datetime.UTC)


def test_reported_spend_adds_to_the_stored_period_and_exhausts_the_budget() -> None:
    now = datetime.datetime(2026, 12, 10, tzinfo=datetime.UTC)
    start = period_start(now, "Month", "Pacific/Auckland")
    stored = RoutePolicyStatus(spend=Spend(amount=19.5, period_start=start))
    view = replace(settled_world().view(), policies=(policy(status=stored),),
                   spend_reports={("lab", "hybrid"): 0.75})
    decision = decide(view, now)
    assert decision.budget is not None
    assert decision.budget.spent == 20.25 and decision.budget.exhausted
    assert decision.status["spend"]["amount"] == 20.25
    assert decision.status["budgetRemaining"] == -0.25
    assert decision.spend_included == 0.75


def test_a_new_period_starts_from_zero() -> None:
    last_month = datetime.datetime(2026, 10, 31, 11, 0, tzinfo=datetime.UTC)
    stored = RoutePolicyStatus(spend=Spend(amount=19.5, period_start=last_month))
    now = datetime.datetime(2026, 12, 10, tzinfo=datetime.UTC)
    decision = decide(replace(settled_world().view(), policies=(policy(status=stored),),
                              spend_reports={("lab", "hybrid"): 0.5}), now)
    assert decision.budget is not None
    assert decision.budget.spent == 0.5 and not decision.budget.exhausted
    assert decision.status["budgetRemaining"] == 19.5


def test_gpu_busy_follows_the_threshold() -> None:
    spec = {**POLICY, "routing": {"gpuBusyThreshold": 80}}
    calm = decide(replace(settled_world().view(), policies=(policy(spec),),
                          gpu_utilisation={"dreamteam/0": 80.0}))
    busy = decide(replace(settled_world().view(), policies=(policy(spec),),
                          gpu_utilisation={"dreamteam/0": 93.0}))
    assert not calm.gpu_busy and calm.status["gpuBusy"] is False
    assert busy.gpu_busy and busy.status["gpuBusy"] is True


def test_no_secret_value_reaches_the_config_map() -> None:
    decision = decide(replace(settled_world().view(), policies=(policy(),)))
    config = decision.config_map["data"]["config.yaml"]  # type: ignore[index]
    assert "os.environ/HC_CLOUD_KEYS_GEMINI" in config
    assert "os.environ/HC_LITELLM_MASTER" in config


def test_reported_spend_must_be_a_sane_amount() -> None:
    assert valid_spend(0.002) == 0.002
    assert valid_spend(3) == 3.0
    for bad in (-1, float("nan"), float("inf"), "1", True, None, 2_000_000):
        assert valid_spend(bad) is None


def test_a_namespace_the_operator_may_not_write_in_is_a_condition() -> None:
    view = replace(settled_world().view(), policies=(policy(),),
                   litellm_forbidden={"lab": "the operator may not read ConfigMap ... (403)"})
    decision = decide(view)
    assert decision.config_map is None and decision.litellm_patch is None
    status, reason, message = condition(decision, "Rendered")
    assert (status, reason) == ("False", "Forbidden")
    assert "403" in message


def test_route_counts_from_the_router_are_checked() -> None:
    from hybrid_compute.control.state_api import _route_problem

    good = {"alias": "local/quality", "target": "cloud/mid", "outcome": "bridged", "count": 3}
    assert _route_problem(good) is None
    assert "outcome" in (_route_problem({**good, "outcome": "teleported"}) or "")
    assert "count" in (_route_problem({**good, "count": 0}) or "")
    assert "count" in (_route_problem({**good, "count": True}) or "")
    assert "strings" in (_route_problem({**good, "alias": 7}) or "")
    assert _route_problem(["not", "an", "object"]) is not None
