"""Sleep: when the default slot gives the card up although nothing else asks for it,
so an unused GPU holds no model (about 9 W idle instead of about 50 W with one in
VRAM).

* Inside a window of ``spec.sleepSchedule`` (daily windows in a time zone, as a
  GpuWorkload's, :mod:`.windows`) the default slot is not loaded unless a request
  asks for it; a request loads it, and it sleeps again once its requests stop
  (``sleepAfter``, else its idle time).
* ``spec.sleepAfter``: at any time, the default slot sleeps after that long
  without a request (counted from its last request, or from when it became Ready
  or was created when no request came since).

A sleeping default slot is not a candidate for the GPU; a slot in use (its last
request is younger than its idle time) or within its minimum residency is ranked
as before and never asleep. Pure: the slot, its last request and the clock in.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from hybrid_compute.api.common import duration_text, parse_duration
from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.plan.view import SlotInfo
from hybrid_compute.plan.windows import local_text, window_state


@dataclass(frozen=True)
class Sleep:
    """Whether an idle default slot sleeps now, why, and when that is looked at again."""

    asleep: bool
    reason: str
    next_change: datetime.datetime | None


AWAKE = Sleep(False, "", None)


def sleep_after(spec: ModelSlotSpec) -> datetime.timedelta | None:
    return parse_duration(spec.sleep_after) if spec.sleep_after else None


def sleeps(spec: ModelSlotSpec) -> bool:
    """A default slot that may sleep."""
    return spec.default and (spec.sleep_schedule is not None or spec.sleep_after is not None)


def default_sleep(slot: SlotInfo, spec: ModelSlotSpec, awake_until: datetime.datetime | None,
                  now: datetime.datetime) -> Sleep:
    """The sleep of an idle default slot. ``awake_until``: until when its last request
    keeps it awake (for ``sleepAfter``, else its idle time), None without one."""
    if not sleeps(spec):
        return AWAKE
    schedule = spec.sleep_schedule
    window = window_state(schedule, now) if schedule is not None else None
    if awake_until is not None and now < awake_until:
        return Sleep(False, "", awake_until)
    if schedule is not None and window is not None and window.inside:
        return Sleep(True, f"asleep: inside its sleep window {window.description} until "
                           f"{local_text(window.next_change, schedule.time_zone)}; loads on "
                           "the next request", window.next_change)
    opens = window.next_change if window is not None else None
    after = sleep_after(spec)
    if after is None:
        return Sleep(False, "", opens)
    # With no request since, it stays up for sleepAfter once loaded or created.
    until = max((moment + after for moment in (slot.status.ready_since, slot.created)
                 if moment is not None), default=None)
    if until is not None and now < until:
        return Sleep(False, "", min(until, opens) if opens is not None else until)
    return Sleep(True, f"asleep: no request for {duration_text(after)} (sleepAfter); loads "
                       "on the next request", opens)
