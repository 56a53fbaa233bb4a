"""Daily windows in a time zone: inside or not, and the next change."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest

from hybrid_compute.api.gpuworkload import Schedule
from hybrid_compute.plan.windows import local_text, window_state

AUCKLAND = zoneinfo.ZoneInfo("Pacific/Auckland")


def schedule(*spans: tuple[str, str], zone: str = "Pacific/Auckland") -> Schedule:
    return Schedule.model_validate({"timeZone": zone, "windows": [
        {"start": start, "end": end} for start, end in spans]})


def at(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=AUCKLAND)


@pytest.mark.parametrize("moment, inside", [
    (at(2026, 12, 2, 1, 59), False),
    (at(2026, 12, 2, 2, 0), True),
    (at(2026, 12, 2, 7, 59), True),
    (at(2026, 12, 2, 8, 0), False),
    (at(2026, 12, 2, 14, 0), False),
])
def test_seed_window_boundaries(moment: datetime.datetime, inside: bool) -> None:
    assert window_state(schedule(("02:00", "08:00")), moment).inside is inside


def test_next_opening_is_tomorrow_at_two_local_time() -> None:
    state = window_state(schedule(("02:00", "08:00")), at(2026, 12, 2, 14, 0))
    assert state.next_change == at(2026, 12, 3, 2, 0)
    assert local_text(state.next_change, "Pacific/Auckland") == "2026-12-03 02:00 NZDT"
    assert state.description == "02:00-08:00 Pacific/Auckland"


def test_window_crossing_midnight() -> None:
    overnight = schedule(("22:00", "06:00"))
    assert window_state(overnight, at(2026, 12, 2, 23, 30)).inside
    assert window_state(overnight, at(2026, 12, 3, 5, 59)).inside
    assert not window_state(overnight, at(2026, 12, 3, 6, 0)).inside
    assert window_state(overnight, at(2026, 12, 3, 1, 0)).next_change == at(2026, 12, 3, 6)


def test_daylight_saving_start_shortens_the_night() -> None:
    # New Zealand moves its clocks from 02:00 to 03:00 on 27 September 2026: the
    # 02:00-08:00 window that night opens when the clocks read 03:00.
    night = schedule(("02:00", "08:00"))
    before = datetime.datetime(2026, 9, 26, 13, 30, tzinfo=datetime.UTC)  # 01:30 NZST
    opening = window_state(night, before).next_change
    assert opening == datetime.datetime(2026, 9, 26, 14, 0, tzinfo=datetime.UTC)
    closing = window_state(night, opening).next_change
    assert closing - opening == datetime.timedelta(hours=5)


def test_daylight_saving_end_lengthens_the_night() -> None:
    # Clocks go back from 03:00 to 02:00 on 5 April 2026: that window lasts 7 hours.
    night = schedule(("02:00", "08:00"))
    opening = window_state(night, datetime.datetime(2026, 4, 4, 12, 0,
                                                   tzinfo=datetime.UTC)).next_change
    closing = window_state(night, opening).next_change
    assert closing - opening == datetime.timedelta(hours=7)


def test_adjacent_windows_join() -> None:
    joined = schedule(("02:00", "04:00"), ("04:00", "06:00"))
    assert window_state(joined, at(2026, 12, 2, 3, 0)).next_change == at(2026, 12, 2, 6, 0)
