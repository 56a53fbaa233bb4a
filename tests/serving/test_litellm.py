"""The request side end to end: the operator renders LiteLLM's config from a
RoutePolicy and ModelSlots, the real LiteLLM proxy runs it with the router hook,
real llama-server processes serve the local aliases and the stand-in cloud
records every cloud call.

Runs on the process node (``node_cluster``): each slot's pod is a llama-server
loading its model for real (its readiness is its /health, a swap stops one
process before the next starts), and LiteLLM is the chart-shaped Deployment the
node runs with its ConfigMap and Secrets, so a config change is a real rollout
and a restart a new process. Tests run in file order and share one stack: the
swap tests rely on their slot starting in Standby.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hybrid_compute.dev.cloud_stand_in import COMPLETION_TOKENS, PROMPT_TOKENS, CloudStandIn
from hybrid_compute.dev.openai_call import Reply
from hybrid_compute.dev.pod_worker import READY_DELAY
from hybrid_compute.render.children import child_name
from tests.cluster.support import phase, wait
from tests.conftest import SIMULATED_AGENT_PORT, SimulatedGpuAgent
from tests.serving.conftest import NodeCluster
from tests.serving.litellm_stack import (
    GROUP,
    MODEL_FILE,
    PORT,
    ROUTER_REFRESH,
    Stack,
    cloud_model,
    litellm_stack,
    model_slot,
    route_policy,
    secret,
)

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

FRONTIER_INPUT_PER_M = 3.0
FRONTIER_OUTPUT_PER_M = 15.0
FRONTIER_CALL_COST = (PROMPT_TOKENS * FRONTIER_INPUT_PER_M
                      + COMPLETION_TOKENS * FRONTIER_OUTPUT_PER_M) / 1e6
BUDGET = round(FRONTIER_CALL_COST * 3.5, 6)
HOLD_TIMEOUT_SECONDS = 10
CODER_LOAD_SECONDS = 2
"""How long coder's tiny model takes to load, as the process node plays it: a swap
to coder lasts seconds, as a real model's would."""


@pytest.fixture(scope="module")
def stack(node_cluster: NodeCluster, cloud: CloudStandIn,
          gpu_agent: SimulatedGpuAgent) -> Iterator[Stack]:
    cloud_key = f"sk-cloud-{uuid.uuid4().hex}"
    policy = route_policy(
        [cloud_model(cloud.url, "cloud/fast", "cloud-fast"),
         cloud_model(cloud.url, "cloud/mid", "cloud-mid"),
         cloud_model(cloud.url, "cloud/frontier", "cloud-frontier",
                     apiKeySecretRef={"name": "cloud-keys", "key": "frontier"},
                     inputCostPerMillion=FRONTIER_INPUT_PER_M,
                     outputCostPerMillion=FRONTIER_OUTPUT_PER_M)],
        routing={"tasks": {"classification": "local/fast"},
                 "privacy": {"holdTimeout": f"{HOLD_TIMEOUT_SECONDS}s"}},
        budget={"amount": BUDGET, "period": "Day"},
        router={"numRetries": 0, "timeout": "60s"})
    with litellm_stack(node_cluster, cloud, [
            secret("cloud-keys", {"frontier": cloud_key}),
            model_slot("fast", "local/fast", default=True, fallback="cloud/fast",
                 model={"path": MODEL_FILE, "servedName": "fast", "vram": "5Gi"}),
            model_slot("quality", "local/quality", activation="OnDemand",
                 idleTimeout="10m", priority=300, fallback="cloud/mid",
                 model={"path": MODEL_FILE, "servedName": "quality", "vram": "16Gi"}),
            model_slot("coder", "local/coder", activation="OnDemand",
                 idleTimeout="20s", priority=200, fallback="cloud/mid",
                 model={"path": MODEL_FILE, "servedName": "coder", "vram": "16Gi"},
                 podAnnotations={READY_DELAY: f"{CODER_LOAD_SECONDS}s"}),
            model_slot("embed", "local/embed", device="cpu", embedding=True),
            model_slot("broken", "local/broken", activation="OnDemand", idleTimeout="1m",
                 model={"path": MODEL_FILE, "vram": "30Gi"}),
            policy],
            operator_args=[f"--gpu-agent=http://127.0.0.1:{SIMULATED_AGENT_PORT}"],
            cloud_key=cloud_key) as stack:
        yield stack


