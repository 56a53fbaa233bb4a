"""A local stand-in for the cloud providers: an OpenAI-compatible server that
answers every chat and embedding call and records it, so tests can prove what
reached the cloud (and, for privacy, that nothing did). Every answer says it
comes from the stand-in. A chat call with ``stream`` set is answered as
server-sent events, one chunk a word, with a usage chunk when
``stream_options.include_usage`` asks for one, as OpenAI streams.

The local cluster runs it as a process (``python -m hybrid_compute.dev.cloud_stand_in
--port N``) and points the sample RoutePolicy's cloud models at it; ``GET /calls``
lists what it was asked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROMPT_TOKENS = 1000
COMPLETION_TOKENS = 500
STAND_IN_NOTE = "a local stand-in answered; no cloud provider was called"
LISTEN_BACKLOG = 1024
"""Connections the stand-in lets wait for their turn to be accepted. The standard
library's default is 5: a proxy that opens 50 connections at once would have most
of its handshakes dropped and retried a second later (then two, then four), a
wait no cloud provider imposes, which would swamp what a benchmark measures."""


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

    def __init__(self, port: int = 0) -> None:
        self.calls: list[CloudCall] = []
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/calls":
                    self.send_error(404)
                    return
                with stand_in._lock:
                    data = json.dumps([asdict(c) for c in stand_in.calls]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                call = CloudCall(self.path, str(body.get("model", "")),
                                 self.headers.get("Authorization", ""), body)
                with stand_in._lock:
                    stand_in.calls.append(call)
                answer = stand_in.answer(call)
                if body.get("stream") and not call.path.endswith("/embeddings"):
                    self._send_events(stream_chunks(answer, body))
                    return
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send_events(self, chunks: list[dict[str, Any]]) -> None:
                # HTTP/1.0: the body ends when the connection closes.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = _Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

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
                                     "content": f"cloud answer from {call.model} "
                                                f"({STAND_IN_NOTE})"}}],
        }

    def models_called(self) -> list[str]:
        with self._lock:
            return [c.model for c in self.calls]

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    def __enter__(self) -> CloudStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG


def stream_chunks(answer: dict[str, Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat answer as OpenAI's ``chat.completion.chunk`` events: the role, one
    chunk a word of the content, the finish reason, then the usage when the
    request's ``stream_options.include_usage`` asks for it."""
    choice = answer["choices"][0]
    words = choice["message"]["content"].split(" ")
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": word if i == 0 else f" {word}"} for i, word in enumerate(words)]
    frame = {"id": answer["id"], "object": "chat.completion.chunk",
             "created": answer["created"], "model": answer["model"]}
    chunks = [{**frame, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
              for delta in deltas]
    chunks.append({**frame, "choices": [{"index": 0, "delta": {},
                                         "finish_reason": choice["finish_reason"]}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**frame, "choices": [], "usage": answer["usage"]})
    return chunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid_compute.dev.cloud_stand_in")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    stand_in = CloudStandIn(args.port)
    with contextlib.suppress(KeyboardInterrupt):
        stand_in.server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
