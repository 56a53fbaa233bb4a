"""A local stand-in for the cloud providers: an OpenAI-compatible server that
answers every chat and embedding call and records it, so tests can prove what
reached the cloud (and, for privacy, that nothing did)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from tests.http_stub import StubHandler, StubServer

PROMPT_TOKENS = 1000
COMPLETION_TOKENS = 500


@dataclass(frozen=True)
class CloudCall:
    path: str
    model: str
    authorization: str
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return json.dumps(self.body)


class CloudStandIn:
    """Runs in a thread on a free loopback port; ``calls`` is the record."""

    def __init__(self) -> None:
        self.calls: list[CloudCall] = []
        self._lock = threading.Lock()
        stand_in = self

        class Handler(StubHandler):
            def do_POST(self) -> None:
                body = json.loads(self.read_body() or b"{}")
                call = CloudCall(self.path, str(body.get("model", "")),
                                 self.headers.get("Authorization", ""), body)
                with stand_in._lock:
                    stand_in.calls.append(call)
                self.send_json(200, stand_in.answer(call))

        self.server = StubServer(Handler)
        self.port = self.server.port
        self.url = f"{self.server.url}/v1"

    def answer(self, call: CloudCall) -> dict[str, Any]:
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                 "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
        if call.path.endswith("/embeddings"):
            return {"object": "list", "model": call.model, "usage": usage,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.0] * 8}]}
        return {
            "id": f"cloud-{len(self.calls)}", "object": "chat.completion",
            "created": int(time.time()), "model": call.model, "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant",
                                     "content": f"cloud answer from {call.model}"}}],
        }

    def models_called(self) -> list[str]:
        with self._lock:
            return [c.model for c in self.calls]

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    def __enter__(self) -> CloudStandIn:
        self.server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.stop()
