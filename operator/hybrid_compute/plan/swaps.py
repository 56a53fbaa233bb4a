"""Swap timing: the moments of a load in progress, its phases once it is Ready, the
route restoration a router's next fetch marks, and how long a request would wait
for a slot that is not Ready.

The operator keeps the durations of a slot's last loads in its status
(``recentSwapSeconds``, from the decision to load to Ready) and predicts the next
one from them; ``/v1/state`` publishes the prediction as ``predictedWaitSeconds``,
which the router weighs against a request's patience: hold the request for the
swap, or bridge it to the fallback at once.

Pure: statuses, pods and the clock in; moments, phases and seconds out.
"""

from __future__ import annotations

import datetime
import itertools
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from hybrid_compute.api.modelslot import ModelSlotStatus, SwapPhases, SwapProgress
from hybrid_compute.plan.drain import ROUTER_ACTIVE_WINDOW
from hybrid_compute.plan.outputs import SlotDecision
from hybrid_compute.plan.view import PodInfo, View

RECENT_SWAPS = 5
"""Loads remembered per slot: enough for a median that one slow load (a cold page
cache, an image pull) does not move, few enough to follow a changed model."""
ROUTE_RESTORE_POLL = datetime.timedelta(seconds=1)
ROUTE_RESTORE_LIMIT = datetime.timedelta(minutes=5)
"""A router fetch later than this after Ready is not the swap's route restoration."""


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
    load that has outlasted its typical time is given until the slowest recent one.
    One slower than every recent load is given as long again as it has taken (a
    held request keeps waiting while that fits its patience, and is bridged once
    the load has used half of it), up to what a slot without history is given
    (``default``). A fast slot's load that ran a second long (a drain that waited
    for routers) is not yet taken for a stalled one.
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
    return round(min(elapsed, default) if recent else default, 1)


# ------------------------------------------------------------------ a load's moments


_NOTHING_SEEN = SwapProgress()
"""The moments of a load that has just been decided (copied, never changed)."""


def progress(previous: ModelSlotStatus, current: list[PodInfo], replicas: int,
             now: datetime.datetime) -> SwapProgress:
    """The moments of the load in progress, with the ones first seen in this pass."""
    marks = (previous.swap_progress if previous.loading_since is not None
             and previous.swap_progress is not None else _NOTHING_SEEN)
    if marks is _NOTHING_SEEN and not current:
        # Most loads a plan starts have no pod yet: made directly, not copied.
        return SwapProgress(started_at=now, drained_at=now) if replicas > 0 else marks
    seen: dict[str, datetime.datetime] = {}
    if replicas > 0 or current:
        seen["started_at"] = marks.started_at or now
        seen["drained_at"] = marks.drained_at or now
    if any(p.node for p in current):
        seen["scheduled_at"] = marks.scheduled_at or now
    if any(p.phase == "Running" or p.ready for p in current):
        seen["running_at"] = marks.running_at or now
    return marks.model_copy(update=seen) if seen else marks


def swap_phases(decided: datetime.datetime, marks: SwapProgress, ready: datetime.datetime,
                evicted: bool) -> SwapPhases:
    """Seconds per phase from the moments seen. A moment the operator did not see
    (two steps between two passes) counts as the next one, so the phases always add
    up to the whole swap."""
    points = [decided, marks.drained_at, marks.started_at, marks.scheduled_at,
              marks.running_at, ready]
    for index in range(len(points) - 2, 0, -1):
        points[index] = points[index] or points[index + 1]
    moments = [p or ready for p in points]
    for index in range(1, len(moments)):  # clocks never run backwards here
        moments[index] = max(moments[index], moments[index - 1])
    spans = [round((b - a).total_seconds(), 2) for a, b in itertools.pairwise(moments)]
    drain, unload, schedule, container_start, model_load = spans
    return SwapPhases(drain=drain if evicted else None, unload=unload if evicted else None,
                      schedule=schedule + (0 if evicted else drain + unload),
                      container_start=container_start, model_load=model_load)


def describe_phases(phases: SwapPhases) -> str:
    names = {"drain": "drain", "unload": "unload", "schedule": "schedule",
             "container_start": "container start", "model_load": "model load",
             "route_restored": "route restored"}
    return ", ".join(f"{label} {value:.1f}s" for key, label in names.items()
                     if (value := getattr(phases, key)) is not None)


# ------------------------------------------------------------------ route restored


def route_restored(previous: ModelSlotStatus, view: View, now: datetime.datetime
                   ) -> SwapPhases | None:
    """The last swap's phases with the route restoration filled in, once a router
    has fetched a state in which the slot is Ready."""
    phases = previous.last_swap_phases
    fetched = view.router_fetched_at
    if (phases is None or phases.route_restored is not None or previous.phase != "Ready"
            or previous.ready_since is None or fetched is None):
        return None
    if not previous.ready_since < fetched <= now:
        return None
    waited = fetched - previous.ready_since
    if waited > ROUTE_RESTORE_LIMIT:
        return None
    return phases.model_copy(update={"route_restored": round(waited.total_seconds(), 2)})


def route_restore_pending(decision: SlotDecision, view: View, now: datetime.datetime
                          ) -> bool:
    """A slot that just swapped in while a router is active: plan again soon, so the
    router's next fetch is timed."""
    if decision.phase != "Ready" or view.router_fetched_at is None:
        return False
    if now - view.router_fetched_at > ROUTER_ACTIVE_WINDOW:
        return False
    phases = decision.phases_recorded or decision.slot.status.last_swap_phases
    ready_since = decision.status_updates.get("ready_since") or decision.slot.status.ready_since
    return (isinstance(phases, SwapPhases) and phases.route_restored is None
            and ready_since is not None and now - ready_since < ROUTE_RESTORE_LIMIT)
