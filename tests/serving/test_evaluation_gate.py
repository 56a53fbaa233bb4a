"""The evaluation gate with real parts: a ModelSlot on the local control plane whose
spec.model changes, the operator evaluating the new model against a real
llama-server, and the real LiteLLM proxy routing requests for the slot's alias.

The slot's port is a recording proxy in front of the llama-server, so the test sees
every request that reached "the model": the operator's evaluation requests carry
the ``X-Hybrid-Compute-Evaluation`` header, routed ones do not. The proxy holds each
evaluation request for a few seconds (a slow model), which keeps the slot in
Evaluating long enough to send routed requests meanwhile. Tests run in file order
and share one stack.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hybrid_compute.control.evaluator import EVALUATION_HEADER
from hybrid_compute.dev import llmtools
from hybrid_compute.dev.cloud_stand_in import CloudStandIn
from hybrid_compute.dev.cluster import free_port
from hybrid_compute.plan.objects import parse_time
from tests.cluster.support import apply, phase, wait
from tests.conftest import OperatorHandle, TestCluster
from tests.http_stub import StubHandler, StubServer
from tests.serving.conftest import LlamaServer
from tests.serving.litellm_runner import LiteLLMRunner
from tests.serving.test_litellm import (
    QUICK,
    Answer,
    _litellm_deployment,
    _secret,
    read_policy_hash,
)

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

GROUP = "hybridcompute.io"
SLOT = "gate"
ALIAS = "local/gate"
EVALUATION_DELAY = 4.0
"""Seconds the proxy holds each evaluation request: the slow model."""
ROUTER_REFRESH = 2.5
"""The router reads the operator's state every 2 s."""
PROMPTS = [{"name": "hello", "prompt": "Say hello.", "maxTokens": 4}]


@dataclass(frozen=True)
class Seen:
    at: datetime.datetime
    evaluation: bool
    path: str


