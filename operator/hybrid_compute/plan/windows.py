"""Daily time windows in a time zone: is a moment inside one, and when does the
next one open? Windows may cross midnight (22:00-06:00); daylight-saving changes
are handled by doing the wall-clock arithmetic in the zone and comparing in UTC."""

from __future__ import annotations

import datetime
import functools
import zoneinfo
from dataclasses import dataclass

from hybrid_compute.api.gpuworkload import Schedule


@dataclass(frozen=True)
class WindowState:
    inside: bool
    next_change: datetime.datetime
    """When the answer flips: the closing time if inside, the next opening if not."""
    description: str
    """The schedule for people: 02:00-08:00 Pacific/Auckland."""


def _clock(text: str) -> datetime.time:
    hours, minutes = text.split(":")
    return datetime.time(int(hours), int(minutes))


def _at(day: datetime.date, clock: datetime.time, zone: zoneinfo.ZoneInfo
        ) -> datetime.datetime:
    """A wall-clock time on a day, in UTC. A time that does not exist that day (the
    hour skipped when clocks go forward) is read with the offset before the change,
    which lands just after the gap."""
    return datetime.datetime.combine(day, clock, tzinfo=zone).astimezone(datetime.UTC)


def describe(schedule: Schedule) -> str:
    spans = ", ".join(f"{w.start}-{w.end}" for w in schedule.windows)
    return f"{spans} {schedule.time_zone}"


def window_state(schedule: Schedule, now: datetime.datetime) -> WindowState:
    spans = tuple((w.start, w.end) for w in schedule.windows)
    return _window_state(schedule.time_zone, spans, now)


@functools.lru_cache(maxsize=512)
def _window_state(time_zone: str, windows: tuple[tuple[str, str], ...],
                  now: datetime.datetime) -> WindowState:
    """Memoised: many workloads share a schedule, and a plan asks at one instant."""
    zone = zoneinfo.ZoneInfo(time_zone)
    today = now.astimezone(zone).date()
    description = f"{', '.join(f'{a}-{b}' for a, b in windows)} {time_zone}"
    spans: list[tuple[datetime.datetime, datetime.datetime]] = []
    for offset in (-1, 0, 1, 2):
        day = today + datetime.timedelta(days=offset)
        for window_start, window_end in windows:
            start, end = _clock(window_start), _clock(window_end)
            end_day = day + datetime.timedelta(days=1) if end <= start else day
            opens, closes = _at(day, start, zone), _at(end_day, end, zone)
            if closes > opens:
                spans.append((opens, closes))
    spans.sort()
    current = [(opens, closes) for opens, closes in spans if opens <= now < closes]
    if current:
        # Overlapping or touching windows extend each other.
        closes = max(c for _, c in current)
        extended = True
        while extended:
            extended = False
            for opens, later in spans:
                if opens <= closes < later:
                    closes, extended = later, True
        return WindowState(True, closes, description)
    upcoming = min(opens for opens, _ in spans if opens > now)
    return WindowState(False, upcoming, description)


@functools.lru_cache(maxsize=512)
def local_text(moment: datetime.datetime, time_zone: str) -> str:
    """A moment as people in the zone read it: 2026-12-02 02:00 NZDT. Memoised: the
    workloads that share a window name the same moment on every plan until it comes."""
    local = moment.astimezone(zoneinfo.ZoneInfo(time_zone))
    return local.strftime("%Y-%m-%d %H:%M %Z")
