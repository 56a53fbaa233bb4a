"""Has llama-server save and restore its prompt caches, as a plan asks
(:mod:`hybrid_compute.plan.prompt_cache`).

llama-server writes and reads the files itself, in its ``--slot-save-path``:
``POST /slots/{id}?action=save`` and ``?action=restore`` with ``{"filename": ...}``
answer how many tokens and bytes moved, ``?action=erase`` empties a sequence, and
``GET /v1/models`` describes the loaded model. It has no call that deletes a file:
a file evicted for the budget is overwritten with an emptied sequence, which
leaves a header of a few bytes. Every failure is reported in the outcome, never
raised: a cache that cannot be saved or restored only costs a prefill.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from hybrid_compute.api.modelslot import PromptCacheFile
from hybrid_compute.control.drain_probe import server_base
from hybrid_compute.plan.prompt_cache import (
    RestoreOutcome,
    RestoreRequest,
    SaveOutcome,
    SaveRequest,
    merged,
    model_fingerprint,
    refusal,
    within_budget,
)

CALL_TIMEOUT_SECONDS = 60.0
"""A save or restore moves the cache through the node's disk: a long context on a
large model is gigabytes."""
Clock = Callable[[], datetime.datetime]


class ServerError(RuntimeError):
    """llama-server answered with an error, or not at all."""


def _call(url: str, body: dict[str, Any] | None = None,
          timeout: float = CALL_TIMEOUT_SECONDS) -> dict[str, Any]:
    request = urllib.request.Request(
        url, method="GET" if body is None else "POST",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            payload = json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise ServerError(f"HTTP {error.code}: {_message(error.read())}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ServerError(f"unreachable: {getattr(error, 'reason', error)}") from None
    except ValueError as error:
        raise ServerError(f"unreadable answer: {error}") from None
    if not isinstance(payload, dict):
        raise ServerError("unreadable answer: not an object")
    return payload


def _message(body: bytes) -> str:
    """The error message of llama-server's JSON error, else the body's start."""
    try:
        parsed = json.loads(body)
        return str(parsed["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


def _slot_action(base: str, sequence: int, action: str, filename: str | None = None
                 ) -> dict[str, Any]:
    return _call(f"{base}/slots/{sequence}?action={action}",
                 {} if filename is None else {"filename": filename})


def loaded_model(base: str) -> str:
    """The model fingerprint of the server at ``base``."""
    models = _call(f"{base}/v1/models", timeout=10).get("data") or []
    if not models or not isinstance(models[0].get("meta"), dict):
        raise ServerError("/v1/models describes no model")
    return model_fingerprint(models[0]["meta"])


def save(request: SaveRequest, now: Clock) -> SaveOutcome:
    """Saves every sequence's cache, then empties what the budget evicts."""
    started = time.monotonic()
    base = server_base(request.endpoint)
    saved: list[PromptCacheFile] = []
    failures: list[str] = []
    try:
        model = loaded_model(base)
    except ServerError as error:
        return SaveOutcome(request, now(), time.monotonic() - started, (),
                           request.recorded, (), (f"describing the model: {error}",))
    for sequence, name in request.files:
        try:
            answer = _slot_action(base, sequence, "save", name)
        except ServerError as error:
            failures.append(f"sequence {sequence}: {error}")
            continue
        tokens = int(answer.get("n_saved") or 0)
        if tokens:
            saved.append(PromptCacheFile(name=name, sequence=sequence, key=request.key,
                                         model=model, tokens=tokens,
                                         bytes=int(answer.get("n_written") or 0),
                                         saved_at=now()))
    kept, evicted = within_budget(merged(request.recorded, saved), request.budget_bytes)
    names = tuple(f.name for f in evicted)
    _empty(base, names, failures)
    return SaveOutcome(request, now(), time.monotonic() - started, tuple(saved), kept,
                       names, tuple(failures))


def _empty(base: str, names: tuple[str, ...], failures: list[str]) -> None:
    """Overwrites each file with an emptied sequence 0 (the server is about to stop:
    its own cache no longer matters). A file left whole is out of the record anyway,
    and the next save of its cache overwrites it."""
    if not names:
        return
    try:
        _slot_action(base, 0, "erase")
    except ServerError as error:
        failures.append(f"emptying evicted files: {error}")
        return
    for name in names:
        try:
            _slot_action(base, 0, "save", name)
        except ServerError as error:
            failures.append(f"emptying evicted file {name}: {error}")


def restore(request: RestoreRequest, now: Clock) -> RestoreOutcome:
    """Restores each cache the model fingerprint allows; the rest are refused."""
    started = time.monotonic()
    base = server_base(request.endpoint)
    try:
        model = loaded_model(base)
    except ServerError as error:
        return RestoreOutcome(request, now(), time.monotonic() - started, (),
                              tuple((f, f"describing the model: {error}")
                                    for f in request.files))
    restored: list[tuple[PromptCacheFile, int]] = []
    failures: list[tuple[PromptCacheFile, str]] = []
    for file in request.files:
        refused = refusal(file, model)
        if refused is not None:
            failures.append((file, refused))
            continue
        try:
            answer = _slot_action(base, file.sequence, "restore", file.name)
        except ServerError as error:
            failures.append((file, str(error)))
            continue
        restored.append((file, int(answer.get("n_restored") or 0)))
    return RestoreOutcome(request, now(), time.monotonic() - started, tuple(restored),
                          tuple(failures))
