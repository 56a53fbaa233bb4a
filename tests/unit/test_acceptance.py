"""Conditions and the acceptance status written for valid and invalid objects."""

from __future__ import annotations

import datetime

from hybrid_compute.acceptance import acceptance_status, needs_update
from hybrid_compute.api import GpuWorkload, ModelSlot, RoutePolicy
from hybrid_compute.conditions import find, parse_conditions, set_condition

T0 = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def slot_body(generation: int, spec: dict, status: dict | None = None) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": "s", "namespace": "n", "generation": generation},
            "spec": spec, "status": status or {}}


VALID_SLOT = {"alias": "local/fast", "model": {"path": "a.gguf", "vram": "7Gi"}}


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


def test_valid_slot_is_accepted_and_pending() -> None:
    status = acceptance_status(ModelSlot.crd, slot_body(3, VALID_SLOT), T0)
    assert status["observedGeneration"] == 3
    assert status["phase"] == "Pending"
    accepted = find(parse_conditions(status["conditions"]), "Accepted")
    assert accepted is not None and accepted.status == "True"
    assert accepted.observed_generation == 3


def test_invalid_slot_gets_a_reason_naming_the_field() -> None:
    spec = {"alias": "local/fast", "model": {"path": "a.gguf", "vram": "lots"}}
    status = acceptance_status(ModelSlot.crd, slot_body(1, spec), T0)
    assert status["phase"] == "Failed"
    accepted = find(parse_conditions(status["conditions"]), "Accepted")
    assert accepted is not None
    assert (accepted.status, accepted.reason) == ("False", "InvalidSpec")
    assert "spec.model.vram" in accepted.message


def test_fixed_slot_leaves_failed() -> None:
    broken = acceptance_status(ModelSlot.crd, slot_body(1, {"alias": "x"}), T0)
    fixed = acceptance_status(ModelSlot.crd, slot_body(2, VALID_SLOT, broken), T1)
    assert fixed["phase"] == "Pending" and fixed["reason"] == "accepted"


def test_route_policy_has_no_phase_and_workload_starts_queued() -> None:
    policy = acceptance_status(RoutePolicy.crd, slot_body(1, {}), T0)
    assert "phase" not in policy
    workload_spec = {"class": "TTS", "vram": "4Gi",
                     "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}}
    workload = acceptance_status(GpuWorkload.crd, slot_body(1, workload_spec), T0)
    assert workload["phase"] == "Queued"


def test_unchanged_status_is_not_written_again() -> None:
    status = acceptance_status(ModelSlot.crd, slot_body(1, VALID_SLOT), T0)
    again = acceptance_status(ModelSlot.crd, slot_body(1, VALID_SLOT, status), T1)
    assert not needs_update(status, again)
    assert needs_update(status, {**again, "observedGeneration": 2})