# --------------------------------------------------------------------- tests


def test_local_alias_is_served_by_llama_server(stack: Stack) -> None:
    stack.cloud.clear()
    answer = stack.chat("local/fast")
    assert answer.status == 200, answer.body
    assert (answer.route, answer.served_by) == ("local", "local/fast")
    choice = answer.body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert answer.body["usage"]["completion_tokens"] >= 1
    assert stack.cloud.calls == []


def test_private_request_waits_for_its_swap_and_never_reaches_the_cloud(
        stack: Stack) -> None:
    assert phase(stack.k8s, stack.namespace, "coder") == "Standby"
    stack.cloud.clear()
    started = time.monotonic()
    answer = stack.chat("local/coder", "Refactor this private code.", tags=["private"])
    waited = time.monotonic() - started
    assert answer.status == 200, answer.body
    assert (answer.route, answer.served_by) == ("local", "local/coder")
    assert waited >= 0.5, "the request was answered before the slot could have loaded"
    assert phase(stack.k8s, stack.namespace, "coder") == "Ready"
    assert stack.cloud.calls == [], "a privacy-tagged request reached the cloud"


def _predicted_wait(stack: Stack, slot: str) -> float | None:
    code, body = stack.operator.call("GET", "/v1/state")
    assert code == 200, body
    entry = next(s for s in body["slots"]
                 if (s["namespace"], s["name"]) == (stack.namespace, slot))
    wait_seconds: float | None = entry.get("predictedWaitSeconds")
    return wait_seconds


def _recent_swaps(stack: Stack, slot: str) -> list[float]:
    body = stack.k8s.custom.get_namespaced_custom_object(
        GROUP, "v1alpha1", stack.namespace, "modelslots", slot)
    recent: list[float] = (body.get("status") or {}).get("recentSwapSeconds") or []
    return recent


def _set_idle_timeout(stack: Stack, slot: str, idle: str) -> None:
    stack.k8s.custom.patch_namespaced_custom_object(
        GROUP, "v1alpha1", stack.namespace, "modelslots", slot,
        {"spec": {"idleTimeout": idle}})


def _chat_with_patience(stack: Stack, model: str, patience: str) -> tuple[Reply, float]:
    started = time.monotonic()
    answer = stack.call("/v1/chat/completions", {
        "model": model, "max_tokens": 8,
        "messages": [{"role": "user", "content": "Review this diff."}]},
        headers={"x-hybrid-patience": patience})
    return answer, time.monotonic() - started


def test_a_request_waits_for_a_swap_within_its_patience_and_is_bridged_beyond_it(
        stack: Stack) -> None:
    """Each load of coder evicts fast (drained, its llama-server stopped) and starts
    coder's llama-server, a few seconds in all; the operator predicts the next load
    from the ones it saw (the test above loads coder once; alone, this test does)."""
    # coder idles out in 5 s instead of 20 s, so it is back in Standby soon; still
    # longer than a load, which a demand must outlast.
    _set_idle_timeout(stack, "coder", "5s")
    try:
        if not _recent_swaps(stack, "coder"):
            stack.operator.demand("local/coder")
            wait(lambda: bool(_recent_swaps(stack, "coder")), 60, "coder loaded once")
        wait(lambda: phase(stack.k8s, stack.namespace, "coder") == "Standby", 60,
             "coder idle again")
        recent = _recent_swaps(stack, "coder")
        predicted = _predicted_wait(stack, "coder")
        assert predicted == pytest.approx(statistics.median(recent), abs=0.1), (
            f"expected the median of coder's loads {recent}, got {predicted}")
        assert predicted >= 0.3, f"expected a real swap to take a while, got {recent}"
        # Patience well beyond the prediction, however slow the machine is today.
        patience = max(10, math.ceil(3 * predicted))
        time.sleep(ROUTER_REFRESH)
        stack.cloud.clear()
        held, waited = _chat_with_patience(stack, "local/coder", str(patience))
        assert held.status == 200, held.body
        reason = held.headers["x-hybrid-reason"]
        assert (held.route, held.served_by) == ("local", "local/coder"), reason
        assert reason.startswith("held ") and "for the swap of local/coder" in reason, reason
        assert waited >= predicted / 2, "the request was answered before coder could load"
        assert stack.cloud.calls == [], "a request with patience for the swap reached the cloud"

        wait(lambda: phase(stack.k8s, stack.namespace, "coder") == "Standby", 60,
             "coder idle again")
        predicted = _predicted_wait(stack, "coder")
        assert predicted is not None and predicted >= 0.3, predicted
        short = max(0.1, round(predicted / 3, 1))
        time.sleep(ROUTER_REFRESH)
        stack.cloud.clear()
        bridged, waited = _chat_with_patience(stack, "local/coder", f"{short:g}")
        assert bridged.status == 200, bridged.body
        assert (bridged.route, bridged.served_by) == ("bridged", "cloud/mid"), bridged.headers
        reason = bridged.headers["x-hybrid-reason"]
        assert "bridged to cloud/mid: predicted" in reason, reason
        assert f"> patience {short:g} s" in reason, reason
        assert stack.cloud.models_called() == ["cloud-mid"]
    finally:
        _set_idle_timeout(stack, "coder", "20s")


