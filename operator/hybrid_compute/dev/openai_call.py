"""One OpenAI-style HTTP call to the LiteLLM endpoint, with the router's headers:
what the tour and the serving tests send, and what they read back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    """Lower-cased names."""
    body: dict[str, Any]
    seconds: float = 0.0

    @property
    def route(self) -> str | None:
        return self.headers.get("x-hybrid-route")

    @property
    def served_by(self) -> str | None:
        return self.headers.get("x-hybrid-model")

    @property
    def text(self) -> str:
        choices = self.body.get("choices") or [{}]
        return str((choices[0].get("message") or {}).get("content", ""))


def post_json(url: str, body: dict[str, Any], api_key: str, timeout: float,
              headers: dict[str, str] | None = None) -> Reply:
    """POSTs ``body``; an HTTP error is a Reply too, so callers read its status."""
    request = urllib.request.Request(
        url, method="POST", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                 **(headers or {})})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, answer_headers, data = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, answer_headers, data = error.code, error.headers, error.read()
    try:
        parsed = json.loads(data or b"{}")
    except ValueError:
        parsed = {"error": data.decode(errors="replace")}
    return Reply(status, {k.lower(): v for k, v in answer_headers.items()},
                 parsed if isinstance(parsed, dict) else {}, time.monotonic() - started)
