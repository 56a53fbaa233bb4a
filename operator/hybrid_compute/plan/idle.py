"""Idle timeouts: the one way the plan reads a slot's idle time, and the rule behind
``idleTimeout: Auto``.

A slot that stays loaded while nobody asks for it holds the card; one that leaves
costs a swap the next time it is asked for (the request waits or is bridged while
the model loads again). Auto keeps a slot for as long as keeping it is cheaper
than the swaps it saves:

* **Break-even.** A second of swap counts as :data:`SWAP_WEIGHT` seconds of
  holding, so keeping the slot pays for at most that many times its typical swap
  (the median of ``status.recentSwapSeconds``) of idle time. Waiting exactly that
  long before giving the card back never costs more than twice the best choice in
  hindsight (the ski-rental rule), which is the choice while nothing is known.
* **Measured gaps.** Once idle periods are on record (gaps between two requests at
  least ``idleTimeoutBounds.min`` long; a shorter one is bridged by any choice in
  the bounds), the break-even is scaled by the share of them that ended within it:
  the share of idle periods in which keeping the slot saved a swap.
* **Bounds.** The result is held within ``idleTimeoutBounds``.

So a slot whose swaps are slow and whose requests come often keeps the card
longer, and one that swaps fast and is asked for rarely gives it back sooner:
the choice never shrinks when swaps get slower or idle periods shorter.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hybrid_compute.api.common import duration_text, parse_duration
from hybrid_compute.api.modelslot import (
    AUTO_IDLE,
    RECENT_REQUEST_GAPS,
    IdleTimeoutChoice,
    ModelSlotSpec,
    ModelSlotStatus,
)
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.swaps import typical_swap

SWAP_WEIGHT = 10
"""Seconds of holding one second of swap is worth: the seed keeps its 32B models,
whose swaps take up to 30 s, for 5 minutes."""


@dataclass(frozen=True)
class AutoIdle:
    """The idle time ``Auto`` chose, and why."""

    seconds: float
    reason: str


def _text(seconds: float) -> str:
    return duration_text(datetime.timedelta(seconds=seconds))


def auto_idle(swap_seconds: float, gaps: Sequence[float], low: float, high: float
              ) -> AutoIdle:
    """The idle time for a slot whose typical swap takes ``swap_seconds``, whose recent
    idle periods lasted ``gaps`` seconds, within [``low``, ``high``] seconds."""
    break_even = SWAP_WEIGHT * max(swap_seconds, 0.0)
    why = (f"a swap takes {swap_seconds:.1f}s, worth {_text(break_even)} of holding")
    if gaps:
        covered = sum(1 for gap in gaps if gap <= break_even)
        wanted = break_even * covered / len(gaps)
        why += f"; {covered} of {len(gaps)} idle periods ended within it"
    else:
        wanted = break_even
        why += "; no idle period on record yet"
    rounded = round(wanted, 1)
    chosen = min(max(rounded, low), high)
    if chosen > rounded:
        why += f": {_text(wanted)}, raised to the minimum {_text(low)}"
    elif chosen < rounded:
        why += f": {_text(wanted)}, held to the maximum {_text(high)}"
    else:
        why += f": {_text(chosen)} (bounds {_text(low)}-{_text(high)})"
    return AutoIdle(chosen, why)


def _bounds(spec: ModelSlotSpec) -> tuple[float, float]:
    bounds = spec.idle_timeout_bounds
    assert bounds is not None  # the spec's validation requires them with Auto
    return (parse_duration(bounds.min).total_seconds(),
            parse_duration(bounds.max).total_seconds())


def choose(spec: ModelSlotSpec, recent_swaps: Sequence[float] | None,
           gaps: Sequence[float] | None, settings: PlanSettings) -> AutoIdle:
    """``Auto``'s choice for a slot from its swap and gap records."""
    swap = typical_swap(recent_swaps, settings.default_swap_time.total_seconds())
    return auto_idle(swap, gaps or (), *_bounds(spec))


def idle_timeout(spec: ModelSlotSpec, status: ModelSlotStatus, settings: PlanSettings
                 ) -> datetime.timedelta | None:
    """How long the slot stays without a request; None when it has no idleTimeout."""
    if spec.idle_timeout is None:
        return None
    if spec.idle_timeout != AUTO_IDLE:
        return parse_duration(spec.idle_timeout)
    chosen = choose(spec, status.recent_swap_seconds, status.recent_request_gaps, settings)
    return datetime.timedelta(seconds=chosen.seconds)


def remember_gap(spec: ModelSlotSpec, previous: ModelSlotStatus,
                 requested: datetime.datetime | None) -> list[float] | None:
    """``recentRequestGaps`` after a request at ``requested``: the idle period since
    the one before appended when it lasted at least the lower bound; None when
    nothing changes."""
    before = previous.last_request_time
    if spec.idle_timeout != AUTO_IDLE or requested is None or before is None \
            or requested <= before:
        return None
    gap = (requested - before).total_seconds()
    if gap < _bounds(spec)[0]:
        return None
    return [*(previous.recent_request_gaps or []), round(gap, 1)][-RECENT_REQUEST_GAPS:]


def auto_status(spec: ModelSlotSpec, previous: ModelSlotStatus, updates: Mapping[str, Any],
                settings: PlanSettings) -> IdleTimeoutChoice | None:
    """``status.idleTimeout`` of an Auto slot, from the records this pass writes."""
    if spec.idle_timeout != AUTO_IDLE:
        return None
    chosen = choose(spec, updates.get("recent_swap_seconds", previous.recent_swap_seconds),
                    updates.get("recent_request_gaps", previous.recent_request_gaps),
                    settings)
    return IdleTimeoutChoice(seconds=chosen.seconds, reason=chosen.reason)
