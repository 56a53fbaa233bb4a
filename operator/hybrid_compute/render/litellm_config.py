"""Renders LiteLLM's ``config.yaml`` and the router's rules from a RoutePolicy and
the ModelSlots, and the ConfigMap that carries them with the router module.

Everything secret stays a reference: API keys, the master key and the database
URL appear only as ``os.environ/NAME``, and :func:`secret_env` lists where the
LiteLLM Deployment reads each ``NAME`` from. Swaps change nothing here: a slot's
endpoint is its Service, which never moves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from decimal import Decimal
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

from hybrid_compute.api.common import SecretKeyRef, parse_duration
from hybrid_compute.api.routepolicy import ROUTER_MODULE, RoutePolicySpec
from hybrid_compute.render import children
from hybrid_compute.render.children import DEFAULT_ENDPOINT_TEMPLATE

if TYPE_CHECKING:
    from hybrid_compute.plan.view import SlotInfo

CONFIG_KEY = "config.yaml"
ROUTER_MODULE_KEY = f"{ROUTER_MODULE}.py"
RULES_KEY = f"{ROUTER_MODULE}.json"
CALLBACK = f"{ROUTER_MODULE}.proxy_handler_instance"
# LiteLLM needs a deployment for every model name it accepts; the router hook
# rewrites hybrid/auto before the call, so this address is never used.
UNROUTED_BASE = "http://127.0.0.1:9/v1"


def env_name(ref: SecretKeyRef) -> str:
    """The environment variable a Secret key is exposed as in the LiteLLM pod."""
    return "HC_" + re.sub(r"[^A-Z0-9]+", "_", f"{ref.name}_{ref.key}".upper()).strip("_")


def _secret_refs(policy: RoutePolicySpec) -> list[SecretKeyRef]:
    refs = [m.api_key_secret_ref for m in policy.cloud_models if m.api_key_secret_ref]
    refs += [r for r in (policy.litellm.master_key_secret_ref,
                         policy.litellm.database_url_secret_ref) if r]
    unique: dict[str, SecretKeyRef] = {}
    for ref in refs:
        unique.setdefault(env_name(ref), ref)
    return list(unique.values())


def secret_env(policy: RoutePolicySpec) -> list[dict[str, Any]]:
    """The LiteLLM container's env entries, each read from its Secret."""
    return [{"name": env_name(ref),
             "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            for ref in _secret_refs(policy)]


def _per_token(per_million: float) -> float:
    """USD per token without binary noise: 0.05 per million is 5e-08, not
    5.0000000000000004e-08."""
    return float(Decimal(str(per_million)) / Decimal(1_000_000))


def _local_models(slots: list[SlotInfo], endpoint_template: str) -> list[dict[str, Any]]:
    models = []
    for slot in sorted(slots, key=lambda s: s.key):
        spec = slot.spec
        if spec is None:
            continue
        info: dict[str, Any] = {"input_cost_per_token": 0, "output_cost_per_token": 0,
                                "max_input_tokens": spec.server.ctx_size}
        if spec.embedding:
            info["mode"] = "embedding"
        models.append({
            "model_name": spec.alias,
            "litellm_params": {
                "model": f"openai/{children.served_name(spec)}",
                "api_base": children.endpoint(slot.namespace, slot.name, spec.server.port,
                                              endpoint_template),
                "api_key": "none",
            },
            "model_info": info,
        })
    return models


def _cloud_models(policy: RoutePolicySpec) -> list[dict[str, Any]]:
    models = []
    for model in policy.cloud_models:
        params: dict[str, Any] = {"model": model.model}
        # LiteLLM's OpenAI client refuses to start a call without some key.
        params["api_key"] = (f"os.environ/{env_name(model.api_key_secret_ref)}"
                             if model.api_key_secret_ref else "none")
        if model.api_base:
            params["api_base"] = model.api_base
        info: dict[str, Any] = {}
        if model.input_cost_per_million is not None:
            info["input_cost_per_token"] = _per_token(model.input_cost_per_million)
        if model.output_cost_per_million is not None:
            info["output_cost_per_token"] = _per_token(model.output_cost_per_million)
        if model.max_context_tokens:
            info["max_input_tokens"] = model.max_context_tokens
        entry: dict[str, Any] = {"model_name": model.alias, "litellm_params": params}
        if info:
            entry["model_info"] = info
        models.append(entry)
    return models


def fallbacks(policy: RoutePolicySpec, slots: list[SlotInfo]) -> dict[str, list[str]]:
    """Fallback chains: the policy's, then each slot's own ``fallback``."""
    chains = {f.alias: list(f.to) for f in policy.fallbacks}
    for slot in slots:
        if slot.spec and slot.spec.fallback and slot.spec.alias not in chains:
            chains[slot.spec.alias] = [slot.spec.fallback]
    return dict(sorted(chains.items()))


def render_config(policy: RoutePolicySpec, slots: list[SlotInfo],
                  endpoint_template: str = DEFAULT_ENDPOINT_TEMPLATE) -> dict[str, Any]:
    """LiteLLM's config.yaml as a dict."""
    router = policy.router
    general: dict[str, Any] = {}
    if policy.litellm.master_key_secret_ref:
        general["master_key"] = f"os.environ/{env_name(policy.litellm.master_key_secret_ref)}"
    if policy.litellm.database_url_secret_ref:
        general["database_url"] = (
            f"os.environ/{env_name(policy.litellm.database_url_secret_ref)}")
    if policy.litellm.custom_auth:
        general["custom_auth"] = policy.litellm.custom_auth
    auto = {"model_name": policy.routing.auto_model,
            "litellm_params": {"model": "openai/hybrid-auto", "api_base": UNROUTED_BASE,
                               "api_key": "none"}}
    config: dict[str, Any] = {
        "model_list": [*_local_models(slots, endpoint_template), *_cloud_models(policy),
                       auto],
        "router_settings": {
            "routing_strategy": router.routing_strategy,
            "num_retries": router.num_retries,
            "timeout": parse_duration(router.timeout).total_seconds(),
            "fallbacks": [{alias: to} for alias, to in fallbacks(policy, slots).items()],
        },
        # prometheus: LiteLLM's own request, token, cost and latency metrics on
        # its /metrics, which the dashboard reads.
        "litellm_settings": {"callbacks": [CALLBACK, "prometheus"], "drop_params": True},
    }
    if general:
        config["general_settings"] = general
    return config


def render_rules(policy: RoutePolicySpec, slots: list[SlotInfo],
                 policy_key: str | None = None) -> dict[str, Any]:
    """What the router module needs besides the live state: the matrix, the
    privacy tags, the patience, the budget action and which aliases are local.
    Durations are numbers of seconds, so the router parses none. ``policy_key``
    (namespace/name) tells the router which policy's budget in the operator's
    state is its own."""
    routing = policy.routing
    return {
        "policy": policy_key,
        "autoModel": routing.auto_model,
        "routes": routing.routes.model_dump(by_alias=True),
        "tasks": dict(sorted(routing.tasks.items())),
        "longContextTokens": routing.long_context_tokens,
        "gpuBusyThreshold": routing.gpu_busy_threshold,
        "privacy": {
            "tags": routing.privacy.tags,
            "action": routing.privacy.action,
            "holdTimeoutSeconds": parse_duration(routing.privacy.hold_timeout).total_seconds(),
            "localOnlyAliases": sorted(routing.privacy.local_only_aliases),
            "localOnlyKeys": sorted(routing.privacy.local_only_keys),
        },
        "patienceSeconds": parse_duration(routing.patience).total_seconds(),
        "maxPatienceSeconds": parse_duration(routing.max_patience).total_seconds(),
        "budget": policy.budget.model_dump(by_alias=True) if policy.budget else None,
        "fallbacks": fallbacks(policy, slots),
        "localAliases": sorted({s.spec.alias for s in slots if s.spec}),
        "cloudAliases": sorted({m.alias for m in policy.cloud_models}),
    }


@functools.cache
def router_module() -> str:
    return resources.files("hybrid_compute.router").joinpath("hybrid_router.py").read_text()


def config_files(policy: RoutePolicySpec, slots: list[SlotInfo],
                 endpoint_template: str = DEFAULT_ENDPOINT_TEMPLATE,
                 policy_key: str | None = None) -> dict[str, str]:
    """The ConfigMap's data: config.yaml, the router module and its rules."""
    config = render_config(policy, slots, endpoint_template)
    rules = render_rules(policy, slots, policy_key)
    return {
        CONFIG_KEY: yaml.safe_dump(config, sort_keys=False),
        ROUTER_MODULE_KEY: router_module(),
        RULES_KEY: json.dumps(rules, indent=2, sort_keys=True) + "\n",
    }


def config_hash(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + files[key].encode() + b"\0")
    return digest.hexdigest()
