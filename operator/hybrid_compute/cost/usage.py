"""Measured token usage and cloud spend, read from Prometheus' HTTP API: LiteLLM's
counters (spend and tokens per requested alias) and llama-server's (local prompt
and generated tokens)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from hybrid_compute.cost.estimate import AliasUsage, MeasuredUsage

# LiteLLM's Prometheus counters (prometheus_client adds the _total suffix).
LITELLM_SPEND = "litellm_spend_metric_total"
LITELLM_INPUT_TOKENS = "litellm_input_tokens_metric_total"
LITELLM_OUTPUT_TOKENS = "litellm_output_tokens_metric_total"
# The label holding the alias a client asked for (LiteLLM's model group).
LITELLM_ALIAS_LABEL = "requested_model"
# llama-server's counters, exported with --metrics.
LLAMA_PROMPT_TOKENS = "llamacpp:prompt_tokens_total"
LLAMA_GENERATED_TOKENS = "llamacpp:tokens_predicted_total"

_WINDOW_PATTERN = re.compile(r"^([0-9]+)([smhdwy])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class MetricsError(RuntimeError):
    """Prometheus could not be asked, or did not answer with a vector."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


Query = Callable[[str], list[Sample]]


def window_days(window: str) -> float:
    """A Prometheus range such as 30d or 12h, in days."""
    match = _WINDOW_PATTERN.match(window)
    if not match:
        raise ValueError(f"window {window!r} is not a Prometheus duration such as 30d or 12h")
    return int(match[1]) * _SECONDS[match[2]] / 86400


def prometheus_query(base_url: str, timeout: float = 10.0) -> Query:
    """A function that runs an instant query against ``base_url``'s /api/v1/query."""
    endpoint = base_url.rstrip("/") + "/api/v1/query"

    def query(promql: str) -> list[Sample]:
        request = urllib.request.Request(
            endpoint, data=urllib.parse.urlencode({"query": promql}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = _error_body(error)
            if body is None:
                raise MetricsError(f"{endpoint}: HTTP {error.code} for {promql}") from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise MetricsError(f"{endpoint}: {error}") from error
        return _vector(body, promql)

    return query


def _error_body(error: urllib.error.HTTPError) -> dict[str, object] | None:
    """Prometheus explains a bad query in a JSON body with a 4xx status."""
    try:
        body = json.load(error)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _vector(body: object, promql: str) -> list[Sample]:
    if not isinstance(body, dict) or body.get("status") != "success":
        detail = body.get("error") if isinstance(body, dict) else body
        raise MetricsError(f"query {promql} failed: {detail}")
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise MetricsError(f"query {promql} gave {data.get('resultType')}, not a vector")
    samples = []
    for entry in data.get("result") or []:
        value = float(entry["value"][1])
        if value == value:  # NaN from an empty rate
            samples.append(Sample(dict(entry.get("metric") or {}), value))
    return samples


def measure(query: Query, window: str, local_prefix: str = "local/",
            alias_label: str = LITELLM_ALIAS_LABEL, source: str = "") -> MeasuredUsage:
    """Usage over ``window``: spend and tokens per cloud alias from LiteLLM, local
    tokens from llama-server. Aliases under ``local_prefix`` are the local slots,
    counted from llama-server's own counters instead of LiteLLM's."""
    days = window_days(window)

    def by_alias(metric: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for sample in query(f"sum by ({alias_label}) (increase({metric}[{window}]))"):
            alias = sample.labels.get(alias_label, "")
            if alias and not alias.startswith(local_prefix):
                found[alias] = found.get(alias, 0.0) + sample.value
        return found

    def total(metric: str) -> float:
        return sum(sample.value for sample in query(f"sum(increase({metric}[{window}]))"))

    spend = by_alias(LITELLM_SPEND)
    inputs = by_alias(LITELLM_INPUT_TOKENS)
    outputs = by_alias(LITELLM_OUTPUT_TOKENS)
    cloud = {alias: AliasUsage(spend=spend.get(alias, 0.0),
                               input_tokens=inputs.get(alias, 0.0),
                               output_tokens=outputs.get(alias, 0.0))
             for alias in sorted({*spend, *inputs, *outputs})}
    return MeasuredUsage(window_days=days,
                         local_input_tokens=total(LLAMA_PROMPT_TOKENS),
                         local_output_tokens=total(LLAMA_GENERATED_TOKENS),
                         cloud=cloud, source=source)
