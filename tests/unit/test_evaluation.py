"""The checks of an evaluation (server error, latency, JSON, tokens per second, pass
ratio), the requests it sends to a stand-in OpenAI server, the fingerprints that say
what counts as a new model, ``hybrid-compute eval`` and the evaluations metric."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from hybrid_compute.api.modelslot import ModelEvaluation, ModelSource
from hybrid_compute.control import evaluator
from hybrid_compute.control.evaluator import EVALUATION_HEADER
from hybrid_compute.plan import evaluation
from hybrid_compute.plan.evaluation import (
    Reply,
    check_json,
    check_latency,
    check_server_error,
    check_tokens_per_second,
    judge,
    required_prompts,
)
from hybrid_compute.server.metrics import OperatorMetrics
from tests.http_stub import StubHandler, StubServer

NOW = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)


def completion(content: str = "Hello.", tokens: int = 8, finish: str = "stop",
               timings: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5}}
    if timings is not None:
        body["timings"] = timings
    return body


def criteria(**spec: Any) -> ModelEvaluation:
    return ModelEvaluation.model_validate({"prompts": [{"prompt": "Say hello."}], **spec})


# ------------------------------------------------------------------ pure checks


def test_latency_passes_within_the_bound_and_fails_above_it() -> None:
    assert check_latency(Reply(200, 0.4, completion()), 1.0).passed
    slow = check_latency(Reply(200, 2.31, completion()), 1.0)
    assert (slow.passed, slow.detail) == (False, "2.31s > 1.00s")
    silent = check_latency(Reply(None, 3.0, timed_out=True), 1.0)
    assert not silent.passed and "no answer within 3.00s" in silent.detail


@pytest.mark.parametrize(("reply", "detail"), [
    (Reply(None, 0.1, error="connection refused"), "no answer: connection refused"),
    (Reply(500, 0.1, error="model crashed"), "HTTP 500: model crashed"),
    (Reply(200, 0.1, {"choices": []}), "HTTP 200 without a chat completion"),
])
def test_server_errors_fail_with_what_went_wrong(reply: Reply, detail: str) -> None:
    check = check_server_error(reply)
    assert (check.passed, check.detail) == (False, detail)


def test_a_chat_completion_is_no_server_error() -> None:
    assert check_server_error(Reply(200, 0.1, completion())).passed


def test_json_check_accepts_json_and_names_a_cut_off_answer() -> None:
    assert check_json(Reply(200, 0.1, completion('{"answer": 4}'))).passed
    broken = check_json(Reply(200, 0.1, completion('{"answer": ', finish="length")))
    assert not broken.passed and "cut off at maxTokens" in broken.detail
    assert not check_json(Reply(200, 0.1, completion("four"))).passed
    assert not check_json(Reply(200, 0.1, completion(""))).passed


def test_tokens_per_second_prefers_the_servers_timing() -> None:
    timed = Reply(200, 2.0, completion(tokens=10, timings={"predicted_per_second": 42.5}))
    assert check_tokens_per_second(timed, 40).detail == "42.5 tokens/s >= 40"
    untimed = Reply(200, 2.0, completion(tokens=10))
    check = check_tokens_per_second(untimed, 20)
    assert (check.passed, check.detail) == (False, "5.0 tokens/s < 20")
    assert not check_tokens_per_second(Reply(200, 1.0, completion(tokens=0)), 1).passed


def test_a_prompt_is_judged_by_every_check_it_asks_for() -> None:
    spec = ModelEvaluation.model_validate({"maxLatency": "1s", "minTokensPerSecond": 10,
                                           "prompts": [{"prompt": "JSON please",
                                                        "expectJson": True}]})
    good = judge(spec.prompts[0], 0, spec, Reply(200, 0.5, completion('{"a": 1}', tokens=10)))
    assert [c.name for c in good.checks] == ["serverError", "latency", "json",
                                            "tokensPerSecond"]
    assert good.passed
    slow = judge(spec.prompts[0], 0, spec, Reply(200, 2.0, completion('{"a": 1}', tokens=10)))
    assert slow.failures() == ["prompt 1: latency 2.00s > 1.00s",
                               "prompt 1: tokensPerSecond 5.0 tokens/s < 10"]
    crashed = judge(spec.prompts[0], 0, spec, Reply(503, 0.1, error="loading model"))
    assert crashed.failures() == ["prompt 1: serverError HTTP 503: loading model"]


def test_a_prompts_own_bounds_override_the_evaluations() -> None:
    spec = ModelEvaluation.model_validate({"maxLatency": "1s", "prompts": [
        {"name": "essay", "prompt": "Write.", "maxLatency": "10s"}]})
    verdict = judge(spec.prompts[0], 0, spec, Reply(200, 4.0, completion()))
    assert verdict.passed and verdict.label == "essay"


@pytest.mark.parametrize(("total", "ratio", "needed"), [
    (4, 1.0, 4), (4, 0.75, 3), (4, 0.5, 2), (3, 0.5, 2), (3, 0.01, 1), (10, 0.3, 3)])
def test_pass_ratio_rounds_the_prompts_needed_up(total: int, ratio: float,
                                                 needed: int) -> None:
    assert required_prompts(total, ratio) == needed


def test_the_verdict_applies_the_pass_ratio() -> None:
    spec = ModelEvaluation.model_validate({"maxLatency": "1s", "passRatio": 0.5, "prompts": [
        {"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, {"prompt": "d"}]})
    fast, slow = Reply(200, 0.1, completion()), Reply(200, 5.0, completion())
    half = evaluation.verdict(spec, [fast, fast, slow, slow], "m", "tiny", NOW)
    assert half.passed and half.summary() == "2 of 4 prompts passed, 2 needed"
    worse = evaluation.verdict(spec, [fast, slow, slow, slow], "m", "tiny", NOW)
    assert not worse.passed
    assert worse.failed_checks() == [f"prompt {n}: latency 5.00s > 1.00s" for n in (2, 3, 4)]
    assert "verdict: FAILED (1 of 4 prompts passed, 2 needed)" in evaluation.report(worse)


def test_failed_checks_are_capped() -> None:
    spec = ModelEvaluation.model_validate({
        "maxLatency": "1s", "minTokensPerSecond": 100,
        "prompts": [{"prompt": str(n)} for n in range(9)]})
    slow = Reply(200, 2.0, completion(tokens=8))
    result = evaluation.verdict(spec, [slow] * 9, "m", "tiny", NOW)
    failed = result.failed_checks()
    assert len(failed) == evaluation.MAX_FAILED_CHECKS and failed[-1] == "and 3 more"


def test_the_model_fingerprint_ignores_vram_and_quantisation_only() -> None:
    base = ModelSource.model_validate({"path": "a.gguf", "vram": "7Gi"})
    resized = ModelSource.model_validate({"path": "a.gguf", "vram": "8Gi",
                                          "quantization": "Q4_K_M"})
    renamed = ModelSource.model_validate({"path": "a.gguf", "vram": "7Gi",
                                          "servedName": "other"})
    moved = ModelSource.model_validate({"path": "b.gguf", "vram": "7Gi"})
    fingerprint = evaluation.model_fingerprint
    assert fingerprint(base) == fingerprint(resized)
    assert len({fingerprint(base), fingerprint(renamed), fingerprint(moved)}) == 3


def test_the_criteria_fingerprint_follows_the_evaluation() -> None:
    assert evaluation.criteria_fingerprint(criteria()) == \
        evaluation.criteria_fingerprint(criteria())
    assert evaluation.criteria_fingerprint(criteria()) != \
        evaluation.criteria_fingerprint(criteria(maxLatency="5s"))


def test_request_bodies_ask_for_json_only_when_told() -> None:
    spec = ModelEvaluation.model_validate({"prompts": [
        {"prompt": "hi", "maxTokens": 4},
        {"messages": [{"role": "system", "content": "Answer in JSON."},
                      {"content": "Two plus two?"}], "expectJson": True}]})
    plain = evaluator.request_body(spec.prompts[0], "tiny")
    assert plain == {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                     "max_tokens": 4, "temperature": 0, "stream": False}
    asked = evaluator.request_body(spec.prompts[1], "tiny")
    assert asked["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in asked["messages"]] == ["system", "user"]


# ------------------------------------------------------------------ requests


@dataclass
class StandIn:
    """An OpenAI-compatible server whose answers the test sets."""

    delay: float = 0.0
    status: int = 200
    body: dict[str, Any] = field(default_factory=completion)
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn()

    class Handler(StubHandler):
        def do_POST(self) -> None:
            state.seen.append((self.headers.get(EVALUATION_HEADER, ""),
                               json.loads(self.read_body())))
            time.sleep(state.delay)
            self.send_json(state.status, state.body if state.status < 400 else
                           {"error": {"message": "model is loading"}})

    with StubServer(Handler) as server:
        state.url = f"{server.url}/v1"
        yield state


def test_run_sends_each_prompt_marked_as_evaluation_traffic(stand_in: StandIn) -> None:
    spec = criteria(prompts=[{"prompt": "a"}, {"prompt": "b"}])
    result = evaluator.run(spec, stand_in.url, "tiny", "fp123", lambda: NOW)
    assert result.passed and result.finished == NOW
    assert [(marker, body["messages"][0]["content"]) for marker, body in stand_in.seen] == [
        ("fp123", "a"), ("fp123", "b")]
    assert (result.model, result.served_name) == ("fp123", "tiny")


def test_run_reports_a_server_error(stand_in: StandIn) -> None:
    stand_in.status = 503
    result = evaluator.run(criteria(), stand_in.url, "tiny", "fp", lambda: NOW)
    assert result.failed_checks() == ["prompt 1: serverError HTTP 503: model is loading"]


def test_run_stops_waiting_past_the_latency_bound(stand_in: StandIn,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluator, "LATENCY_GRACE_SECONDS", 0.2)
    stand_in.delay = 1.5
    started = time.monotonic()
    result = evaluator.run(criteria(maxLatency="100ms"), stand_in.url, "tiny", "fp",
                            lambda: NOW)
    assert time.monotonic() - started < 1.4, "the evaluation waited for the slow answer"
    assert not result.passed
    assert "latency no answer within" in result.failed_checks()[0]


def test_run_measures_a_slow_answer_that_still_came(stand_in: StandIn) -> None:
    stand_in.delay = 0.3
    result = evaluator.run(criteria(maxLatency="100ms"), stand_in.url, "tiny", "fp",
                            lambda: NOW)
    (failure,) = result.failed_checks()
    assert failure.startswith("prompt 1: latency ") and failure.endswith("> 100ms")


def test_run_reports_a_refused_connection() -> None:
    result = evaluator.run(criteria(), "http://127.0.0.1:9/v1", "tiny", "fp", lambda: NOW)
    assert not result.passed and "serverError no answer" in result.failed_checks()[0]


# ------------------------------------------------------------------ the command


def _slot_object(endpoint: str | None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
        "metadata": {"name": "fast", "namespace": "lab", "uid": "u", "generation": 1},
        "spec": {"alias": "local/fast", "model": {"path": "fast.gguf", "vram": "7Gi"},
                 "evaluation": {"maxLatency": "1s", "prompts": [
                     {"name": "hello", "prompt": "Say hello."}]}, **spec}}
    if endpoint:
        body["status"] = {"endpoint": endpoint}
    return body


def _fake_cluster(monkeypatch: pytest.MonkeyPatch, body: dict[str, Any]) -> list[Any]:
    from kubernetes import client

    from hybrid_compute.control import kube

    asked: list[Any] = []

    class Custom:
        def __init__(self, _api: Any) -> None:
            pass

        def get_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
            asked.append(args)
            return body

    monkeypatch.setattr(kube, "load_client", lambda _path=None: object())
    monkeypatch.setattr(client, "CustomObjectsApi", Custom)
    return asked


def test_eval_command_prints_the_checks_and_passes(
        stand_in: StandIn, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid_compute.cli import main

    asked = _fake_cluster(monkeypatch, _slot_object(stand_in.url))
    assert main(["eval", "fast", "-n", "lab"]) == 0
    out = capsys.readouterr().out
    assert asked == [("hybridcompute.io", "v1alpha1", "lab", "modelslots", "fast")]
    assert "hello: PASS" in out and "serverError" in out and "latency" in out
    assert "verdict: PASSED (1 of 1 prompts passed, 1 needed)" in out
    assert stand_in.seen[0][1]["model"] == "fast"


def test_eval_command_exits_1_on_failure_and_takes_an_endpoint(
        stand_in: StandIn, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid_compute.cli import main

    stand_in.status = 500
    _fake_cluster(monkeypatch, _slot_object("http://fast.lab.svc:8080/v1"))
    assert main(["eval", "fast", "-n", "lab", "--endpoint", stand_in.url]) == 1
    out = capsys.readouterr().out
    assert "hello: FAIL" in out and "HTTP 500" in out and "verdict: FAILED" in out


def test_eval_command_refuses_a_slot_without_evaluation(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid_compute.cli import main

    body = _slot_object("http://x/v1")
    del body["spec"]["evaluation"]
    _fake_cluster(monkeypatch, body)
    assert main(["eval", "fast", "-n", "lab"]) == 2
    assert "has no spec.evaluation" in capsys.readouterr().err


# ------------------------------------------------------------------ metrics


def test_evaluations_are_counted_by_result() -> None:
    metrics = OperatorMetrics()
    metrics.record_evaluation("lab", "fast", "local/fast", True)
    metrics.record_evaluation("lab", "fast", "local/fast", False)
    metrics.record_evaluation("lab", "fast", "local/fast", False)
    labels = {"namespace": "lab", "slot": "fast", "alias": "local/fast"}
    sample = metrics.registry.get_sample_value
    assert sample("hybrid_compute_model_evaluations_total", {**labels, "result": "Passed"}) == 1
    assert sample("hybrid_compute_model_evaluations_total", {**labels, "result": "Failed"}) == 2