class RecordingProxy:
    """Forwards to the llama-server and records every request it forwards."""

    def __init__(self, upstream: str, port: int) -> None:
        self.seen: list[Seen] = []
        self.evaluation_delay = 0.0
        proxy = self

        class Handler(StubHandler):
            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.read_body())

            def _forward(self, data: bytes | None) -> None:
                evaluating = EVALUATION_HEADER.lower() in {k.lower() for k in self.headers}
                proxy.seen.append(Seen(datetime.datetime.now(datetime.UTC), evaluating,
                                       self.path))
                if evaluating:
                    time.sleep(proxy.evaluation_delay)
                request = urllib.request.Request(
                    f"{upstream}{self.path}", data=data, method=self.command,
                    headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        status, body = answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    status, body = error.code, error.read()
                with contextlib.suppress(OSError):  # the evaluation gave up waiting
                    self.send_body(status, body)

        self.server = StubServer(Handler, port).start()

    def routed(self) -> list[Seen]:
        return [s for s in self.seen if not s.evaluation and s.path.endswith("/completions")]

    def stop(self) -> None:
        self.server.stop()


@dataclass
class GateStack:
    k8s: TestCluster
    operator: OperatorHandle
    namespace: str
    cloud: CloudStandIn
    litellm: LiteLLMRunner
    proxy: RecordingProxy
    master_key: str

    def chat(self) -> Answer:
        request = urllib.request.Request(
            f"{self.litellm.url}/v1/chat/completions", method="POST",
            data=json.dumps({"model": ALIAS, "max_tokens": 4, "messages": [
                {"role": "user", "content": "Say hello."}]}).encode(),
            headers={"Authorization": f"Bearer {self.master_key}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Answer(response.status,
                              {k.lower(): v for k, v in response.headers.items()},
                              json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return Answer(error.code, {k.lower(): v for k, v in error.headers.items()},
                          json.loads(error.read() or b"{}"))

    def slot(self) -> dict[str, Any]:
        found: dict[str, Any] = self.k8s.custom.get_namespaced_custom_object(
            GROUP, "v1alpha1", self.namespace, "modelslots", SLOT)
        return found

    def status(self) -> dict[str, Any]:
        return self.slot().get("status") or {}

    def phase(self) -> str | None:
        return phase(self.k8s, self.namespace, SLOT)

    def condition(self, type_: str) -> dict[str, Any]:
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_),
                    {})

    def template_model(self) -> str:
        deployment = self.k8s.apps.read_namespaced_deployment(SLOT, self.namespace)
        args: list[str] = deployment.spec.template.spec.containers[0].args
        return args[args.index("--model") + 1]

    def change(self, spec: dict[str, Any]) -> None:
        self.k8s.custom.patch_namespaced_custom_object(
            GROUP, "v1alpha1", self.namespace, "modelslots", SLOT, {"spec": spec})

    def events(self, reason: str) -> list[str]:
        listed = self.k8s.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={SLOT},reason={reason}")
        return [e.message for e in listed.items]


def _model(version: int) -> dict[str, Any]:
    """Versions differ by file; the served name stays, so LiteLLM's config does not
    change (and LiteLLM does not restart) with the model."""
    return {"path": f"gate-v{version}.gguf", "servedName": "gate", "vram": "5Gi"}


def _history(gate: GateStack) -> list[tuple[str, str]]:
    return [(h["model"]["path"], h["evaluation"]) for h in gate.status()["history"]]


def _policy(cloud_url: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1alpha1", "kind": "RoutePolicy",
        "metadata": {"name": "hybrid"},
        "spec": {
            "cloudModels": [{"alias": "cloud/fast", "model": "openai/cloud-fast",
                             "apiBase": cloud_url, "inputCostPerMillion": 0,
                             "outputCostPerMillion": 0}],
            "router": {"numRetries": 0, "timeout": "60s"},
            "litellm": {"masterKeySecretRef": {"name": "litellm", "key": "master"}},
        },
    }


@pytest.fixture(scope="module")
def gate(k8s: TestCluster, operator: OperatorHandle, cloud: CloudStandIn,
         serving_tools: llmtools.ServingTools, tiny_model: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateStack]:
    namespace = f"gate-{uuid.uuid4().hex[:6]}"
    workdir = tmp_path_factory.mktemp("gate")
    k8s.kubectl("create", "namespace", namespace)
    llama = LlamaServer(serving_tools.llama_server, tiny_model, free_port(),
                        workdir / "llama-gate.log")
    proxy = RecordingProxy(llama.url, free_port())
    port = proxy.server.port
    master_key = f"sk-master-{uuid.uuid4().hex}"
    runner = LiteLLMRunner(k8s.api, namespace, "litellm", serving_tools.litellm,
                           free_port(), workdir)
    try:
        llama.wait_healthy()
        proxy.evaluation_delay = 0.0
        apply(k8s, namespace, [
            _secret("litellm", {"master": master_key}),
            _secret("hybrid-compute-api", {"token": operator.token}),
            {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelSlot",
             "metadata": {"name": SLOT},
             "spec": {"alias": ALIAS, "model": _model(1), "server": {"port": port},
                      "minResidency": "1s", "fallback": "cloud/fast", "podAnnotations": QUICK,
                      "evaluation": {"maxLatency": "30s", "prompts": PROMPTS}}},
            _policy(cloud.url),
            _litellm_deployment(operator),
        ])
        wait(lambda: phase(k8s, namespace, SLOT) == "Ready", 90, "the first model Ready")
        runner.__enter__()
        wait(lambda: _config_hash(k8s, namespace), 60, "the LiteLLM config rendered")
        runner.wait_serving(read_policy_hash(k8s, namespace))
        yield GateStack(k8s, operator, namespace, cloud, runner, proxy, master_key)
    finally:
        runner.__exit__()
        proxy.stop()
        llama.stop()
        k8s.kubectl("delete", "modelslots", "--all", "-n", namespace, "--wait=false",
                    check=False)
        k8s.kubectl("wait", "--for=delete", "pods", "--all", "-n", namespace,
                    "--timeout=60s", check=False)
        k8s.kubectl("delete", "namespace", namespace, "--wait=false")


def _config_hash(k8s: TestCluster, namespace: str) -> str | None:
    policy = k8s.custom.get_namespaced_custom_object(GROUP, "v1alpha1", namespace,
                                                     "routepolicies", "hybrid")
    found: str | None = (policy.get("status") or {}).get("configHash")
    return found


def _bridged_while_evaluating(gate: GateStack) -> Answer:
    """A routed request once the router has seen the slot Evaluating."""
    wait(lambda: gate.phase() == "Evaluating", 60, "the new model Evaluating")
    time.sleep(ROUTER_REFRESH)
    assert gate.phase() == "Evaluating", "the evaluation ended before the routed request"
    gate.cloud.clear()
    before = len(gate.proxy.routed())
    answer = gate.chat()
    assert answer.status == 200, answer.body
    assert (answer.route, answer.served_by) == ("bridged", "cloud/fast"), answer.headers
    assert gate.cloud.models_called() == ["cloud-fast"]
    assert len(gate.proxy.routed()) == before, "a routed request reached the model under test"
    return answer


def _served_locally(gate: GateStack) -> None:
    time.sleep(ROUTER_REFRESH)
    gate.cloud.clear()
    before = len(gate.proxy.routed())
    answer = gate.chat()
    assert (answer.status, answer.route, answer.served_by) == (200, "local", ALIAS), \
        answer.headers
    assert gate.cloud.calls == []
    assert len(gate.proxy.routed()) == before + 1, "the local request did not reach the slot"


def test_the_first_model_was_evaluated_and_serves(gate: GateStack) -> None:
    assert _history(gate) == [("gate-v1.gguf", "Passed")]
    assert gate.condition("Evaluated")["reason"] == "EvaluationPassed"
    assert any(s.evaluation for s in gate.proxy.seen), "no evaluation request reached the model"
    _served_locally(gate)


def test_a_model_whose_evaluation_passes_goes_live(gate: GateStack) -> None:
    gate.proxy.evaluation_delay = EVALUATION_DELAY
    gate.change({"model": _model(2)})
    _bridged_while_evaluating(gate)
    wait(lambda: gate.phase() == "Ready", 60, "v2 Ready after its evaluation")
    assert gate.template_model() == "/models/gate-v2.gguf"
    assert gate.condition("Evaluated")["status"] == "True"
    assert _history(gate) == [("gate-v1.gguf", "Passed"), ("gate-v2.gguf", "Passed")]
    assert any("gate (gate-v2.gguf)" in m for m in gate.events("EvaluationPassed"))
    _served_locally(gate)


def test_a_model_whose_evaluation_fails_is_rolled_back_and_never_routed_to(
        gate: GateStack) -> None:
    gate.proxy.evaluation_delay = EVALUATION_DELAY
    # The latency bound is below what the (slow) server can do.
    gate.change({"model": _model(3), "evaluation": {"maxLatency": "1s", "prompts": PROMPTS}})
    _bridged_while_evaluating(gate)
    wait(lambda: gate.status().get("rejectedModel") is not None, 60, "v3 rejected")
    wait(lambda: gate.phase() == "Ready", 60, "the previous model back")
    gate.proxy.evaluation_delay = 0.0

    spec = gate.slot()["spec"]
    assert spec["model"]["path"] == "gate-v3.gguf", "the operator changed the spec"
    assert gate.template_model() == "/models/gate-v2.gguf", \
        "the pod template does not run the previous model"
    evaluated = gate.condition("Evaluated")
    assert (evaluated["status"], evaluated["reason"]) == ("False", "EvaluationFailed")
    assert "hello: latency" in evaluated["message"]
    warnings = gate.events("EvaluationFailed")
    assert warnings and "rolling back to gate (gate-v2.gguf)" in warnings[0], warnings
    assert _history(gate) == [("gate-v1.gguf", "Passed"), ("gate-v2.gguf", "Passed"),
                              ("gate-v3.gguf", "Failed"), ("gate-v2.gguf", "Passed")]
    history = gate.status()["history"]

    # From v3's pod answering until v2's came back, only evaluation traffic reached
    # the model.
    failed_from = parse_time(history[2]["since"])
    back_at = parse_time(history[3]["since"])
    assert failed_from is not None and back_at is not None
    during = [s for s in gate.proxy.seen if failed_from <= s.at <= back_at
              and s.path.endswith("/completions")]
    assert during and all(s.evaluation for s in during), during
    _served_locally(gate)
    assert gate.template_model() == "/models/gate-v2.gguf"
    counted = [line for line in gate.operator.scrape().splitlines()
               if line.startswith("hybrid_compute_model_evaluations_total{")
               and f'namespace="{gate.namespace}"' in line and 'result="Failed"' in line]
    assert counted and float(counted[0].split()[-1]) == 1, counted


def test_a_new_spec_after_the_rejection_is_tried(gate: GateStack) -> None:
    gate.change({"model": _model(4), "evaluation": {"maxLatency": "30s", "prompts": PROMPTS}})
    wait(lambda: gate.template_model() == "/models/gate-v4.gguf", 30, "v4 in the template")
    wait(lambda: gate.phase() == "Ready" and gate.status().get("rejectedModel") is None,
         60, "v4 Ready")
    assert [path for path, _ in _history(gate)][-2:] == ["gate-v2.gguf", "gate-v4.gguf"]