def test_private_request_gets_503_when_its_model_cannot_load(stack: Stack) -> None:
    stack.cloud.clear()
    started = time.monotonic()
    answer = stack.chat("local/broken", "Private notes.", tags=["private"])
    waited = time.monotonic() - started
    assert answer.status == 503, answer.body
    assert "never leave the box" in json.dumps(answer.body)
    assert HOLD_TIMEOUT_SECONDS <= waited < HOLD_TIMEOUT_SECONDS + 10
    assert stack.cloud.calls == []


def _refused_locally_after_the_hold(stack: Stack, body: dict[str, Any],
                                    headers: dict[str, str] | None = None) -> None:
    """A request for local/broken (its model never fits, so it never loads), marked
    private only as ``body``/``headers`` say: the hook holds it for the policy's
    hold timeout and refuses it with the privacy refusal, and no cloud is called.
    A request the hook did not see as private would go straight to the slot's
    dead endpoint instead, without the hold or the refusal's words."""
    stack.cloud.clear()
    started = time.monotonic()
    answer = stack.call("/v1/chat/completions", {
        "model": "local/broken", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Private notes."}], **body},
        headers=headers)
    waited = time.monotonic() - started
    assert answer.status == 503, answer.body
    assert "never leave the box" in json.dumps(answer.body), answer.body
    assert HOLD_TIMEOUT_SECONDS <= waited < HOLD_TIMEOUT_SECONDS + 10
    assert stack.cloud.calls == [], "a private request reached the cloud"


def test_private_top_level_tags_reach_the_router(stack: Stack) -> None:
    _refused_locally_after_the_hold(stack, {"tags": ["private"]})


def test_private_tags_header_reaches_the_router(stack: Stack) -> None:
    # LiteLLM's header spelling: one comma-separated string, any case.
    _refused_locally_after_the_hold(stack, {}, headers={"x-litellm-tags": "team-a, Private"})


def test_swap_bridges_to_cloud_then_serves_locally(stack: Stack) -> None:
    assert phase(stack.k8s, stack.namespace, "quality") == "Standby"
    stack.cloud.clear()
    bridged = stack.chat("local/quality", "Explain the plan.")
    assert bridged.status == 200, bridged.body
    assert (bridged.route, bridged.served_by) == ("bridged", "cloud/mid")
    assert "bridged to cloud/mid" in bridged.headers["x-hybrid-reason"]
    assert stack.cloud.models_called() == ["cloud-mid"]
    # The bridged request also asked the operator for the slot.
    wait(lambda: phase(stack.k8s, stack.namespace, "quality") == "Ready", 60,
         "quality swapped in")
    time.sleep(ROUTER_REFRESH)
    stack.cloud.clear()
    local = stack.chat("local/quality", "Explain the plan.")
    assert (local.status, local.route, local.served_by) == (200, "local", "local/quality")
    assert stack.cloud.calls == []


def _route_count(stack: Stack, alias: str, target: str, outcome: str) -> float:
    # Label order is the client library's (prometheus_client 0.26 sorts them).
    wanted = {f'alias="{alias}"', f'target="{target}"', f'outcome="{outcome}"'}
    for line in stack.operator.scrape().splitlines():
        name, _, rest = line.partition("{")
        if name == "hybrid_compute_router_requests_total":
            labels, _, value = rest.rpartition("} ")
            if set(labels.split(",")) == wanted:
                return float(value)
    return 0.0


def test_route_outcomes_are_counted_by_the_operator(stack: Stack) -> None:
    """Bridged, held and refused requests from the tests above, as operator metrics
    (the router reports its counts with each state refresh)."""
    wait(lambda: _route_count(stack, "local/quality", "cloud/mid", "bridged") >= 1, 15,
         "the bridged request counted")
    assert _route_count(stack, "local/coder", "local/coder", "held") >= 1
    assert _route_count(stack, "local/broken", "local/broken", "refused") >= 1
    assert _route_count(stack, "local/fast", "local/fast", "served") >= 1


MATRIX = [
    # (metadata, content, expected alias, expected route)
    pytest.param({"complexity": "simple"}, "Classify: spam?", "local/fast", "local",
                 id="simple-local-fast"),
    pytest.param({"complexity": "medium"}, "Summarise this design.", "local/quality", "local",
                 id="medium-short-local-quality"),
    pytest.param({"complexity": "medium"}, "word " * 16500, "cloud/mid", "cloud",
                 id="medium-long-cloud-mid"),
    pytest.param({"complexity": "complex"}, "Design a new architecture.", "cloud/frontier",
                 "cloud", id="complex-cloud-frontier"),
    pytest.param({"complexity": "complex", "tags": ["private"]}, "Design it privately.",
                 "local/quality", "local", id="complex-private-stays-local"),
    pytest.param({"task": "classification"}, "Classify this.", "local/fast", "local",
                 id="task-rule"),
    pytest.param({}, "hi", "local/fast", "local", id="heuristic-short-simple"),
]


@pytest.mark.parametrize(("metadata", "content", "alias", "route"), MATRIX)
def test_auto_routes_by_the_matrix(stack: Stack, metadata: dict[str, Any], content: str,
                                   alias: str, route: str) -> None:
    stack.ensure_ready("quality", "local/quality")
    stack.cloud.clear()
    answer = stack.chat("hybrid/auto", content, **metadata)
    assert answer.status == 200, answer.body
    assert (answer.served_by, answer.route) == (alias, route), answer.headers
    cloud_models = stack.cloud.models_called()
    if route == "cloud":
        assert cloud_models == [alias.replace("/", "-")]
    else:
        assert cloud_models == []


def test_auto_embeddings_go_to_the_local_embedder(stack: Stack) -> None:
    stack.cloud.clear()
    answer = stack.call("/v1/embeddings", {"model": "hybrid/auto", "input": "a sentence"})
    assert answer.status == 200, answer.body
    assert (answer.served_by, answer.route) == ("local/embed", "local")
    vector = answer.body["data"][0]["embedding"]
    assert len(vector) == 64 and all(isinstance(x, float) for x in vector)
    assert stack.cloud.calls == []


def _gpu_busy(stack: Stack) -> bool:
    code, body = stack.operator.call("GET", "/v1/state")
    policy = (body.get("policies") or {}).get(f"{stack.namespace}/hybrid") or {}
    return code == 200 and bool(policy.get("gpuBusy"))


def test_busy_gpu_sends_local_bound_work_to_the_cloud(stack: Stack,
                                                      gpu_agent: SimulatedGpuAgent) -> None:
    stack.ensure_ready("quality", "local/quality")
    gpu_agent.gpu.utilization_percent = 95  # above the policy's gpuBusyThreshold (80)
    try:
        wait(lambda: _gpu_busy(stack), 30, "the operator to see the GPU busy")
        # The plan reaches routers before its writes land: the status follows.
        wait(lambda: (stack.policy().get("status") or {}).get("gpuBusy") is True, 10,
             "the RoutePolicy's status to say the GPU is busy")
        time.sleep(ROUTER_REFRESH)
        stack.cloud.clear()
        answer = stack.chat("hybrid/auto", "Summarise this design.", complexity="medium")
        assert (answer.status, answer.served_by, answer.route) == (200, "cloud/mid", "cloud")
        assert "GPU busy" in answer.headers["x-hybrid-reason"]
        assert stack.cloud.models_called() == ["cloud-mid"]
        stack.cloud.clear()
        private = stack.chat("hybrid/auto", "Summarise privately.", complexity="medium",
                             tags=["private"])
        assert (private.served_by, private.route) == ("local/quality", "local")
        assert stack.cloud.calls == []
    finally:
        gpu_agent.gpu.utilization_percent = 0
        wait(lambda: not _gpu_busy(stack), 30, "the GPU calm again")
        time.sleep(ROUTER_REFRESH)


def test_no_secret_value_appears_outside_its_secret(stack: Stack) -> None:
    stack.cloud.clear()
    # The key reached the provider, so LiteLLM had it: from the Secret, through env.
    k8s, namespace = stack.k8s, stack.namespace
    config_map = k8s.core.read_namespaced_config_map("litellm-config", namespace)
    texts = {
        "ConfigMap": json.dumps(config_map.data),
        "RoutePolicy": json.dumps(stack.policy()),
        "ModelSlots": k8s.kubectl("get", "modelslots", "-n", namespace, "-o", "json").stdout,
        "Events": k8s.kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
        "Deployment": k8s.kubectl("get", "deployment", "litellm", "-n", namespace,
                                  "-o", "json").stdout,
        "operator log": (stack.operator.cluster.folder / "logs" / "operator.log").read_text(
            errors="replace"),
        "pod logs": stack.node.pod_logs(namespace),
    }
    for value in (stack.cloud_key, stack.master_key, stack.operator.token):
        leaks = [where for where, text in texts.items() if value in text]
        assert leaks == [], f"a secret value appears in {leaks}"
    assert "os.environ/HC_CLOUD_KEYS_FRONTIER" in config_map.data["config.yaml"]
    env = json.loads(texts["Deployment"])["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HC_CLOUD_KEYS_FRONTIER", "valueFrom": {"secretKeyRef": {
        "name": "cloud-keys", "key": "frontier"}}} in env


def test_cloud_key_reaches_only_its_provider(stack: Stack) -> None:
    stack.cloud.clear()
    answer = stack.chat("cloud/frontier", "Hello frontier.")
    assert answer.status == 200, answer.body
    calls = stack.cloud.calls
    assert [c.model for c in calls] == ["cloud-frontier"]
    assert calls[0].authorization == f"Bearer {stack.cloud_key}"
    stack.cloud.clear()
    assert stack.chat("cloud/mid").status == 200
    assert stack.cloud.calls[0].authorization != f"Bearer {stack.cloud_key}"


def _scrape(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=10) as response:
        text: str = response.read().decode()
        return text


def test_the_dashboards_serving_metrics_are_exported_for_real(stack: Stack) -> None:
    """The LiteLLM and llama-server series the dashboard reads, from the real
    processes (the dashboard test checks the names; this checks they exist)."""
    assert stack.chat("local/fast").status == 200
    assert stack.chat("cloud/frontier").status == 200
    # LiteLLM 1.108.7 guards /metrics with the master key by default; the chart's
    # ServiceMonitor sends it.
    litellm = _scrape(f"{stack.litellm_url}/metrics/", stack.master_key)
    for name in ("litellm_proxy_total_requests_metric_total",
                 "litellm_request_total_latency_metric_bucket",
                 "litellm_spend_metric_total"):
        assert f"\n{name}{{" in litellm, f"{name} missing from LiteLLM's /metrics"
    fast = stack.node.service_url(stack.namespace, child_name("fast"), PORT)
    llama = _scrape(f"{fast}/metrics")
    for name in ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                 "llamacpp:predicted_tokens_seconds", "llamacpp:requests_processing",
                 "llamacpp:requests_deferred"):
        assert f"\n{name} " in llama, f"{name} missing from llama-server's /metrics"


