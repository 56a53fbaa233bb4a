"""Conditions: transition times and order."""

from __future__ import annotations

import datetime

from hybrid_compute.plan.conditions import set_condition

T0 = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def test_transition_time_moves_only_when_status_flips() -> None:
    first = set_condition([], "Ready", "False", "Loading", "", 1, T0)
    same = set_condition(first, "Ready", "False", "Loading", "still", 2, T1)
    flipped = set_condition(same, "Ready", "True", "Serving", "", 2, T1)
    assert same[0].last_transition_time == T0
    assert same[0].observed_generation == 2
    assert flipped[0].last_transition_time == T1


def test_other_conditions_keep_their_order() -> None:
    conditions = set_condition([], "Accepted", "True", "Valid", "", 1, T0)
    conditions = set_condition(conditions, "Ready", "False", "Loading", "", 1, T0)
    conditions = set_condition(conditions, "Accepted", "False", "InvalidSpec", "x", 2, T1)
    assert [c.type for c in conditions] == ["Accepted", "Ready"]
