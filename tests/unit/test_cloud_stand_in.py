"""The cloud stand-in as the OpenAI Python SDK sees it: a plain answer, and a
stream of chunks with the usage last when the request asks for it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import openai
import pytest

from hybrid_compute.dev.cloud_stand_in import (
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    STAND_IN_NOTE,
    CloudStandIn,
)


@pytest.fixture
def stand_in() -> Iterator[CloudStandIn]:
    with CloudStandIn() as running:
        yield running


def _client(stand_in: CloudStandIn) -> openai.OpenAI:
    return openai.OpenAI(base_url=stand_in.url, api_key="stand-in", max_retries=0, timeout=10)


def test_a_plain_chat_is_one_completion_that_names_the_stand_in(
        stand_in: CloudStandIn) -> None:
    answer = _client(stand_in).chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    assert STAND_IN_NOTE in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.completion_tokens == COMPLETION_TOKENS
    assert stand_in.models_called() == ["gemini-2.5-flash"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_streamed_chat_arrives_word_by_word_with_the_usage_last_when_asked(
        stand_in: CloudStandIn, include_usage: bool) -> None:
    chunks = list(_client(stand_in).chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": include_usage}))
    contents = [c.choices[0].delta.content for c in chunks
                if c.choices and c.choices[0].delta.content]
    text = "".join(contents)
    assert text == f"cloud answer from gemini-2.5-flash ({STAND_IN_NOTE})"
    assert len(contents) == len(text.split(" "))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len({c.id for c in chunks}) == 1
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert chunks[-1].choices == []
        assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [
            (PROMPT_TOKENS, COMPLETION_TOKENS)]
    else:
        assert usage == []
    assert stand_in.calls[-1].body["stream"] is True


def test_fifty_connections_at_once_are_all_let_in_before_any_is_accepted() -> None:
    """A proxy under load opens its connections to the cloud together: none of them
    may be dropped and retried a second later, as a five-deep listen queue would."""
    stand_in = CloudStandIn()  # listening, but not yet accepting
    try:
        with contextlib.ExitStack() as opened:
            for _ in range(50):
                connection = opened.enter_context(socket.socket())
                connection.settimeout(0.5)
                connection.connect(("127.0.0.1", stand_in.port))
    finally:
        stand_in.server.server_close()