def _spent(stack: Stack) -> float:
    return float(((stack.policy().get("status") or {}).get("spend") or {}).get("amount", 0))


def test_exhausted_budget_sends_complex_work_local_and_survives_restarts(
        stack: Stack) -> None:
    stack.ensure_ready("quality", "local/quality")
    outcomes = []
    for _ in range(8):
        answer = stack.chat("hybrid/auto", "Design a new architecture.", complexity="complex")
        assert answer.status == 200, answer.body
        outcomes.append(answer.served_by)
        if answer.served_by == "local/quality":
            break
        time.sleep(0.5)  # the spend report reaches the operator
    assert outcomes[-1] == "local/quality", outcomes
    assert outcomes[0] == "cloud/frontier"
    assert "budget exhausted" in answer.headers["x-hybrid-reason"]
    wait(lambda: _spent(stack) >= BUDGET, 30, "spend persisted in the RoutePolicy status")
    spent = _spent(stack)
    status = stack.policy()["status"]
    assert status["budgetRemaining"] <= 0
    # Within a float's rounding of whole calls: every cloud call was counted once.
    calls = round(spent / FRONTIER_CALL_COST)
    assert abs(spent - calls * FRONTIER_CALL_COST) < 1e-6

    stack.operator.restart()
    stack.restart_litellm()
    wait(lambda: _policy_state_loaded(stack), 60, "operator back with its state")
    time.sleep(ROUTER_REFRESH)
    again = stack.chat("hybrid/auto", "Design a new architecture.", complexity="complex")
    assert (again.status, again.served_by) == (200, "local/quality"), again.headers
    assert _spent(stack) == pytest.approx(spent)


