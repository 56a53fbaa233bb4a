"""How long a request would wait for a slot that is not Ready.

The operator keeps the durations of a slot's last loads in its status
(``recentSwapSeconds``, from the decision to load to Ready) and predicts the next
one from them; ``/v1/state`` publishes the prediction as ``predictedWaitSeconds``,
which the router weighs against a request's patience: hold the request for the
swap, or bridge it to the fallback at once.

Pure: a slot's phase, its published status and the clock in, seconds out.
"""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

RECENT_SWAPS = 5
"""Loads remembered per slot: enough for a median that one slow load (a cold page
cache, an image pull) does not move, few enough to follow a changed model."""


def remember_swap(recent: Sequence[float] | None, seconds: float) -> list[float]:
    """``recentSwapSeconds`` after a load that took ``seconds``: the last
    :data:`RECENT_SWAPS`, oldest first."""
    return [*(recent or []), round(seconds, 2)][-RECENT_SWAPS:]


def typical_swap(recent: Sequence[float] | None, default: float) -> float:
    """The median of the recent loads; ``default`` for a slot never loaded."""
    return float(statistics.median(recent)) if recent else default


def predicted_wait(phase: str | None, status: Mapping[str, Any], now: datetime.datetime,
                   default: float) -> float | None:
    """Seconds until the slot would serve a request that asks for it now.

    ``status`` is the slot's status as stored (camelCase JSON). Ready: 0. Standby: a
    whole load, which the request's demand starts. Loading: what is left of it; a
    load that has outlasted its typical time is given until the slowest recent one,
    and one later than that is as unknown as a slot without history (``default``).
    Any other phase (Pending for room, Unloading or Draining for another slot,
    Unschedulable, Failed): None, since a request cannot bring the slot in soon.
    """
    if phase == "Ready":
        return 0.0
    recent = [float(s) for s in status.get("recentSwapSeconds") or []]
    typical = typical_swap(recent, default)
    if phase == "Standby":
        return round(typical, 1)
    if phase != "Loading":
        return None
    since = status.get("loadingSince")
    elapsed = 0.0
    if isinstance(since, str):
        started = datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
        elapsed = max((now - started).total_seconds(), 0.0)
    for estimate in (typical, max(recent, default=0.0)):
        if estimate > elapsed:
            return round(estimate - elapsed, 1)
    return round(default, 1)
