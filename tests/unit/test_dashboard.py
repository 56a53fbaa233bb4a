"""The Grafana dashboard only queries metrics that exist: ours (collected from the
operator's and the agent's registries), LiteLLM's and llama-server's (by their
documented names). It answers the seed's monitoring list, and the chart ships it
as a ConfigMap for Grafana's sidecar."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid_compute.agent.metrics import agent_registry
from hybrid_compute.dev.manifests import helm_template
from hybrid_compute.server.metrics import OperatorMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "hybrid-compute" / "dashboards" / "hybrid-compute.json"

# LiteLLM 1.108.7's Prometheus callback (`callbacks: [prometheus]`). Source: the
# LiteLLM docs, https://docs.litellm.ai/docs/proxy/prometheus, and the metric names
# in litellm/types/integrations/prometheus.py of that release. Counters gain
# `_total` on exposition, histograms `_bucket`, `_sum` and `_count`.
LITELLM_COUNTERS = ("litellm_proxy_total_requests_metric", "litellm_proxy_failed_requests_metric",
                    "litellm_requests_metric", "litellm_spend_metric",
                    "litellm_total_tokens_metric", "litellm_input_tokens_metric",
                    "litellm_output_tokens_metric", "litellm_deployment_failure_responses",
                    "litellm_deployment_success_responses", "litellm_deployment_total_requests")
LITELLM_HISTOGRAMS = ("litellm_request_total_latency_metric", "litellm_llm_api_latency_metric",
                      "litellm_llm_api_time_to_first_token_metric",
                      "litellm_request_queue_time_seconds")
LITELLM_METRICS = {
    *(f"{name}_total" for name in LITELLM_COUNTERS),
    *(f"{name}{suffix}" for name in LITELLM_HISTOGRAMS
      for suffix in ("_bucket", "_sum", "_count")),
}
# llama-server with --metrics. Source: llama.cpp tools/server/README.md, "GET
# /metrics: Prometheus compatible metrics exporter" (the release vendored in
# llama-cpp-python 0.3.36, the one the serving tests build).
LLAMA_SERVER_METRICS = {
    "llamacpp:prompt_tokens_total", "llamacpp:prompt_seconds_total",
    "llamacpp:prompt_tokens_seconds", "llamacpp:tokens_predicted_total",
    "llamacpp:tokens_predicted_seconds_total", "llamacpp:predicted_tokens_seconds",
    "llamacpp:requests_processing", "llamacpp:requests_deferred", "llamacpp:n_tokens_max",
    "llamacpp:n_decode_total", "llamacpp:n_busy_slots_per_decode",
}

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def project_metrics() -> set[str]:
    """Every series name the operator and the agent expose, from their registries."""
    names: set[str] = set()
    for registry in (OperatorMetrics().registry, agent_registry(lambda: None)):
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


KNOWN_METRICS = project_metrics() | LITELLM_METRICS | LLAMA_SERVER_METRICS

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions,
    aggregations, keywords, labels in matchers or groupings, durations or
    Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if following.startswith("(") or match.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return [p for p in found if p.get("type") != "row"]


def queried(board: dict[str, Any]) -> dict[str, set[str]]:
    """Panel title -> metric names its queries use."""
    return {panel["title"]: {name for target in panel["targets"]
                             for name in metric_names(target["expr"])}
            for panel in panels(board)}


def test_every_panel_queries_only_metrics_that_exist() -> None:
    unknown = {title: sorted(names - KNOWN_METRICS)
               for title, names in queried(dashboard()).items() if names - KNOWN_METRICS}
    assert not unknown, f"panels query metrics nobody exports: {unknown}"


def test_every_panel_has_a_query_and_a_unique_id() -> None:
    board = dashboard()
    for panel in panels(board):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert all(metric_names(t["expr"]) for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (requested_model) (rate(litellm_proxy_total_requests_metric_total'
     '{model="a b"}[$__rate_interval]))', {"litellm_proxy_total_requests_metric_total"}),
    ("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m]))) / on(gpu) y",
     {"x_bucket", "y"}),
    ('llamacpp:requests_deferred{pod=~"$pod"} > bool 3', {"llamacpp:requests_deferred"}),
])
def test_metric_names_are_extracted_from_promql(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_a_misspelt_metric_would_be_caught() -> None:
    names = metric_names("rate(hybrid_compute_swap_total[5m])")
    assert names == {"hybrid_compute_swap_total"} and not names <= KNOWN_METRICS


# The seed's monitoring list, each item with metrics that answer it.
SEED_LIST = {
    "GPU VRAM usage": {"hybrid_compute_gpu_memory_used_bytes"},
    "GPU utilisation": {"hybrid_compute_gpu_utilization_ratio"},
    "llama.cpp throughput": {"llamacpp:tokens_predicted_total"},
    "queue depth": {"llamacpp:requests_deferred"},
    "latency p50/p95": {"litellm_request_total_latency_metric_bucket"},
    "LiteLLM requests by model": {"litellm_proxy_total_requests_metric_total"},
    "LiteLLM costs": {"litellm_spend_metric_total"},
    "LiteLLM errors": {"litellm_proxy_failed_requests_metric_total"},
    "swap frequency": {"hybrid_compute_swaps_total"},
    "swap duration": {"hybrid_compute_swap_duration_seconds_bucket"},
    "VRAM planned against capacity": {"hybrid_compute_gpu_vram_planned_bytes",
                                      "hybrid_compute_gpu_vram_capacity_bytes"},
    "requests bridged, held, refused": {"hybrid_compute_router_requests_total"},
    "budget left": {"hybrid_compute_cloud_budget_remaining_usd"},
}


def test_the_dashboard_answers_the_seeds_monitoring_list() -> None:
    used = set().union(*queried(dashboard()).values())
    missing = {item: sorted(names - used) for item, names in SEED_LIST.items()
               if not names <= used}
    assert not missing, f"no panel answers: {missing}"
    quantiles = {t["expr"].split(",")[0] for p in panels(dashboard()) for t in p["targets"]
                 if "litellm_request_total_latency_metric_bucket" in t["expr"]}
    assert quantiles == {"histogram_quantile(0.5", "histogram_quantile(0.95"}, quantiles
    spend_windows = {m.group(1) for p in panels(dashboard()) for t in p["targets"]
                     for m in [re.search(r"litellm_spend_metric_total\[(\w+)\]", t["expr"])]
                     if m}
    assert {"1d", "7d", "30d"} <= spend_windows, f"spend per day/week/month: {spend_windows}"


def test_the_chart_ships_the_dashboard_for_grafanas_sidecar_only_when_asked() -> None:
    off = [d for d in yaml.safe_load_all(helm_template(ROOT, [])) if d]
    assert not [d for d in off if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].endswith("-dashboard")]
    on = [d for d in yaml.safe_load_all(helm_template(
        ROOT, ["--set", "monitoring.grafanaDashboard.enabled=true"])) if d]
    (config_map,) = [d for d in on if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"].endswith("-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["hybrid-compute.json"]) == dashboard()