def _policy_state_loaded(stack: Stack) -> bool:
    try:
        code, body = stack.operator.call("GET", "/v1/state")
    except OSError:
        return False
    budget = ((body.get("policies") or {}).get(f"{stack.namespace}/hybrid") or {}).get(
        "budget") if code == 200 else None
    return bool(budget and budget["exhausted"])


def test_config_change_restarts_litellm_and_serves_the_new_config(stack: Stack) -> None:
    before = stack.config_hash()
    starts = len(stack.node.litellm_starts(stack.namespace))
    unknown = stack.chat("cloud/new")
    assert unknown.status >= 400
    policy = stack.policy()
    models = policy["spec"]["cloudModels"]
    models.append({"alias": "cloud/new", "model": "openai/cloud-new",
                   "apiBase": stack.cloud.url, "inputCostPerMillion": 0,
                   "outputCostPerMillion": 0})
    # A bigger budget too: the test before this one spent it.
    stack.k8s.custom.patch_namespaced_custom_object(
        GROUP, "v1alpha1", stack.namespace, "routepolicies", "hybrid",
        {"spec": {"cloudModels": models, "budget": {"amount": 100, "period": "Day"}}})
    wait(lambda: stack.config_hash() != before, 30, "a new rendering")
    stack.wait_litellm_serving()
    assert len(stack.node.litellm_starts(stack.namespace)) > starts, "no new LiteLLM process"
    wait(lambda: stack.condition("Ready") == "True", 60,
         "RoutePolicy Ready with the new config")
    stack.cloud.clear()
    answer = stack.chat("cloud/new")
    assert answer.status == 200, answer.body
    assert stack.cloud.models_called() == ["cloud-new"]


