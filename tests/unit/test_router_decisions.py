"""The router's decision, row by row of the seed's routing matrix, plus bridging,
privacy and budget. The LiteLLM proxy tests prove the same through the proxy."""

from __future__ import annotations

import asyncio
import time
from types import MappingProxyType
from typing import Any

import pytest

from hybrid_compute.api.routepolicy import RoutePolicySpec
from hybrid_compute.dev.bootstrap import sample_manifests
from hybrid_compute.plan.objects import slot_from_object
from hybrid_compute.render.litellm_config import render_rules
from hybrid_compute.router import hybrid_router
from hybrid_compute.router.hybrid_router import (
    EARLY_REFRESH_SECONDS,
    STATE_REFRESH_SECONDS,
    HybridRouter,
    OperatorClient,
    decide,
    estimate_tokens,
    is_private,
    own_policy_state,
    parse_patience,
    request_patience,
)
from tests.conftest import REPOSITORY_ROOT

SAMPLES = sample_manifests(REPOSITORY_ROOT)
RULES = render_rules(
    RoutePolicySpec.model_validate(next(o for o in SAMPLES if o["kind"] == "RoutePolicy")["spec"]),
    [slot_from_object(o) for o in SAMPLES if o["kind"] == "ModelSlot"])


def state(not_ready: tuple[str, ...] = (), gpu_busy: bool = False,
          budget_remaining: float | None = 50.0) -> dict[str, Any]:
    fallbacks = {"local/fast": "cloud/fast", "local/quality": "cloud/mid",
                 "local/quality-alt": "cloud/mid"}
    return {
        "slots": [{"alias": alias, "ready": alias not in not_ready,
                   "phase": "Standby" if alias in not_ready else "Ready",
                   "fallback": fallbacks.get(alias)}
                  for alias in ("local/fast", "local/quality", "local/quality-alt",
                                "local/embed")],
        "gpuBusy": gpu_busy,
        "budget": {"remaining": budget_remaining},
    }


def auto(text: str = "hello", **metadata: Any) -> dict[str, Any]:
    return {"model": "hybrid/auto", "messages": [{"role": "user", "content": text}],
            "metadata": metadata}


LONG = "x" * (4 * 17000)


