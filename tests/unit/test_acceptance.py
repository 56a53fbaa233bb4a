"""Conditions and the acceptance status written for valid and invalid objects."""

from __future__ import annotations

import datetime

from hybrid_compute.acceptance import acceptance_status, needs_update
from hybrid_compute.api import RoutePolicy
from hybrid_compute.conditions import find, parse_conditions, set_condition

T0 = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def body(generation: int, spec: dict, status: dict | None = None) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": "p", "namespace": "n", "generation": generation},
            "spec": spec, "status": status or {}}


VALID_POLICY = {"cloudModels": [{"alias": "cloud/mid", "model": "gemini/gemini-2.5-flash"}]}


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


def test_valid_policy_is_accepted_with_its_generation() -> None:
    status = acceptance_status(RoutePolicy.crd, body(3, VALID_POLICY), T0)
    assert status["observedGeneration"] == 3
    accepted = find(parse_conditions(status["conditions"]), "Accepted")
    assert accepted is not None and accepted.status == "True"
    assert accepted.observed_generation == 3


def test_invalid_policy_gets_a_reason_naming_the_field() -> None:
    spec = {"budget": {"amount": -5}}
    status = acceptance_status(RoutePolicy.crd, body(1, spec), T0)
    accepted = find(parse_conditions(status["conditions"]), "Accepted")
    assert accepted is not None
    assert (accepted.status, accepted.reason) == ("False", "InvalidSpec")
    assert "spec.budget.amount" in accepted.message


def test_fixed_policy_is_accepted_again() -> None:
    broken = acceptance_status(RoutePolicy.crd, body(1, {"budget": {"amount": -5}}), T0)
    fixed = acceptance_status(RoutePolicy.crd, body(2, VALID_POLICY, broken), T1)
    accepted = find(parse_conditions(fixed["conditions"]), "Accepted")
    assert accepted is not None and accepted.status == "True"
    assert accepted.last_transition_time == T1


def test_unchanged_status_is_not_written_again() -> None:
    status = acceptance_status(RoutePolicy.crd, body(1, VALID_POLICY), T0)
    again = acceptance_status(RoutePolicy.crd, body(1, VALID_POLICY, status), T1)
    assert not needs_update(status, again)
    assert needs_update(status, {**again, "observedGeneration": 2})
