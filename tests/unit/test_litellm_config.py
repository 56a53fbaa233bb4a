"""LiteLLM's config rendered from the samples: local slots at their Services, cloud
models with key references only, the meta-model, fallbacks, the router's rules."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from hybrid_compute.api.routepolicy import RoutePolicySpec
from hybrid_compute.dev.bootstrap import sample_manifests
from hybrid_compute.plan.objects import slot_from_object
from hybrid_compute.render.litellm_config import (
    CONFIG_KEY,
    ROUTER_MODULE_KEY,
    RULES_KEY,
    config_files,
    config_hash,
    render_config,
    render_rules,
    secret_env,
)
from tests.conftest import REPOSITORY_ROOT

SAMPLES = sample_manifests(REPOSITORY_ROOT)
POLICY = RoutePolicySpec.model_validate(
    next(o for o in SAMPLES if o["kind"] == "RoutePolicy")["spec"])
SLOTS = [slot_from_object({**o, "metadata": {**o["metadata"], "namespace": "lab"}})
         for o in SAMPLES if o["kind"] == "ModelSlot"]


def models_by_alias() -> dict[str, list[dict]]:  # type: ignore[type-arg]
    found: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for entry in render_config(POLICY, SLOTS)["model_list"]:
        found.setdefault(entry["model_name"], []).append(entry)
    return found


def test_local_slots_point_at_their_services_at_zero_cost() -> None:
    fast = models_by_alias()["local/fast"][0]
    assert fast["litellm_params"] == {"model": "openai/llama-3.1-8b",
                                      "api_base": "http://fast.lab.svc:8080/v1",
                                      "api_key": "none"}
    assert fast["model_info"]["input_cost_per_token"] == 0
    assert models_by_alias()["local/embed"][0]["model_info"]["mode"] == "embedding"


def test_cloud_models_carry_key_references_and_prices() -> None:
    frontier = models_by_alias()["cloud/frontier"]
    assert [m["litellm_params"]["model"] for m in frontier] == [
        "anthropic/claude-sonnet-4-5-20250514", "anthropic/claude-opus-4-6-20250610"]
    assert frontier[0]["litellm_params"]["api_key"] == \
        "os.environ/HC_CLOUD_API_KEYS_ANTHROPIC_API_KEY"
    assert frontier[0]["model_info"]["output_cost_per_token"] == 15e-6
    assert models_by_alias()["cloud/fast"][0]["model_info"]["input_cost_per_token"] == 5e-8


def test_meta_model_fallbacks_router_and_callbacks() -> None:
    config = render_config(POLICY, SLOTS)
    assert "hybrid/auto" in models_by_alias()
    router = config["router_settings"]
    assert router["fallbacks"] == [{"local/fast": ["cloud/fast"]},
                                   {"local/quality": ["cloud/mid"]},
                                   {"local/quality-alt": ["cloud/mid"]}]
    assert router["num_retries"] == 2 and router["timeout"] == 120
    assert config["litellm_settings"]["callbacks"] == ["hybrid_router.proxy_handler_instance",
                                                       "prometheus"]
    assert config["general_settings"]["master_key"].startswith("os.environ/")


def test_secrets_are_references_read_from_their_secrets() -> None:
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in secret_env(POLICY)}
    assert env["HC_CLOUD_API_KEYS_ANTHROPIC_API_KEY"] == {"name": "cloud-api-keys",
                                                          "key": "ANTHROPIC_API_KEY"}
    assert env["HC_LITELLM_SECRETS_LITELLM_MASTER_KEY"]["name"] == "litellm-secrets"
    text = "".join(config_files(POLICY, SLOTS).values())
    assert "valueFrom" not in text and "sk-" not in text


def test_config_map_files_and_stable_hash() -> None:
    files = config_files(POLICY, SLOTS)
    assert set(files) == {CONFIG_KEY, ROUTER_MODULE_KEY, RULES_KEY}
    assert yaml.safe_load(files[CONFIG_KEY])["model_list"]
    assert "def decide(" in files[ROUTER_MODULE_KEY]
    assert config_hash(files) == config_hash(config_files(POLICY, SLOTS))


def test_a_swap_does_not_change_the_rendering() -> None:
    before = config_files(POLICY, SLOTS)
    swapped = [s.__class__(s.namespace, s.name, s.uid, s.generation, s.spec,
                           s.status.model_copy(update={"phase": "Ready"}))
               for s in SLOTS]
    assert config_hash(config_files(POLICY, swapped)) == config_hash(before)


def test_rules_carry_the_matrix_privacy_and_budget() -> None:
    rules = render_rules(POLICY, SLOTS)
    assert rules["routes"]["complex"] == "cloud/frontier"
    assert rules["tasks"]["code-completion"] == "local/quality"
    assert rules["privacy"]["tags"] == ["private", "privacy", "sensitive"]
    # Durations reach the router as numbers of seconds: it parses none of the policy's.
    assert (rules["privacy"]["action"], rules["privacy"]["holdTimeoutSeconds"]) == ("Hold", 60.0)
    assert rules["budget"]["whenExhausted"] == "RouteLocal"
    assert "local/fast" in rules["localAliases"]


def test_a_cloud_model_without_a_key_reference_still_gets_a_placeholder_key() -> None:
    """LiteLLM's OpenAI client refuses a call with no key at all (seen with 1.108.7)."""
    policy = RoutePolicySpec.model_validate({"cloudModels": [
        {"alias": "cloud/standin", "model": "openai/standin", "apiBase": "http://127.0.0.1:1/v1"}]})
    entry = next(m for m in render_config(policy, [])["model_list"]
                 if m["model_name"] == "cloud/standin")
    assert entry["litellm_params"]["api_key"] == "none"


def test_custom_auth_is_rendered_into_general_settings_and_changes_the_hash() -> None:
    """LiteLLM calls this function for every request instead of its key database."""
    assert "custom_auth" not in render_config(POLICY, SLOTS)["general_settings"]
    with_auth = POLICY.model_copy(update={"litellm": POLICY.litellm.model_copy(
        update={"custom_auth": "lab_auth.user_api_key_auth"})})
    general = render_config(with_auth, SLOTS)["general_settings"]
    assert general["custom_auth"] == "lab_auth.user_api_key_auth"
    assert general["master_key"].startswith("os.environ/"), "the master key stays a reference"
    before, after = (config_hash(config_files(policy, SLOTS)) for policy in (POLICY, with_auth))
    assert after != before, "a new auth function must roll LiteLLM, which reads its config " \
        "only at start"


def test_custom_auth_alone_makes_general_settings() -> None:
    policy = RoutePolicySpec.model_validate(
        {"litellm": {"customAuth": "auth.sso.user_api_key_auth"}})
    assert render_config(policy, [])["general_settings"] == {
        "custom_auth": "auth.sso.user_api_key_auth"}


@pytest.mark.parametrize(("custom_auth", "message"), [
    ("user_api_key_auth", "should match pattern"),
    ("lab-auth.check", "should match pattern"),
    ("s3://bucket/auth.check", "should match pattern"),
    ("lab_auth.", "should match pattern"),
    ("hybrid_router.user_api_key_auth", "cannot name the router hook's module"),
])
def test_custom_auth_must_be_a_module_function_other_than_the_router(
        custom_auth: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RoutePolicySpec.model_validate({"litellm": {"customAuth": custom_auth}})
