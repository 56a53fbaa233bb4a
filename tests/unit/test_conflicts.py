"""Rules across objects at reconcile time: of two conflicting objects the later is
refused (Accepted=False naming the other), left out of the plan and of LiteLLM's
config, and the earlier keeps serving."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_compute.api.routepolicy import RoutePolicySpec
from hybrid_compute.plan import Plan, plan
from hybrid_compute.plan.conditions import find, parse_conditions
from hybrid_compute.plan.conflicts import find_cycle, judge
from hybrid_compute.plan.objects import policy_from_object, slot_from_object
from hybrid_compute.plan.view import DeploymentInfo, PolicyInfo, SlotInfo, View
from hybrid_compute.render.litellm_config import CONFIG_KEY
from tests.simworld import START, World, dreamteam, slot

EARLY = START - datetime.timedelta(days=2)
LATE = START - datetime.timedelta(days=1)


def made(info: Any, created: datetime.datetime) -> Any:
    return replace(info, created=created)


def gpu_slot(name: str, alias: str, namespace: str = "lab", **extra: Any) -> SlotInfo:
    return slot(name, {"alias": alias, "model": {"path": f"{name}.gguf", "vram": "4Gi"},
                       **extra}, namespace)


def policy(spec: dict[str, Any], name: str = "hybrid", namespace: str = "lab") -> PolicyInfo:
    return PolicyInfo(namespace, name, f"uid-{name}", 1, RoutePolicySpec.model_validate(spec))


CLOUD_FAST = {"alias": "cloud/fast", "model": "openai/gpt-4o-mini"}


def accepted(status: dict[str, Any]) -> tuple[str, str, str]:
    found = find(parse_conditions(status["conditions"]), "Accepted")
    assert found is not None
    return found.status, found.reason, found.message


def rendered_models(result: Plan) -> list[dict[str, Any]]:
    decision = result.policies[0]
    assert decision.config_map is not None, decision.status
    models: list[dict[str, Any]] = yaml.safe_load(
        decision.config_map["data"][CONFIG_KEY])["model_list"]
    return models


def test_the_later_of_two_slots_with_one_alias_is_refused_and_the_earlier_serves() -> None:
    first = made(gpu_slot("first", "local/fast"), EARLY)
    second = made(gpu_slot("second", "local/fast"), LATE)
    world = World([second, first], nodes=[dreamteam()])
    world.run_until(lambda: world.phase("first") == "Ready")
    result = world.last_plan
    assert result is not None
    refused = result.slot("lab", "second")
    assert refused.phase == "Failed" and refused.replicas == 0
    status, reason, message = accepted(refused.status)
    assert (status, reason) == ("False", "AliasConflict")
    assert "ModelSlot lab/first" in message and "spec.alias" in message
    assert accepted(result.slot("lab", "first").status)[0] == "True"
    assert [e.reason for e in result.events if e.name == "second"] in ([], ["AliasConflict"])


def test_aliases_conflict_across_namespaces() -> None:
    verdicts = judge([made(gpu_slot("a", "local/fast", "team-a"), EARLY),
                      made(gpu_slot("b", "local/fast", "team-b"), LATE)], [], 1)
    assert set(verdicts.slots) == {("team-b", "b")}
    assert "ModelSlot team-a/a" in verdicts.slots[("team-b", "b")].message


def test_creation_time_then_name_decides_and_a_missing_time_counts_as_latest() -> None:
    same = judge([gpu_slot("b", "local/x"), gpu_slot("a", "local/x")], [], 1)
    assert set(same.slots) == {("lab", "b")}
    unstamped = judge([made(gpu_slot("z", "local/x"), EARLY), gpu_slot("a", "local/x")],
                      [], 1)
    assert set(unstamped.slots) == {("lab", "a")}


def test_a_later_policy_whose_cloud_model_is_a_local_alias_is_refused() -> None:
    fast = made(gpu_slot("fast", "local/fast"), EARLY)
    clash = made(policy({"cloudModels": [{"alias": "local/fast", "model": "openai/x"}]}), LATE)
    result = plan(View(nodes=(dreamteam(),), slots=(fast,), policies=(clash,)), START)
    decision = result.policies[0]
    status, reason, message = accepted(decision.status)
    assert (status, reason) == ("False", "AliasConflict")
    assert "ModelSlot lab/fast" in message
    assert decision.config_map is None and decision.litellm_patch is None
    assert result.slot("lab", "fast").replicas == 1


def test_a_later_slot_whose_alias_is_a_cloud_model_is_refused_and_not_rendered() -> None:
    cloud = made(policy({"cloudModels": [{"alias": "local/fast", "model": "openai/x"}]}),
                 EARLY)
    fast = made(gpu_slot("fast", "local/fast"), LATE)
    result = plan(View(nodes=(dreamteam(),), slots=(fast,), policies=(cloud,)), START)
    assert accepted(result.slot("lab", "fast").status)[1] == "AliasConflict"
    assert result.slot("lab", "fast").replicas == 0
    models = rendered_models(result)
    assert [m["litellm_params"]["model"] for m in models
            if m["model_name"] == "local/fast"] == ["openai/x"]
    assert accepted(result.policies[0].status)[0] == "True"
    states = {a["alias"]: a["state"] for a in result.policies[0].status["aliases"]}
    assert states["local/fast"] == "Cloud"


def test_a_refused_slot_that_was_running_is_scaled_to_zero_on_its_own_template() -> None:
    first = made(gpu_slot("first", "local/fast"), EARLY)
    second = made(gpu_slot("second", "local/fast"), LATE)
    running = DeploymentInfo("lab", "second", 1, "old", 4 << 30, node="dreamteam")
    result = plan(View(nodes=(dreamteam(),), slots=(first, second),
                       deployments=(running,)), START)
    deployment = result.slot("lab", "second").deployment
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/hostname": "dreamteam"}


def test_two_default_slots_on_one_gpu_node_conflict_but_not_on_two() -> None:
    first = made(gpu_slot("first", "local/a", default=True), EARLY)
    second = made(gpu_slot("second", "local/b", default=True), LATE)
    result = plan(View(nodes=(dreamteam(),), slots=(first, second)), START)
    status, reason, message = accepted(result.slot("lab", "second").status)
    assert (status, reason) == ("False", "DefaultConflict")
    assert "ModelSlot lab/first" in message and "spec.default" in message
    assert result.slot("lab", "first").replicas == 1
    assert not judge([first, second], [], 2).slots


def test_unknown_aliases_in_fallbacks_tasks_and_changed_routes_are_refused() -> None:
    fast = gpu_slot("fast", "local/fast")
    for spec, field in (
        ({"fallbacks": [{"alias": "local/fast", "to": ["cloud/nowhere"]}]},
         "spec.fallbacks[0].to"),
        ({"routing": {"tasks": {"rag": "local/nowhere"}}}, "spec.routing.tasks.rag"),
        ({"routing": {"routes": {"complex": "cloud/nowhere"}}},
         "spec.routing.routes.complex"),
    ):
        verdicts = judge([fast], [policy({"cloudModels": [CLOUD_FAST], **spec})], 1)
        refusal = verdicts.policies[("lab", "hybrid")]
        assert refusal.reason == "UnknownAlias" and field in refusal.message, spec


def test_routes_left_at_their_defaults_and_slots_without_a_policy_are_not_checked() -> None:
    fast = gpu_slot("fast", "local/fast", fallback="cloud/fast")
    assert not judge([fast], [], 1).slots
    verdicts = judge([fast], [policy({"cloudModels": [CLOUD_FAST]})], 1)
    assert not verdicts.slots and not verdicts.policies


def test_a_slot_fallback_naming_nothing_in_a_policy_namespace_is_refused() -> None:
    fast = gpu_slot("fast", "local/fast", fallback="cloud/typo")
    verdicts = judge([fast], [policy({"cloudModels": [CLOUD_FAST]})], 1)
    assert verdicts.slots[("lab", "fast")].reason == "UnknownAlias"
    assert "spec.fallback names cloud/typo" in verdicts.slots[("lab", "fast")].message


def test_fallback_cycles_refuse_the_latest_contributor() -> None:
    cycle = policy({"cloudModels": [CLOUD_FAST],
                    "fallbacks": [{"alias": "local/a", "to": ["local/b"]},
                                  {"alias": "local/b", "to": ["local/a"]}]})
    slots = [gpu_slot("a", "local/a"), gpu_slot("b", "local/b")]
    refusal = judge(slots, [cycle], 1).policies[("lab", "hybrid")]
    assert refusal.reason == "FallbackCycle" and "local/a -> local/b -> local/a" in refusal.message
    plain = policy({"cloudModels": [CLOUD_FAST]}, name="plain")
    a = made(gpu_slot("a", "local/a", fallback="local/b"), EARLY)
    b = made(gpu_slot("b", "local/b", fallback="local/a"), LATE)
    verdicts = judge([a, b], [plain], 1)
    assert set(verdicts.slots) == {("lab", "b")}
    assert "ModelSlot lab/a" in verdicts.slots[("lab", "b")].message


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"]}) is None
    assert find_cycle({"a": ["b", "c"], "c": ["a"]}) == ["a", "c", "a"]
    assert find_cycle({"a": ["b"], "b": ["b2", "c"], "c": ["b"]}) == ["b", "c", "b"]


def test_creation_time_comes_from_the_objects() -> None:
    body = {"metadata": {"name": "fast", "namespace": "lab",
                         "creationTimestamp": "2026-11-30T02:00:00Z"},
            "spec": {"alias": "local/fast", "model": {"path": "f.gguf"}}}
    assert slot_from_object(body).created == datetime.datetime(2026, 11, 30, 2,
                                                                tzinfo=datetime.UTC)
    assert policy_from_object({**body, "spec": {}}).created == \
        slot_from_object(body).created


ALIASES = st.sampled_from(["local/a", "local/b", "local/c", "cloud/x", "cloud/y"])


@st.composite
def slot_and_policy_sets(draw: st.DrawFn) -> View:
    slots = []
    for index in range(draw(st.integers(min_value=0, max_value=6))):
        namespace = draw(st.sampled_from(["lab", "other"]))
        extra: dict[str, Any] = {}
        if draw(st.booleans()):
            extra["fallback"] = draw(ALIASES)
        alias = draw(ALIASES)
        if extra.get("fallback") == alias:
            extra.pop("fallback")
        device = draw(st.sampled_from(["gpu", "cpu"]))
        spec = {"alias": alias, "model": {"path": f"s{index}.gguf", "vram": "2Gi"},
                "device": device, **extra}
        if device == "gpu" and draw(st.booleans()):
            spec["default"] = True
        info = slot(f"s{index}", spec, namespace)
        slots.append(made(info, START - datetime.timedelta(minutes=draw(
            st.integers(min_value=0, max_value=3)))))
    policies = []
    for index in range(draw(st.integers(min_value=1, max_value=2))):
        models = [{"alias": alias, "model": f"openai/m{n}"}
                  for n, alias in enumerate(draw(st.lists(ALIASES, max_size=3)))]
        policies.append(made(policy({"cloudModels": models}, name=f"p{index}",
                                    namespace=draw(st.sampled_from(["lab", "other"]))),
                             START - datetime.timedelta(minutes=draw(
                                 st.integers(min_value=0, max_value=3)))))
    return View(nodes=(dreamteam(),), slots=tuple(slots), policies=tuple(policies))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(view=slot_and_policy_sets())
def test_no_rendered_alias_is_local_twice_or_local_and_cloud(view: View) -> None:
    result = plan(view, START)
    for decision in result.policies:
        if decision.config_map is None:
            continue
        models = yaml.safe_load(decision.config_map["data"][CONFIG_KEY])["model_list"]
        local = [m["model_name"] for m in models
                 if ".svc:" in str(m["litellm_params"].get("api_base"))]
        cloud = {m["model_name"] for m in models
                 if ".svc:" not in str(m["litellm_params"].get("api_base"))}
        assert len(local) == len(set(local)), models
        assert not set(local) & cloud, models
    served = [d.alias for d in result.slots if d.replicas > 0]
    assert len(served) == len(set(served))


def test_a_refused_slot_is_left_out_of_the_routers_state() -> None:
    from typing import cast

    from hybrid_compute.control.loop import Runtime
    from hybrid_compute.control.state_api import state_document
    cloud = made(policy({"cloudModels": [{"alias": "local/fast", "model": "openai/x"}]}),
                 EARLY)
    fast = made(gpu_slot("fast", "local/fast", fallback="local/other"), LATE)
    other = made(gpu_slot("other", "local/other"), LATE)
    world = World([fast, other], nodes=[dreamteam()])
    runtime = Runtime(cast(Any, None), world.settings)
    runtime.last_plan = plan(replace(world.view(), policies=(cloud,)), START)
    assert runtime.last_plan.slot("lab", "fast").refused
    assert [s["name"] for s in state_document(runtime)["slots"]] == ["other"]