@pytest.mark.parametrize("request_data, expected, route", [
    (auto(task="embedding"), "local/embed", "local"),
    (auto(task="classification"), "local/fast", "local"),
    (auto(task="extraction"), "local/fast", "local"),
    (auto(task="summarization"), "local/fast", "local"),
    (auto(task="code-completion"), "local/quality", "local"),
    (auto(task="rag"), "local/fast", "local"),
    (auto(task="batch"), "local/fast", "local"),
    (auto(task="reasoning"), "cloud/frontier", "cloud"),
    (auto(task="architecture"), "cloud/frontier", "cloud"),
    (auto(task="creative"), "cloud/frontier", "cloud"),
    (auto(task="multi-turn-agent"), "cloud/frontier", "cloud"),
    (auto(task="speed-critical"), "cloud/fast", "cloud"),
    (auto(complexity="simple"), "local/fast", "local"),
    (auto(complexity="medium"), "local/quality", "local"),
    (auto(LONG, complexity="medium"), "cloud/mid", "cloud"),
    (auto(complexity="complex"), "cloud/frontier", "cloud"),
    (auto("short question"), "local/fast", "local"),
    (auto("y" * (4 * 5000)), "local/quality", "local"),
    (auto(LONG), "cloud/mid", "cloud"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_routing_matrix(request_data: dict[str, Any], expected: str, route: str) -> None:
    decision = decide(request_data, RULES, state())
    assert (decision.model, decision.route) == (expected, route), decision


def test_embedding_calls_go_to_the_embedding_slot() -> None:
    data = {"model": "hybrid/auto", "input": "vectorise me"}
    assert decide(data, RULES, state(), call_type="aembedding").model == "local/embed"


def test_gpu_busy_overflows_to_cloud() -> None:
    decision = decide(auto(complexity="simple"), RULES, state(gpu_busy=True))
    assert (decision.model, decision.route) == ("cloud/mid", "cloud")


def test_exhausted_budget_sends_complex_work_local() -> None:
    decision = decide(auto(complexity="complex"), RULES, state(budget_remaining=0))
    assert (decision.model, decision.route) == ("local/quality", "local")
    explicit = decide({"model": "cloud/frontier"}, RULES, state(budget_remaining=0))
    assert explicit.model == "local/quality" and "budget" in explicit.reason


def test_a_local_alias_that_is_not_ready_is_bridged_to_its_fallback() -> None:
    decision = decide({"model": "local/quality"}, RULES, state(not_ready=("local/quality",)))
    assert (decision.model, decision.route) == ("cloud/mid", "bridged")
    assert "local/quality is Standby" in decision.reason


def test_privacy_never_bridges_to_cloud() -> None:
    data = {"model": "local/quality", "metadata": {"tags": ["private"]}}
    decision = decide(data, RULES, state(not_ready=("local/quality",)))
    assert decision.route == "hold" and decision.private
    assert decision.model == "local/quality"


def test_privacy_keeps_auto_local_even_for_complex_work_or_a_busy_gpu() -> None:
    for current in (state(), state(gpu_busy=True)):
        decision = decide(auto(complexity="complex", tags=["sensitive"]), RULES, current)
        assert decision.model.startswith("local/"), decision


def test_privacy_refuses_an_explicit_cloud_model() -> None:
    decision = decide({"model": "cloud/frontier", "metadata": {"privacy": True}}, RULES,
                      state())
    assert (decision.route, decision.status) == ("refused", 403)


def test_privacy_markers() -> None:
    assert is_private({"metadata": {"tags": ["PRIVATE"]}}, RULES)
    assert is_private({"metadata": {"privacy": "sensitive"}}, RULES)
    assert not is_private({"metadata": {"tags": ["batch"]}}, RULES)
    assert not is_private({}, RULES)


def test_token_estimate_counts_messages_and_inputs() -> None:
    assert estimate_tokens({"messages": [{"content": "abcd" * 10}]}) == 10
    assert estimate_tokens({"input": ["abcd", "efgh"]}) == 2


def test_the_router_reads_its_own_policy_from_the_operator_state() -> None:
    operator_state = {"slots": state()["slots"], "policies": {
        "lab/hybrid": {"gpuBusy": True, "budget": {"remaining": 0.0, "exhausted": True}},
        "lab/other": {"gpuBusy": False, "budget": {"remaining": 9.0}}}}
    own = own_policy_state(operator_state, "lab/hybrid")
    assert own["gpuBusy"] is True and own["budget"]["remaining"] == 0.0
    decision = decide(auto(complexity="complex"), RULES, own)
    assert decision.model == RULES["routes"]["budgetExhausted"]
    assert "gpuBusy" not in own_policy_state(operator_state, "lab/missing")


def test_spend_not_yet_sent_counts_against_the_budget() -> None:
    client = OperatorClient("lab/hybrid")
    client.state = {"slots": [], "budget": {"remaining": 0.5, "exhausted": False}}
    client.unsent_spend = 0.75  # the operator was unreachable when these were spent
    budget = client.with_unsent_spend()["budget"]
    assert budget["remaining"] == -0.25 and budget["exhausted"] is True
    client.unsent_spend = 0.0
    assert client.with_unsent_spend()["budget"]["remaining"] == 0.5


def test_slots_of_other_namespaces_do_not_count() -> None:
    lab = {"namespace": "lab", "alias": "local/quality", "ready": False, "phase": "Standby",
           "fallback": "cloud/mid"}
    elsewhere = {**lab, "namespace": "elsewhere", "ready": True, "phase": "Ready"}
    own = own_policy_state({"slots": [elsewhere, lab]}, "lab/hybrid")
    assert own["slots"] == [lab]
    decision = decide({"model": "local/quality", "messages": []}, RULES, own)
    assert (decision.route, decision.model) == ("bridged", "cloud/mid")


def test_an_unknown_model_is_not_rerouted_when_the_budget_is_spent() -> None:
    decision = decide({"model": "cloud/typo", "messages": []}, RULES,
                      state(budget_remaining=0.0))
    assert (decision.model, decision.route) == ("cloud/typo", "cloud")
    known = decide({"model": "cloud/frontier", "messages": []}, RULES,
                   state(budget_remaining=0.0))
    assert known.model == RULES["routes"]["budgetExhausted"]


def test_the_last_state_is_kept_while_the_operator_is_away(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from hybrid_compute.dev.cluster import free_port

    monkeypatch.setenv("HYBRID_COMPUTE_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    client = OperatorClient("lab/hybrid")
    known = {"slots": [{"namespace": "lab", "alias": "local/fast", "ready": True}]}
    client.state = known
    assert asyncio.run(client.current(fresh=True)) == known

    async def spend_while_away() -> None:
        client.report_spend(0.25)
        while client.sending:  # the report fails in a worker thread
            await asyncio.sleep(0.01)

    asyncio.run(spend_while_away())
    assert client.unsent_spend == 0.25  # kept until the operator takes it

    started = time.monotonic()
    assert asyncio.run(client.next_state(0.3)) == known
    assert time.monotonic() - started >= 0.25, "a held request polled an absent operator flat out"


def _slow_fetches(client: OperatorClient, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Fetches that take 50 ms, each state numbered by its fetch; the list of waits
    asked for."""
    fetches: list[float] = []

    def fetch(wait: float = 0.0) -> None:
        fetches.append(wait)
        time.sleep(0.05)
        client.state, client.fetched_at = {"slots": [], "fetch": len(fetches)}, time.monotonic()

    monkeypatch.setattr(client, "_fetch", fetch)
    return fetches


def test_requests_that_find_the_state_stale_share_one_fetch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At 50 requests at once, each starting a fetch of its own would queue 50 in the
    thread pool the proxy runs its own calls in."""
    client = OperatorClient()
    _slow_fetches(client, monkeypatch)

    async def requests() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(client.current() for _ in range(50))))

    assert [s["fetch"] for s in asyncio.run(requests())] == [1] * 50
    assert asyncio.run(requests())[0]["fetch"] == 1, "a fresh state was fetched again"
    client.fetched_at = 0.0
    assert [s["fetch"] for s in asyncio.run(requests())] == [2] * 50


def test_under_steady_traffic_a_request_never_waits_for_the_refresh(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A state past the early refresh age is refreshed in the background: the
    requests meanwhile decide on the held one (still younger than the refresh age)
    and start no second fetch; the next request sees the new state."""
    client = OperatorClient()
    fetches = _slow_fetches(client, monkeypatch)
    client.state = {"slots": [], "fetch": 0}
    client.fetched_at = time.monotonic() - (EARLY_REFRESH_SECONDS + STATE_REFRESH_SECONDS) / 2

    async def steady_traffic() -> tuple[list[int], list[int]]:
        started = time.monotonic()
        meanwhile = [(await client.current())["fetch"] for _ in range(50)]
        assert time.monotonic() - started < 0.05, "a request waited for the refresh"
        assert client.refreshing is not None
        await client.refreshing
        return meanwhile, [(await client.current())["fetch"] for _ in range(50)]

    assert asyncio.run(steady_traffic()) == ([0] * 50, [1] * 50)
    assert fetches == [0.0]


# ------------------------------------------------- patience: wait for a swap or bridge


def waiting(wait: float | None, phase: str = "Standby") -> dict[str, Any]:
    """The state with local/quality not Ready and the operator's predicted wait."""
    current = state(not_ready=("local/quality",))
    for entry in current["slots"]:
        if entry["alias"] == "local/quality":
            entry.update(phase=phase, predictedWaitSeconds=wait)
    return current


def asking(header: str | None = None, **metadata: Any) -> dict[str, Any]:
    """A request for local/quality, with an x-hybrid-patience header when given."""
    data: dict[str, Any] = {"model": "local/quality", "messages": [], "metadata": metadata}
    if header is not None:
        # As LiteLLM's proxy hands the client's headers to the hook.
        data["proxy_server_request"] = {"headers": MappingProxyType(
            {"content-type": "application/json", "X-Hybrid-Patience": header})}
    return data


def test_a_request_whose_patience_covers_the_predicted_swap_waits_for_it() -> None:
    decision = decide(asking("10"), RULES, waiting(3.0))
    assert (decision.model, decision.route, decision.wanted) == (
        "local/quality", "hold", "local/quality")
    assert not decision.private
    assert "predicted 3 s <= patience 10 s" in decision.reason, decision.reason


def test_a_request_whose_patience_is_shorter_than_the_swap_is_bridged_at_once() -> None:
    decision = decide(asking("1"), RULES, waiting(3.0))
    assert (decision.model, decision.route, decision.wanted) == (
        "cloud/mid", "bridged", "local/quality")
    assert "bridged to cloud/mid: predicted 3 s > patience 1 s" in decision.reason


def test_the_policy_patience_applies_when_the_request_names_none() -> None:
    assert RULES["patienceSeconds"] == 0.0
    assert decide(asking(), RULES, waiting(0.5)).route == "bridged"
    patient = {**RULES, "patienceSeconds": 5.0}
    assert decide(asking(), patient, waiting(3.0)).route == "hold"
    assert decide(asking(), patient, waiting(8.0)).route == "bridged"


def test_a_slot_without_a_prediction_is_bridged_whatever_the_patience() -> None:
    decision = decide(asking("60"), RULES, waiting(None, phase="Pending"))
    assert decision.route == "bridged"
    assert "cannot be predicted" in decision.reason


def test_the_header_wins_over_metadata_and_both_are_capped() -> None:
    assert request_patience(asking("10s"), RULES) == 10.0
    assert request_patience(asking(patience="1.5s"), RULES) == 1.5
    assert request_patience(asking("4", patience=9), RULES) == 4.0
    assert request_patience(asking("1h"), RULES) == RULES["maxPatienceSeconds"] == 60.0
    # Unreadable values fall back to the policy's patience.
    assert request_patience(asking("soon"), {**RULES, "patienceSeconds": 5.0}) == 5.0
    headers_in_metadata = {"model": "local/quality",
                           "metadata": {"headers": {"x-hybrid-patience": "7"}}}
    assert request_patience(headers_in_metadata, RULES) == 7.0


@pytest.mark.parametrize("value, seconds", [
    (10, 10.0), ("10", 10.0), ("2.5", 2.5), ("1.5s", 1.5), ("2m", 120.0),
    ("500ms", 0.5), ("1m30s", 90.0), ("-3", None), ("nan", None), ("inf", None),
    ("soon", None), ("", None), (True, None), (None, None), ([5], None),
])
def test_patience_values(value: Any, seconds: float | None) -> None:
    assert parse_patience(value) == seconds


def test_privacy_requests_keep_holding_whatever_the_patience() -> None:
    data = asking("0", tags=["private"])
    decision = decide(data, RULES, waiting(None, phase="Pending"))
    assert (decision.route, decision.private, decision.model) == (
        "hold", True, "local/quality")


def test_the_patience_reaches_the_router_through_the_rendered_rules() -> None:
    policy = next(o for o in SAMPLES if o["kind"] == "RoutePolicy")["spec"]
    spec = RoutePolicySpec.model_validate(
        {**policy, "routing": {**policy.get("routing", {}), "patience": "5s",
                               "maxPatience": "2m"}})
    rules = render_rules(spec, [])
    assert (rules["patienceSeconds"], rules["maxPatienceSeconds"]) == (5.0, 120.0)


class ScriptedOperator(OperatorClient):
    """The operator's state as a list of snapshots, one per plan; the last repeats."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        super().__init__("lab/hybrid")
        self.states = states
        self.state = states[0]
        self.demanded: list[str] = []

    async def current(self, fresh: bool = False) -> dict[str, Any]:
        return self.state

    async def next_state(self, wait: float) -> dict[str, Any]:
        if len(self.states) > 1:
            self.states.pop(0)  # a newer plan: answered at once
        else:
            await asyncio.sleep(wait)  # none comes: the wait passes
        self.state = self.states[0]
        return self.state

    def demand(self, alias: str) -> None:
        self.demanded.append(alias)


def hook(states: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
         ) -> tuple[HybridRouter, ScriptedOperator]:
    monkeypatch.setattr(hybrid_router, "HOLD_POLL_SECONDS", 0.01)
    router = HybridRouter()
    router.rules = RULES
    operator = ScriptedOperator(states)
    router.operator = operator
    return router, operator


def test_a_held_request_is_served_locally_once_its_slot_is_ready(
        monkeypatch: pytest.MonkeyPatch) -> None:
    router, operator = hook([waiting(3.0), waiting(2.5, phase="Loading"), state()],
                            monkeypatch)
    data = asyncio.run(router.async_pre_call_hook(None, None, asking("10"), "acompletion"))
    route = data["metadata"]["hybrid_route"]
    assert (data["model"], route["route"]) == ("local/quality", "local"), route
    assert route["reason"].startswith("held "), route["reason"]
    assert "for the swap of local/quality" in route["reason"]
    assert "local/quality" in operator.demanded
    assert {(target, outcome) for (_, target, outcome) in operator.route_counts} == {
        ("local/quality", "held"), ("local/quality", "served")}


def test_a_held_request_is_bridged_when_its_patience_runs_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The swap runs late: the operator keeps predicting a little more.
    router, operator = hook([waiting(0.1, phase="Loading")], monkeypatch)
    started = time.monotonic()
    data = asyncio.run(router.async_pre_call_hook(None, None, asking("0.3"), "acompletion"))
    held = time.monotonic() - started
    route = data["metadata"]["hybrid_route"]
    assert (data["model"], route["route"]) == ("cloud/mid", "bridged"), route
    assert 0.2 <= held < 2, f"held {held:.2f} s for a patience of 0.3 s"
    assert route["reason"].startswith("held 0.") and "bridged to cloud/mid" in route["reason"]
    assert {(target, outcome) for (_, target, outcome) in operator.route_counts} == {
        ("local/quality", "held"), ("cloud/mid", "bridged")}


def test_a_private_request_is_held_up_to_the_policy_hold_timeout_then_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    router, operator = hook([waiting(None, phase="Pending")], monkeypatch)
    router.rules = {**RULES, "privacy": {**RULES["privacy"], "holdTimeoutSeconds": 0.3}}
    data = asking(tags=["private"])
    held = decide(data, router.rules, operator.state)
    started = time.monotonic()
    decision = asyncio.run(router._hold(data, "acompletion", held))
    waited = time.monotonic() - started
    assert (decision.route, decision.status, decision.private) == ("refused", 503, True)
    assert 0.2 <= waited < 2, f"held {waited:.2f} s for a hold timeout of 0.3 s"


def test_a_held_request_is_bridged_early_when_the_prediction_outgrows_its_patience(
        monkeypatch: pytest.MonkeyPatch) -> None:
    router, _ = hook([waiting(3.0), waiting(30.0, phase="Loading")], monkeypatch)
    started = time.monotonic()
    data = asyncio.run(router.async_pre_call_hook(None, None, asking("10"), "acompletion"))
    assert time.monotonic() - started < 2
    route = data["metadata"]["hybrid_route"]
    assert route["route"] == "bridged" and "predicted 30 s > patience" in route["reason"]


NEEDED_CALLBACKS = {
    "async_pre_call_hook": "resolves the model: hybrid/auto, holds, bridges, refusals",
    # LiteLLM calls it on every registered logger anyway, with the response cost it
    # has already computed (for a stream, once the stream is complete).
    "async_log_success_event": "reports cloud spend, which the budget counts",
    # The one path to headers that also serves streamed responses; overriding it
    # makes LiteLLM call the headers hook of every registered logger per request.
    "async_post_call_response_headers_hook": "the x-hybrid-route, -model and -reason headers",
}
"""The callbacks the hook overrides, and why. ``tests/serving/test_router_callbacks.py``
checks them against the installed LiteLLM's ``CustomLogger``."""


def test_the_hook_defines_only_the_callbacks_it_needs() -> None:
    """Some callbacks, once a logger overrides them, switch on per-request work in the
    proxy for every logger (streaming iterators and chunk hooks, the headers loop,
    moderation), so the hook defines no other than it needs."""
    defined = {name for name in vars(hybrid_router.HybridRouter)
               if name.startswith(("async_", "log_")) or name.endswith("_hook")}
    assert defined == set(NEEDED_CALLBACKS)