def _set_local_only_aliases(stack: Stack, aliases: list[str] | None) -> None:
    """Patches the policy (None removes the field) and waits for LiteLLM to serve
    the new rendering."""
    before = stack.config_hash()
    stack.k8s.custom.patch_namespaced_custom_object(
        GROUP, "v1alpha1", stack.namespace, "routepolicies", "hybrid",
        {"spec": {"routing": {"privacy": {"localOnlyAliases": aliases}}}})
    wait(lambda: stack.config_hash() != before, 30, "a new rendering")
    stack.wait_litellm_serving()
    time.sleep(ROUTER_REFRESH)  # the new router's first state refresh


def test_privacy_local_only_aliases_keep_untagged_requests_local(stack: Stack) -> None:
    # Untagged and not local-only yet: no hold, no privacy refusal (the dead
    # endpoint's error comes back at once), so the refusal below is the alias's doing.
    started = time.monotonic()
    untagged = stack.chat("local/broken", "Notes.")
    assert untagged.status != 200 and "never leave the box" not in json.dumps(untagged.body)
    assert time.monotonic() - started < HOLD_TIMEOUT_SECONDS
    _set_local_only_aliases(stack, ["local/broken"])
    try:
        _refused_locally_after_the_hold(stack, {})
    finally:
        _set_local_only_aliases(stack, None)
