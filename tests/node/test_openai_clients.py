"""Agents' own clients against the local cluster as ``make dev`` runs it: the
official OpenAI Python SDK, and the OpenAI JavaScript SDK in one smoke test, talk
to the real LiteLLM proxy, whose router sends them to real llama-servers on the
process node or to the cloud stand-in.

The samples' models have random weights, so the tests check the shape of what
comes back (typed objects the SDKs parse, chunks, usage, the router's headers),
never its text. The module starts a cluster of its own (``test-clients``, after
the suite's cluster name), never the suite's, and stops it at the end; tests run
in file order on that one cluster, the swap last.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionToolParam

from hybrid_compute.dev.cloud_stand_in import COMPLETION_TOKENS, PROMPT_TOKENS, STAND_IN_NOTE
from hybrid_compute.router.hybrid_router import (
    MODEL_HEADER,
    PATIENCE_HEADER,
    REASON_HEADER,
    ROUTE_HEADER,
)
from tests.cluster.support import wait
from tests.conftest import REPOSITORY_ROOT, TEST_CLUSTER_NAME
from tests.node.local_stack import LocalStack, local_stack

pytestmark = [pytest.mark.cluster, pytest.mark.serving]

CLUSTER_NAME = f"{TEST_CLUSTER_NAME}-clients"
JS_CLIENT = REPOSITORY_ROOT / "tests" / "js"
STREAMED_TOKENS = 16
WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with local_stack(CLUSTER_NAME) as running:
        started = time.monotonic()
        running.first_local_answer()
        print(f"LiteLLM served hybrid/auto locally {time.monotonic() - started:.1f}s "
              f"after the cluster was up ({running.up_seconds:.1f}s)")
        yield running


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> openai.OpenAI:
    """What an agent builds from ``hybrid-compute dev endpoint``; no retries, so a
    failed request fails the test instead of being sent again."""
    return openai.OpenAI(base_url=stack.endpoint.base_url, api_key=stack.endpoint.api_key,
                         max_retries=0, timeout=120)


def _route(headers: Any) -> tuple[str | None, str | None]:
    return headers.get(ROUTE_HEADER), headers.get(MODEL_HEADER)


def _contents(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks
            if c.choices and c.choices[0].delta.content]


def _check_stream_frame(chunks: list[ChatCompletionChunk]) -> None:
    """One completion's chunks: one id, one finish reason, the usage on the last
    chunk alone (``stream_options.include_usage``)."""
    assert chunks, "no chunk arrived"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1, [c.id for c in chunks]
    finishes = [c.choices[0].finish_reason for c in chunks
                if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"]), finishes
    assert [c.usage is not None for c in chunks].count(True) == 1, chunks[-3:]
    assert chunks[-1].usage is not None, f"the usage is not at the end: {chunks[-1]}"


def test_a_streamed_hybrid_auto_chat_arrives_in_chunks_with_usage_and_route(
        client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="hybrid/auto", messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=STREAMED_TOKENS, stream=True,
            stream_options={"include_usage": True}) as response:
        headers = response.headers
        chunks = list(response.parse())
    assert response.status_code == 200
    assert headers["content-type"].startswith("text/event-stream"), dict(headers)
    assert _route(headers) == ("local", "local/fast"), dict(headers)
    _check_stream_frame(chunks)
    contents = _contents(chunks)
    assert len(contents) > 1, f"the answer came in {len(contents)} content chunk(s)"
    assert STAND_IN_NOTE not in "".join(contents)
    usage = chunks[-1].usage
    assert usage is not None
    assert 1 <= usage.completion_tokens <= STREAMED_TOKENS, usage
    assert usage.prompt_tokens >= 1 and usage.total_tokens == (
        usage.prompt_tokens + usage.completion_tokens), usage
    print(f"streamed: {len(chunks)} chunks, {len(contents)} with content, {usage}")


def test_a_chat_answer_is_a_typed_chat_completion_with_the_route(
        client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="hybrid/auto", messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8)
    completion = raw.parse()
    assert raw.status_code == 200
    assert _route(raw.headers) == ("local", "local/fast"), dict(raw.headers)
    assert raw.headers[REASON_HEADER].startswith("simple"), raw.headers[REASON_HEADER]
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert STAND_IN_NOTE not in (choice.message.content or "")
    assert completion.usage is not None and 1 <= completion.usage.completion_tokens <= 8


def test_an_agents_tool_turns_are_routed_and_answered_as_chat_completions(
        client: openai.OpenAI) -> None:
    """A request offering a tool, then the turn that hands the tool's result back.
    The samples' models carry no chat template that knows tools, so llama-server
    answers in text (and its tool-call grammar cannot be forced on their
    byte-only vocabulary): what is asserted is that both turns are accepted,
    routed locally and answered as well-formed completions, and that any tool
    call that does come names the offered tool with JSON arguments."""
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.chat.completions.with_raw_response.create(
        model="hybrid/auto", messages=[question], tools=[WEATHER_TOOL], max_tokens=16)
    offered = first.parse()
    assert first.status_code == 200
    assert _route(first.headers) == ("local", "local/fast"), dict(first.headers)
    assert isinstance(offered, ChatCompletion)
    choice = offered.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    for call in choice.message.tool_calls or []:
        assert call.type == "function" and call.function.name == "get_weather", call
        assert isinstance(json.loads(call.function.arguments), dict), call

    second = client.chat.completions.with_raw_response.create(
        model="hybrid/auto", tools=[WEATHER_TOOL], max_tokens=8, messages=[
            question,
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_weather", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_weather", "content": "18 °C, clear"},
        ])
    answered = second.parse()
    assert second.status_code == 200
    assert _route(second.headers) == ("local", "local/fast"), dict(second.headers)
    assert isinstance(answered, ChatCompletion)
    assert answered.choices[0].message.role == "assistant"
    assert answered.usage is not None and answered.usage.completion_tokens >= 1
    # The tool call and its result reached the model: a longer prompt than the question's.
    assert offered.usage is not None
    assert answered.usage.prompt_tokens > offered.usage.prompt_tokens, (
        offered.usage, answered.usage)


def test_embeddings_through_hybrid_auto_and_the_local_embedder(
        stack: LocalStack, client: openai.OpenAI) -> None:
    """``hybrid/auto`` sends embeddings to ``local/embed``. The SDK asks for base64
    unless told otherwise; the same text asked for as floats from the alias itself
    gives the same vector."""
    # The embedder loads beside fast; it has no fallback, so until it is Ready
    # LiteLLM answers 503.
    wait(lambda: stack.phase("embed") == "Ready", 120, "embed Ready")
    texts = ["a local embedder on the CPU", "two different words"]
    raw = client.embeddings.with_raw_response.create(model="hybrid/auto", input=texts)
    batch = raw.parse()
    assert raw.status_code == 200
    assert _route(raw.headers) == ("local", "local/embed"), dict(raw.headers)
    assert raw.headers[REASON_HEADER] == "embedding request"
    assert isinstance(batch, CreateEmbeddingResponse)
    assert [item.index for item in batch.data] == [0, 1]
    vectors = [item.embedding for item in batch.data]
    assert len(vectors[0]) == len(vectors[1]) > 0
    assert all(math.isfinite(value) for vector in vectors for value in vector)
    assert vectors[0] != vectors[1]
    assert batch.usage.prompt_tokens >= 1

    direct = client.embeddings.with_raw_response.create(
        model="local/embed", input=texts[0], encoding_format="float")
    assert _route(direct.headers) == ("local", "local/embed"), dict(direct.headers)
    single = direct.parse().data
    assert len(single) == 1
    assert single[0].embedding == pytest.approx(vectors[0], rel=1e-5, abs=1e-6)


def test_the_javascript_sdk_streams_a_hybrid_auto_chat(stack: LocalStack) -> None:
    """``tests/js/stream_chat.mjs`` (the OpenAI JavaScript SDK, installed by
    ``make test`` with ``npm ci``) asserts the chunks, the usage and the route
    itself; here its report is read back too."""
    node = shutil.which("node")
    assert node is not None, "Node.js 20 or newer is needed for the JavaScript client test"
    assert (JS_CLIENT / "node_modules" / "openai").is_dir(), (
        f"the JavaScript SDK is not installed: run `npm ci` in {JS_CLIENT} (`make test` does)")
    env = {**os.environ, "OPENAI_BASE_URL": stack.endpoint.base_url,
           "OPENAI_API_KEY": stack.endpoint.api_key}
    result = subprocess.run([node, "stream_chat.mjs"], cwd=JS_CLIENT, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"JavaScript SDK: {seen}")
    assert (seen["status"], seen["route"], seen["servedBy"]) == (200, "local", "local/fast")
    assert seen["contentChunks"] > 1
    assert seen["usage"]["completion_tokens"] >= 1


def test_a_stream_for_a_standby_slot_is_bridged_to_the_cloud_while_it_swaps_in(
        stack: LocalStack, client: openai.OpenAI) -> None:
    """quality is in Standby while fast holds the GPU; a streamed request for it
    with no patience is bridged to its fallback (the cloud stand-in) and still
    streams, and the swap it asked for brings quality in."""
    assert stack.phase("quality") == "Standby"
    calls_before = len(stack.cloud_calls())
    with client.chat.completions.with_streaming_response.create(
            model="local/quality", messages=[{"role": "user", "content": "Explain the plan."}],
            max_tokens=STREAMED_TOKENS, stream=True, stream_options={"include_usage": True},
            extra_headers={PATIENCE_HEADER: "0"}) as response:
        headers = response.headers
        chunks = list(response.parse())
    assert response.status_code == 200
    assert _route(headers) == ("bridged", "cloud/mid"), dict(headers)
    assert "local/quality is Standby, bridged to cloud/mid" in headers[REASON_HEADER], (
        headers[REASON_HEADER])
    _check_stream_frame(chunks)
    contents = _contents(chunks)
    assert len(contents) > 1, f"the bridged answer came in {len(contents)} content chunk(s)"
    assert STAND_IN_NOTE in "".join(contents)
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    calls = stack.cloud_calls()[calls_before:]
    assert [(c["model"], c["body"].get("stream")) for c in calls] == [
        ("gemini-2.5-flash", True)], calls

    requested = time.monotonic()
    wait(lambda: stack.phase("quality") == "Ready", 120, "quality swapped in")
    print(f"bridged stream: {len(contents)} content chunks; quality Ready "
          f"{time.monotonic() - requested:.1f}s after it")
