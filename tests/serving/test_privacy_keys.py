"""Privacy set by who calls, through the real LiteLLM proxy: a virtual key whose
metadata carries a privacy tag or ``privacy: true``, a key whose team's metadata
does, and a key or team named in the policy's ``routing.privacy.localOnlyKeys``
(by key alias, team alias or team id) make every request they send private, with
nothing private in the request itself. The same requests with an ordinary key
take the normal routes (bridged to the cloud, ``hybrid/auto`` to the cloud), so
the difference is the key.

LiteLLM keeps virtual keys and teams in its database (Postgres through the
prisma client, whose query engine cannot be downloaded here), so the policy's
``spec.litellm.customAuth`` names ``key_database.user_api_key_auth`` instead: a
test module that answers each key with the ``UserAPIKeyAuth`` LiteLLM would have
read from its database, mounted from a ConfigMap on LiteLLM's PYTHONPATH as the
chart's ``litellm.extraVolumes``, ``extraVolumeMounts`` and ``extraEnv`` would
mount it, its keys read from a Secret. The router hook gets that object from
LiteLLM as it would a database key's.

Runs on the process node (``node_cluster``): LiteLLM, the slots' llama-servers and
the operator are real processes, the cloud is the recording stand-in.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hybrid_compute.dev.cloud_stand_in import STAND_IN_NOTE, CloudStandIn
from hybrid_compute.dev.local_serving import LiteLLMExtras
from hybrid_compute.dev.openai_call import Reply
from tests.cluster.support import phase
from tests.serving.conftest import NodeCluster
from tests.serving.litellm_stack import (
    MODEL_FILE,
    ROUTER_REFRESH,
    Stack,
    cloud_model,
    litellm_stack,
    model_slot,
    route_policy,
    secret,
)

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

HOLD_TIMEOUT_SECONDS = 3
KEY_DATABASE = Path(__file__).with_name("key_database.py")
KEY_DATABASE_MOUNT = "/etc/litellm-keys"
KEYS_SECRET = "stand-in-keys"

ORDINARY_CALLER: dict[str, Any] = {
    "key_alias": "coding-agent", "metadata": {"tags": ["batch"]},
    "team_id": "team-dev", "team_alias": "dev", "team_metadata": {"tags": ["engineering"]}}
"""Metadata, a team and team metadata too, none of them private."""
PRIVATE_CALLERS: dict[str, dict[str, Any]] = {
    "key-metadata-tag": {"key_alias": "notes-app", "metadata": {"tags": ["private"]}},
    "key-metadata-privacy": {"key_alias": "diary-app", "metadata": {"privacy": True}},
    "team-metadata-tag": {"key_alias": "lab-bot", "team_id": "team-lab", "team_alias": "lab",
                          "team_metadata": {"tags": ["Sensitive"]}},
    "local-only-key-alias": {"key_alias": "health-agent"},
    "local-only-team-alias": {"key_alias": "hr-bot", "team_id": "team-7f3a",
                              "team_alias": "hr"},
    "local-only-team-id": {"key_alias": "legal-bot", "team_id": "team-legal"},
}
LOCAL_ONLY_KEYS = ["health-agent", "hr", "team-legal"]
"""A key alias, a team alias and a team id."""


@pytest.fixture(scope="module")
def api_keys() -> dict[str, str]:
    """An API key per caller, ``ordinary`` and each of :data:`PRIVATE_CALLERS`."""
    return {name: f"sk-{name}-{uuid.uuid4().hex}" for name in ["ordinary", *PRIVATE_CALLERS]}


def _key_database(api_keys: dict[str, str]) -> tuple[list[dict[str, Any]], LiteLLMExtras]:
    """The stand-in's code as a ConfigMap, its keys as a Secret, and how LiteLLM's
    pod mounts and reads them."""
    callers = {"ordinary": ORDINARY_CALLER, **PRIVATE_CALLERS}
    table = {api_keys[name]: identity for name, identity in callers.items()}
    objects = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "key-database"},
         "data": {KEY_DATABASE.name: KEY_DATABASE.read_text()}},
        secret(KEYS_SECRET, {"keys.json": json.dumps(table)}),
    ]
    extras = LiteLLMExtras(
        env=({"name": "PYTHONPATH", "value": KEY_DATABASE_MOUNT},
             {"name": "STAND_IN_KEYS", "valueFrom": {"secretKeyRef": {
                 "name": KEYS_SECRET, "key": "keys.json"}}}),
        volumes=({"name": "key-database", "configMap": {"name": "key-database"}},),
        volume_mounts=({"name": "key-database", "mountPath": KEY_DATABASE_MOUNT,
                        "readOnly": True},))
    return objects, extras


@pytest.fixture(scope="module")
def stack(node_cluster: NodeCluster, cloud: CloudStandIn,
          api_keys: dict[str, str]) -> Iterator[Stack]:
    policy = route_policy(
        [cloud_model(cloud.url, "cloud/fast", "cloud-fast"),
         cloud_model(cloud.url, "cloud/mid", "cloud-mid"),
         cloud_model(cloud.url, "cloud/frontier", "cloud-frontier")],
        routing={"privacy": {"holdTimeout": f"{HOLD_TIMEOUT_SECONDS}s",
                             "localOnlyKeys": LOCAL_ONLY_KEYS}},
        router={"numRetries": 0, "timeout": "60s"})
    policy["spec"]["litellm"]["customAuth"] = "key_database.user_api_key_auth"
    key_objects, extras = _key_database(api_keys)
    with litellm_stack(node_cluster, cloud, [
            *key_objects,
            model_slot("fast", "local/fast", default=True, fallback="cloud/fast",
                       model={"path": MODEL_FILE, "servedName": "fast", "vram": "5Gi"}),
            # Larger than the GPU: never loads, so a request for it is bridged or held.
            model_slot("big", "local/big", activation="OnDemand", idleTimeout="1m",
                       fallback="cloud/mid",
                       model={"path": MODEL_FILE, "servedName": "big", "vram": "30Gi"}),
            policy], prefix="keys", litellm_extras=extras) as stack:
        time.sleep(ROUTER_REFRESH)  # the router's first state: fast Ready, big not
        yield stack


def _complex_auto(stack: Stack, api_key: str) -> Reply:
    return stack.chat("hybrid/auto", "Design a new architecture.", api_key=api_key,
                      complexity="complex")


def _answered_by_the_cloud(answer: Reply) -> bool:
    return answer.status == 200 and STAND_IN_NOTE in json.dumps(answer.body)


def _assert_held_then_refused(stack: Stack, api_key: str, **metadata: Any) -> None:
    """local/big, which never loads: held for the policy's hold timeout, refused
    with 503, and no cloud called."""
    stack.cloud.clear()
    started = time.monotonic()
    refused = stack.chat("local/big", "My notes.", api_key=api_key, **metadata)
    waited = time.monotonic() - started
    assert refused.status == 503, (refused.status, refused.body)
    assert "never leave the box" in json.dumps(refused.body), refused.body
    assert HOLD_TIMEOUT_SECONDS <= waited < HOLD_TIMEOUT_SECONDS + 10, waited
    assert stack.cloud.calls == [], "a private request reached the cloud"


def test_the_custom_auth_function_decides_every_key(stack: Stack) -> None:
    """A key it does not know is refused, LiteLLM's master key too: the keys of
    the tests below reach LiteLLM only through it."""
    stack.cloud.clear()  # the stand-in is the session's: other modules' calls are in it
    for key in (f"sk-unknown-{uuid.uuid4().hex}", stack.master_key):
        refused = stack.chat("local/fast", api_key=key)
        assert refused.status == 401, (refused.status, refused.body)
    assert stack.cloud.calls == []


def test_an_ordinary_key_takes_the_normal_routes(stack: Stack,
                                                 api_keys: dict[str, str]) -> None:
    assert phase(stack.k8s, stack.namespace, "big") != "Ready"
    stack.cloud.clear()
    bridged = stack.chat("local/big", "My notes.", api_key=api_keys["ordinary"])
    assert (bridged.route, bridged.served_by) == ("bridged", "cloud/mid"), bridged.headers
    assert _answered_by_the_cloud(bridged), (bridged.status, bridged.body)
    auto = _complex_auto(stack, api_keys["ordinary"])
    assert (auto.route, auto.served_by) == ("cloud", "cloud/frontier"), auto.headers
    assert _answered_by_the_cloud(auto), (auto.status, auto.body)
    assert stack.cloud.models_called() == ["cloud-mid", "cloud-frontier"]


def test_an_ordinary_keys_request_marked_private_in_its_body_is_held_then_refused(
        stack: Stack, api_keys: dict[str, str]) -> None:
    """The request's own ``metadata.privacy``, which the key does not override."""
    _assert_held_then_refused(stack, api_keys["ordinary"], privacy=True)


@pytest.mark.parametrize("caller", list(PRIVATE_CALLERS))
def test_a_private_callers_request_for_a_slot_that_cannot_load_is_held_then_refused(
        stack: Stack, api_keys: dict[str, str], caller: str) -> None:
    _assert_held_then_refused(stack, api_keys[caller])


@pytest.mark.parametrize("caller", list(PRIVATE_CALLERS))
def test_a_private_callers_complex_auto_request_is_kept_local(
        stack: Stack, api_keys: dict[str, str], caller: str) -> None:
    stack.cloud.clear()
    kept = _complex_auto(stack, api_keys[caller])
    assert kept.status == 200, kept.body
    assert (kept.route, kept.served_by) == ("local", "local/fast"), kept.headers
    assert "kept local for privacy" in kept.headers["x-hybrid-reason"], kept.headers
    assert stack.cloud.calls == [], f"{caller}'s request reached the cloud"
