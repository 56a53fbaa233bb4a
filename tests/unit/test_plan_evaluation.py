"""The evaluation gate in the plan: a new model is not routed to until it passes,
a failing one is rolled back to the previous model by the status alone (the spec
is never changed), and the slot keeps a short history of the models it ran."""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.plan import Plan, SlotDecision
from hybrid_compute.plan.evaluation import (
    Check,
    EvaluationRequest,
    EvaluationResult,
    PromptVerdict,
    model_fingerprint,
)
from hybrid_compute.plan.view import View
from tests.simworld import World, slot

GATED: dict[str, Any] = {
    "alias": "local/fast", "model": {"path": "fast-v1.gguf", "vram": "7Gi"},
    "fallback": "cloud/fast",
    "evaluation": {"maxLatency": "1s", "prompts": [{"prompt": "Say hello."}]},
}


@dataclass
class GateWorld(World):
    """The simulated cluster plus the runtime's finished evaluations."""

    evaluations: dict[tuple[str, str], EvaluationResult] = field(default_factory=dict)
    events: list[Any] = field(default_factory=list)

    def view(self) -> View:
        return replace(super().view(), evaluations=dict(self.evaluations))

    def step(self) -> Plan:
        result = super().step()
        self.events += result.events
        return result

    def decision(self, name: str = "fast") -> SlotDecision:
        assert self.last_plan is not None
        return self.last_plan.slot("lab", name)

    def status(self, name: str = "fast") -> Any:
        return next(s.status for s in self.slots if s.name == name)

    def change_spec(self, spec: dict[str, Any], name: str = "fast") -> None:
        self.slots = [replace(s, spec=ModelSlotSpec.model_validate(spec),
                              generation=s.generation + 1) if s.name == name else s
                      for s in self.slots]

    def finish_evaluation(self, passed: bool, name: str = "fast") -> EvaluationRequest:
        request = self.decision(name).evaluate
        assert request is not None, f"{name} is {self.phase(name)}, not evaluating"
        self.evaluations[("lab", name)] = result(request, passed, self.now)
        return request

    def served_model(self, name: str = "fast") -> str:
        deployment = self.decision(name).deployment
        assert deployment is not None
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return str(args[args.index("--model") + 1])

    def condition(self, type_: str, name: str = "fast") -> Any:
        return next((c for c in self.status(name).conditions if c.type == type_), None)


def result(request: EvaluationRequest, passed: bool, now: datetime.datetime
           ) -> EvaluationResult:
    check = (Check("latency", True, "12ms <= 1s") if passed
             else Check("latency", False, "2.31s > 1s"))
    return EvaluationResult(request.model, request.criteria, request.served_name,
                            (PromptVerdict("prompt 1", (check,)),), 1, now)


def with_model(path: str, **extra: Any) -> dict[str, Any]:
    return {**GATED, "model": {"path": path, "vram": "7Gi"}, **extra}


def passed_first_model() -> GateWorld:
    world = GateWorld([slot("fast", GATED)])
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    world.finish_evaluation(passed=True)
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.events.clear()
    return world


def test_a_new_model_is_evaluated_before_it_is_routed_to() -> None:
    world = GateWorld([slot("fast", GATED)])
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    decision = world.decision()
    assert decision.ready is False, "an Evaluating slot was marked ready for routing"
    assert decision.replicas == 1
    assert decision.evaluate is not None and decision.evaluate.served_name == "fast-v1"
    assert decision.endpoint == "http://fast.lab.svc:8080/v1"
    assert world.condition("Ready").status == "False"
    assert world.condition("Evaluated").reason == "Evaluating"
    for _ in range(5):
        world.step()
        assert world.phase("fast") == "Evaluating", "the slot left Evaluating without a verdict"
    assert [e.reason for e in world.events].count("Evaluating") == 1


def test_a_passing_model_becomes_ready_with_the_evaluated_condition() -> None:
    world = GateWorld([slot("fast", GATED)])
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    world.finish_evaluation(passed=True)
    world.step()
    assert world.phase("fast") == "Ready"
    assert world.decision().ready and world.decision().evaluate is None
    evaluated = world.condition("Evaluated")
    assert (evaluated.status, evaluated.reason) == ("True", "EvaluationPassed")
    status = world.status()
    assert status.evaluation.result == "Passed"
    assert [(h.served_name, h.evaluation) for h in status.history] == [("fast-v1", "Passed")]
    assert "EvaluationPassed" in [e.reason for e in world.events]


