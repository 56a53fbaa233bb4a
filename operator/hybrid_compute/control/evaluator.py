"""The I/O half of the evaluation gate: sends ``spec.evaluation``'s prompts to a
slot's OpenAI-compatible endpoint and judges the answers with the pure checks of
:mod:`hybrid_compute.plan.evaluation`. The runtime calls :func:`run` in the
background when a plan asks for an evaluation; ``hybrid-compute eval`` calls it by
hand."""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from hybrid_compute.api.modelslot import EvaluationPrompt, ModelEvaluation
from hybrid_compute.plan.evaluation import EvaluationResult, Reply, latency_bound, verdict

EVALUATION_HEADER = "X-Hybrid-Compute-Evaluation"
"""Sent with every evaluation request (its value is the model's fingerprint), so a
server's request log tells evaluation traffic from routed traffic."""
LATENCY_GRACE_SECONDS = 2.0
"""How long past its latency bound an answer is still awaited, to report by how much
it missed."""


def request_body(prompt: EvaluationPrompt, served_name: str) -> dict[str, Any]:
    messages = ([{"role": "user", "content": prompt.prompt}] if prompt.messages is None
                else [m.model_dump() for m in prompt.messages])
    body: dict[str, Any] = {"model": served_name, "messages": messages,
                            "max_tokens": prompt.max_tokens, "temperature": 0,
                            "stream": False}
    if prompt.expect_json:
        body["response_format"] = {"type": "json_object"}
    return body


def ask(endpoint: str, body: Mapping[str, Any], timeout: float, marker: str) -> Reply:
    """POSTs one chat completion to ``endpoint`` (an OpenAI base URL ending in /v1)."""
    request = urllib.request.Request(
        f"{endpoint.rstrip('/')}/chat/completions", method="POST",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", EVALUATION_HEADER: marker})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            seconds = time.monotonic() - started
            status = response.status
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        return Reply(error.code, time.monotonic() - started, None, _error_message(text))
    except TimeoutError:
        return Reply(None, time.monotonic() - started, None, "timed out", timed_out=True)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        seconds = time.monotonic() - started
        if isinstance(reason, TimeoutError):
            return Reply(None, seconds, None, "timed out", timed_out=True)
        return Reply(None, seconds, None, str(reason))
    try:
        parsed = json.loads(raw)
    except ValueError:
        return Reply(status, seconds, None, "the answer is not JSON")
    return Reply(status, seconds, parsed if isinstance(parsed, dict) else None)


def _error_message(text: str) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))[:200]
    return str(error or text)[:200]


def run(evaluation: ModelEvaluation, endpoint: str, served_name: str, model: str,
        now: Callable[[], datetime.datetime]) -> EvaluationResult:
    """Sends every prompt, one after the other, and judges the answers."""
    started = time.monotonic()
    replies = []
    for prompt in evaluation.prompts:
        bound = latency_bound(prompt, evaluation)
        replies.append(ask(endpoint, request_body(prompt, served_name),
                           bound + LATENCY_GRACE_SECONDS, model))
    return verdict(evaluation, replies, model, served_name, now(),
                   round(time.monotonic() - started, 3))
