"""The evaluation gate with real parts: a ModelSlot on the local control plane whose
spec.model changes, the operator evaluating the new model against a real
llama-server, and the real LiteLLM proxy routing requests for the slot's alias.

Runs on the process node (``node_cluster``), not kwok: every model version is a pod
whose llama-server really loads that version's file (each a different random-weight
model), readiness is its /health, a rollback really stops the rejected version's
process and starts the previous version's again, and LiteLLM is the chart-shaped
Deployment the node runs. The tests check the node's process records for that.

The operator reaches Services through a recording proxy in front of the node's
Service proxy (its ``--endpoint-template``), so the test sees every request that
reached "the model": the operator's evaluation requests carry the
``X-Hybrid-Compute-Evaluation`` header, routed ones do not. The proxy holds each
evaluation request for a few seconds (a slow model), which keeps the slot in
Evaluating long enough to send routed requests meanwhile. Tests run in file order
and share one stack.
"""

from __future__ import annotations

import contextlib
import datetime
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
from hybrid_compute.dev import local_serving
from hybrid_compute.dev.cloud_stand_in import CloudStandIn
from hybrid_compute.dev.cluster import free_port
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME
from hybrid_compute.dev.openai_call import Reply, post_json
from hybrid_compute.dev.service_proxy import proxy_prefix
from hybrid_compute.dev.tiny_models import write_tiny_model
from hybrid_compute.plan.objects import parse_time
from tests.cluster.support import apply, phase, wait
from tests.conftest import OperatorHandle, TestCluster
from tests.http_stub import StubHandler, StubServer
from tests.serving.conftest import NodeCluster, pod_pid, pod_ready, policy_config_hash

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
    node: NodeCluster
    operator: OperatorHandle
    namespace: str
    cloud: CloudStandIn
    proxy: RecordingProxy
    master_key: str

    @property
    def litellm_url(self) -> str:
        return self.node.litellm_url(self.namespace)

    def chat(self) -> Reply:
        return post_json(f"{self.litellm_url}/v1/chat/completions", {
            "model": ALIAS, "max_tokens": 4,
            "messages": [{"role": "user", "content": "Say hello."}]}, self.master_key, 60)

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

    def runs(self) -> list[tuple[str, int]]:
        """(model file, pid) of every llama-server the slot's pods started, in order."""
        return [(_model_file(r["argv"]), r["pid"]) for r in self.node.records()
                if r["event"] == "started" and r.get("namespace") == self.namespace
                and r["pod"].startswith(f"{SLOT}-")]

    def serving(self) -> tuple[str, int]:
        """The model file and pid of the llama-server of the slot's one Ready pod."""
        pods = [p for p in self.node.pods(self.namespace, SLOT)
                if pod_ready(p) and not p["metadata"].get("deletionTimestamp")]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        pid = pod_pid(pods[0])
        assert pid is not None
        return _model_file(self.node.started(pid)["argv"]), pid

    def events(self, reason: str) -> list[str]:
        listed = self.k8s.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={SLOT},reason={reason}")
        return [e.message for e in listed.items]


def _model_file(argv: list[str]) -> str:
    return Path(argv[argv.index("--model") + 1]).name


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
            "litellm": {"masterKeySecretRef": {"name": local_serving.MASTER_KEY_SECRET,
                                               "key": local_serving.MASTER_KEY_KEY}},
        },
    }


@pytest.fixture(scope="module")
def gate(k8s: TestCluster, node_cluster: NodeCluster, cloud: CloudStandIn
         ) -> Iterator[GateStack]:
    namespace = f"gate-{uuid.uuid4().hex[:6]}"
    for version in range(1, 5):  # four different models
        write_tiny_model(node_cluster.models / f"gate-v{version}.gguf", seed=version,
                         name=f"gate-v{version}")
    service_proxy = node_cluster.cluster.service_proxy_port
    assert service_proxy is not None
    proxy = RecordingProxy(proxy_prefix(service_proxy), free_port())
    port = proxy.server.port
    operator = node_cluster.start_operator(
        f"--endpoint-template=http://127.0.0.1:{port}/{{namespace}}/{{service}}/{{port}}/v1")
    master_key = f"sk-master-{uuid.uuid4().hex}"
    k8s.kubectl("create", "namespace", namespace)
    try:
        proxy.evaluation_delay = 0.0
        apply(k8s, namespace, [
            *local_serving.litellm_objects(f"http://127.0.0.1:{operator.api_port}",
                                           operator.token, master_key, DEFAULT_NODE_NAME),
            {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelSlot",
             "metadata": {"name": SLOT},
             "spec": {"alias": ALIAS, "model": _model(1), "minResidency": "1s",
                      "fallback": "cloud/fast",
                      "evaluation": {"maxLatency": "30s", "prompts": PROMPTS}}},
            _policy(cloud.url),
        ])
        wait(lambda: phase(k8s, namespace, SLOT) == "Ready", 90, "the first model Ready")
        wait(lambda: policy_config_hash(k8s, namespace), 60, "the LiteLLM config rendered")
        stack = GateStack(k8s, node_cluster, operator, namespace, cloud, proxy, master_key)
        node_cluster.wait_litellm_serving(namespace, policy_config_hash(k8s, namespace))
        yield stack
    finally:
        k8s.release_namespace(namespace)
        node_cluster.stop_operator()
        proxy.stop()


def _bridged_while_evaluating(gate: GateStack) -> Reply:
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


def _replaced(gate: GateStack, old_pid: int, new_pid: int) -> None:
    """The old version's llama-server exited before the new one's started."""
    exited = gate.node.exited(old_pid)
    assert exited is not None, f"llama-server {old_pid} still runs"
    assert exited["at"] < gate.node.started(new_pid)["at"], "two versions ran at once"


def test_the_first_model_was_evaluated_and_serves(gate: GateStack) -> None:
    assert _history(gate) == [("gate-v1.gguf", "Passed")]
    assert gate.serving()[0] == "gate-v1.gguf"
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
    runs = gate.runs()
    assert [model for model, _ in runs] == ["gate-v1.gguf", "gate-v2.gguf"]
    assert gate.serving() == runs[-1]
    _replaced(gate, runs[0][1], runs[1][1])
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
    # Really rolled back: v3's llama-server stopped, then v2's loaded again.
    runs = gate.runs()
    assert [model for model, _ in runs] == ["gate-v1.gguf", "gate-v2.gguf", "gate-v3.gguf",
                                            "gate-v2.gguf"]
    assert len({pid for _, pid in runs}) == 4
    _replaced(gate, runs[1][1], runs[2][1])
    _replaced(gate, runs[2][1], runs[3][1])
    assert gate.serving() == runs[-1]
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
    assert gate.serving()[0] == "gate-v4.gguf"
    _replaced(gate, gate.runs()[-2][1], gate.serving()[1])