def test_a_failing_model_is_rolled_back_to_the_previous_one_without_touching_the_spec() -> None:
    world = passed_first_model()
    world.change_spec(with_model("fast-v2.gguf"))
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    assert world.served_model() == "/models/fast-v2.gguf"
    world.finish_evaluation(passed=False)
    world.step()

    decision = world.decision()
    assert decision.phase == "Loading" and not decision.ready
    assert "rolling back to fast-v1" in decision.reason
    assert world.served_model() == "/models/fast-v1.gguf", \
        "the pod template did not go back to the previous model"
    spec = next(s.spec for s in world.slots if s.name == "fast")
    assert spec is not None and spec.model.path == "fast-v2.gguf", "the spec was changed"
    status = world.status()
    assert status.rejected_model == model_fingerprint(spec.model)
    evaluated = world.condition("Evaluated")
    assert (evaluated.status, evaluated.reason) == ("False", "EvaluationFailed")
    assert "latency 2.31s > 1s" in evaluated.message
    warnings = [e for e in world.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["EvaluationFailed"]
    assert "prompt 1: latency 2.31s > 1s" in warnings[0].message
    assert "rolling back to fast-v1" in warnings[0].message

    world.run_until(lambda: world.phase("fast") == "Ready")
    assert world.decision().ready
    assert "serving the previous model fast-v1" in world.decision().reason
    assert world.decision().evaluate is None, "the previous model was evaluated again"
    assert world.condition("Evaluated").status == "False", \
        "the rejection of spec.model was forgotten once the rollback was Ready"
    history = world.status().history
    assert [(h.served_name, h.evaluation) for h in history] == [
        ("fast-v1", "Passed"), ("fast-v2", "Failed"), ("fast-v1", "Passed")]
    assert history[1].failed_checks == ["prompt 1: latency 2.31s > 1s"]
    assert all(h.until is not None for h in history[:-1]) and history[-1].until is None
    for _ in range(5):
        world.step()
        assert world.served_model() == "/models/fast-v1.gguf"
        assert world.phase("fast") == "Ready"


def rolled_back_from_v2() -> GateWorld:
    """fast-v1 passed, fast-v2 failed its evaluation, and v1 serves again."""
    world = passed_first_model()
    world.change_spec(with_model("fast-v2.gguf"))
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    world.finish_evaluation(passed=False)
    world.run_until(lambda: world.phase("fast") == "Ready")
    return world


def test_a_spec_change_after_a_rejection_tries_the_new_model() -> None:
    world = rolled_back_from_v2()

    world.change_spec(with_model("fast-v3.gguf"))
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    assert world.served_model() == "/models/fast-v3.gguf"
    assert world.status().rejected_model is None
    world.finish_evaluation(passed=True)
    world.step()
    assert world.phase("fast") == "Ready" and world.condition("Evaluated").status == "True"
    assert [h.served_name for h in world.status().history] == [
        "fast-v1", "fast-v2", "fast-v1", "fast-v3"]


def test_changed_criteria_evaluate_a_rejected_model_again() -> None:
    world = rolled_back_from_v2()
    looser = with_model("fast-v2.gguf",
                        evaluation={"maxLatency": "5s", "prompts": [{"prompt": "Say hello."}]})
    world.change_spec(looser)
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    assert world.served_model() == "/models/fast-v2.gguf"


def test_a_first_model_that_fails_stays_not_ready_with_nothing_to_roll_back_to() -> None:
    world = GateWorld([slot("fast", GATED)])
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    world.finish_evaluation(passed=False)
    for _ in range(4):
        world.step()
        decision = world.decision()
        assert decision.phase == "Failed" and not decision.ready
        assert decision.evaluate is None, "a rejected model was evaluated again unasked"
    assert world.served_model() == "/models/fast-v1.gguf"
    evaluated = world.condition("Evaluated")
    assert evaluated.reason == "EvaluationFailed"
    assert "no earlier model to roll back to" in evaluated.message
    assert world.condition("Ready").status == "False"


def test_a_verdict_for_another_model_is_ignored() -> None:
    world = passed_first_model()
    stale = world.evaluations[("lab", "fast")]
    world.change_spec(with_model("fast-v2.gguf"))
    world.evaluations[("lab", "fast")] = replace(stale, prompts=(PromptVerdict(
        "prompt 1", (Check("latency", False, "9s > 1s"),)),))
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    for _ in range(3):
        world.step()
    assert world.phase("fast") == "Evaluating"
    assert world.status().rejected_model is None


def test_a_slot_without_evaluation_goes_straight_to_ready_and_keeps_history() -> None:
    plain = {key: value for key, value in GATED.items() if key != "evaluation"}
    world = GateWorld([slot("fast", plain)])
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert world.condition("Evaluated") is None
    assert [(h.served_name, h.evaluation) for h in world.status().history] == [
        ("fast-v1", "NotEvaluated")]


def test_history_keeps_the_last_five_models() -> None:
    plain = {key: value for key, value in GATED.items() if key != "evaluation"}
    world = GateWorld([slot("fast", plain)])
    for version in range(1, 8):
        world.change_spec({**plain, "model": {"path": f"fast-v{version}.gguf", "vram": "7Gi"}})
        world.run_until(lambda: world.phase("fast") == "Ready"
                        and world.served_model().endswith(f"-v{version}.gguf"))  # noqa: B023
    history = world.status().history
    assert [h.served_name for h in history] == [f"fast-v{v}" for v in range(3, 8)]
    assert [h.until is None for h in history] == [False] * 4 + [True]
    assert all(a.until == b.since for a, b in itertools.pairwise(history))


def test_a_swap_back_in_of_an_evaluated_model_is_not_evaluated_again() -> None:
    quality = {"alias": "local/quality", "model": {"path": "q.gguf", "vram": "20Gi"},
               "activation": "OnDemand", "idleTimeout": "5m", "priority": 200,
               "evaluation": GATED["evaluation"]}
    fast = {key: value for key, value in GATED.items() if key != "evaluation"}
    world = GateWorld([slot("fast", {**fast, "default": True}), slot("quality", quality)])
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Evaluating")
    world.finish_evaluation(passed=True, name="quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    world.now += datetime.timedelta(minutes=6)
    world.run_until(lambda: world.phase("quality") == "Standby")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    phases = []
    for _ in range(30):
        world.step()
        phases.append(world.phase("quality"))
        if phases[-1] == "Ready":
            break
    assert "Evaluating" not in phases and phases[-1] == "Ready", phases
    assert len(world.status("quality").history) == 1


def test_a_cpu_slot_is_gated_too() -> None:
    cpu = {"alias": "local/tiny", "model": {"path": "tiny.gguf"}, "device": "cpu",
           "evaluation": GATED["evaluation"]}
    world = GateWorld([slot("tiny", cpu)])
    world.run_until(lambda: world.phase("tiny") == "Evaluating")
    assert not world.decision("tiny").ready
    world.finish_evaluation(passed=True, name="tiny")
    world.step()
    assert world.phase("tiny") == "Ready"


def test_a_settled_gate_rewrites_no_status() -> None:
    """act writes a status only when it differs: Evaluating, Ready after a pass and a
    rollback must each settle, or the loop would write every half second."""
    world = GateWorld([slot("fast", GATED)])
    world.run_until(lambda: world.phase("fast") == "Evaluating")

    def settled() -> bool:
        world.step()
        stored = world.status().model_dump(by_alias=True, mode="json", exclude_none=True)
        world.step()
        return world.decision().status == stored

    assert settled(), "an Evaluating slot changes its status on every pass"
    world.finish_evaluation(passed=True)
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert settled(), "a Ready slot changes its status on every pass"
    world.change_spec(with_model("fast-v2.gguf"))
    world.run_until(lambda: world.phase("fast") == "Evaluating")
    world.finish_evaluation(passed=False)
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert settled(), "a rolled-back slot changes its status on every pass"
