"""Asks the llama-servers of draining slots whether requests are still running.

llama-server's ``GET /slots`` lists its parallel sequences; one with
``is_processing`` true (``state`` 1 in older builds) is answering a request.
Only slots the last plan left Draining are asked, a few at a time, with a short
timeout: a server that cannot answer is reported as such and counts as idle
(:class:`~hybrid_compute.plan.view.SlotActivity`), since it answers no request either.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import SlotActivity, SlotInfo
from hybrid_compute.render import children

PROBE_TIMEOUT_SECONDS = 1.0
MAX_PARALLEL_PROBES = 8


def busy_sequences(payload: Any) -> int:
    """How many of the server's sequences are processing a request."""
    if not isinstance(payload, list):
        raise ValueError("/slots did not return a list")
    busy = 0
    for entry in payload:
        if not isinstance(entry, dict):
            continue
        if entry.get("is_processing") is True or entry.get("state") == 1:
            busy += 1
    return busy


def server_base(endpoint: str) -> str:
    """llama-server's root URL, from the OpenAI-compatible /v1 the slot publishes."""
    base = endpoint.rstrip("/")
    return base.removesuffix("/v1")


def slots_url(endpoint: str) -> str:
    """llama-server's /slots."""
    return f"{server_base(endpoint)}/slots"


def probe_one(url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> SlotActivity:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return SlotActivity(busy_sequences(json.loads(answer.read())))
    except urllib.error.HTTPError as error:
        return SlotActivity(0, f"/slots answered HTTP {error.code}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return SlotActivity(0, f"/slots unreachable: {reason}")
    except ValueError as error:
        return SlotActivity(0, f"/slots unreadable: {error}")


def draining_endpoints(slots: Iterable[SlotInfo], settings: PlanSettings
                       ) -> dict[tuple[str, str], str]:
    """The /slots URL of every slot whose stored phase is Draining."""
    return {slot.key: slots_url(children.endpoint(slot.namespace, slot.name,
                                                  slot.spec.server.port,
                                                  settings.endpoint_template))
            for slot in slots if slot.spec is not None and slot.status.phase == "Draining"}


def probe(urls: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], SlotActivity]:
    """Every URL asked at once (bounded), so one slow server does not add up."""
    if not urls:
        return {}
    keys = list(urls)
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_PROBES, len(keys))) as pool:
        answers = list(pool.map(lambda key: probe_one(urls[key]), keys))
    return dict(zip(keys, answers, strict=True))
