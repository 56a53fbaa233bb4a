"""Privacy on every channel LiteLLM (1.108.7) carries, with the data shapes it hands
the pre-call hook: the request's metadata (or litellm_metadata), the top-level tags,
the x-litellm-tags header as proxy_server_request.headers holds it, the virtual
key's and its team's metadata (on UserAPIKeyAuth, and as LiteLLM copies them into
metadata.user_api_key_metadata / user_api_key_team_metadata), and the policy's
local-only aliases and keys. A private request is never given a cloud alias."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from hybrid_compute.api.routepolicy import RoutePolicySpec
from hybrid_compute.dev.bootstrap import sample_manifests
from hybrid_compute.plan.objects import slot_from_object
from hybrid_compute.render.litellm_config import render_rules
from hybrid_compute.router import hybrid_router
from hybrid_compute.router.hybrid_router import (
    HybridRouter,
    caller_of,
    decide,
    privacy_channel,
)
from tests.conftest import REPOSITORY_ROOT

SAMPLES = sample_manifests(REPOSITORY_ROOT)
POLICY = next(o for o in SAMPLES if o["kind"] == "RoutePolicy")["spec"]
SLOTS = [slot_from_object(o) for o in SAMPLES if o["kind"] == "ModelSlot"]


def rules(**privacy: Any) -> dict[str, Any]:
    spec = {**POLICY, "routing": {**POLICY["routing"],
                                  "privacy": {**POLICY["routing"]["privacy"], **privacy}}}
    return render_rules(RoutePolicySpec.model_validate(spec), SLOTS)


STATE = {"slots": [{"alias": "local/quality", "ready": False, "phase": "Standby",
                    "fallback": "cloud/mid"},
                   {"alias": "local/fast", "ready": True, "phase": "Ready"}],
         "budget": {"remaining": 10.0}}


def request(**extra: Any) -> dict[str, Any]:
    """A chat request as the proxy hands it to the hook: metadata with the copied
    key fields, proxy_server_request with the (credential-redacted) headers."""
    data: dict[str, Any] = {
        "model": "local/quality", "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"user_api_key_metadata": {}, "user_api_key_team_metadata": None,
                     "headers": {}},
        "proxy_server_request": {"url": "http://litellm/v1/chat/completions",
                                 "method": "POST", "headers": {}, "body": None},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def key(**fields: Any) -> SimpleNamespace:
    """UserAPIKeyAuth's fields the router reads."""
    base = {"metadata": {}, "team_metadata": None, "key_alias": None, "key_name": "sk-...abcd",
            "team_alias": None, "team_id": None, "token": "hashed"}
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize("data,caller,channel", [
    (request(metadata={"tags": ["private"]}), key(), "metadata"),
    (request(metadata={"privacy": "sensitive"}), key(), "metadata"),
    (request(litellm_metadata={"tags": ["Sensitive"]}), key(), "litellm_metadata"),
    (request(tags=["privacy"]), key(), "tags"),
    (request(proxy_server_request={"headers": {"x-litellm-tags": "team-a, private"}}), key(),
     "x-litellm-tags"),
    (request(proxy_server_request={"headers": {"X-LiteLLM-Tags": ["private"]}}), key(),
     "x-litellm-tags"),
    (request(), key(metadata={"tags": ["private"]}), "key metadata"),
    (request(), key(metadata={"privacy": True}), "key metadata"),
    (request(), key(team_metadata={"tags": ["sensitive"]}), "team metadata"),
    (request(metadata={"user_api_key_team_metadata": {"tags": ["private"]}}), key(),
     "metadata.user_api_key_team_metadata"),
    (request(), key(key_alias="hr-app"), "localOnlyKeys"),
    (request(), key(team_alias="legal"), "localOnlyKeys"),
])
def test_every_channel_marks_a_request_private(data: dict[str, Any], caller: Any,
                                               channel: str) -> None:
    rules_ = rules(localOnlyKeys=["hr-app", "legal"])
    assert privacy_channel(data, rules_, caller_of(caller)) == channel
    decision = decide(data, rules_, STATE, caller=caller_of(caller))
    assert decision.private and decision.route == "hold" and decision.model == "local/quality"


def test_unmarked_requests_and_other_tags_are_not_private() -> None:
    data = request(tags=["team-a"], metadata={"tags": ["batch"]},
                   proxy_server_request={"headers": {"x-litellm-tags": "team-a"}})
    caller = caller_of(key(key_alias="web", metadata={"tags": ["team-a"]}))
    assert privacy_channel(data, rules(localOnlyKeys=["hr-app"]), caller) is None
    assert decide(data, rules(), STATE, caller=caller).route == "bridged"


def test_a_local_only_alias_makes_every_request_for_it_private() -> None:
    rules_ = rules(localOnlyAliases=["local/quality"])
    decision = decide(request(), rules_, STATE)
    assert decision.private and decision.route == "hold"
    auto = request(model="hybrid/auto", metadata={"complexity": "medium"})
    assert decide(auto, rules_, STATE).private
    assert not decide(request(model="local/fast"), rules_, STATE).private


def test_a_private_request_for_a_cloud_alias_is_refused() -> None:
    data = request(model="cloud/mid", tags=["private"])
    decision = decide(data, rules(), STATE)
    assert (decision.route, decision.status) == ("refused", 403)


def test_the_hook_reads_the_key_litellm_hands_it_and_disables_fallbacks() -> None:
    router = HybridRouter()
    router.rules = rules()

    class Operator(hybrid_router.OperatorClient):
        async def current(self, fresh: bool = False) -> dict[str, Any]:
            return {**STATE, "slots": [{**s, "ready": True} for s in STATE["slots"]]}

        def demand(self, alias: str) -> None:
            pass

    router.operator = Operator()
    data = asyncio.run(router.async_pre_call_hook(
        key(team_metadata={"tags": ["private"]}), None, request(), "acompletion"))
    assert data["disable_fallbacks"] is True
    assert data["metadata"]["hybrid_route"]["route"] == "local"
    plain = asyncio.run(router.async_pre_call_hook(key(), None, request(), "acompletion"))
    assert "disable_fallbacks" not in plain


def test_caller_of_reads_a_dict_too() -> None:
    assert caller_of({"key_alias": "a", "metadata": {"x": 1}})["key_alias"] == "a"
    assert caller_of(None)["metadata"] is None
