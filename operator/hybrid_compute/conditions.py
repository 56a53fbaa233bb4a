"""Kubernetes-style conditions: set one, keep lastTransitionTime unless the status
flips, stamp observedGeneration."""

from __future__ import annotations

import datetime
from typing import Any

from hybrid_compute.api.common import Condition, ConditionStatus


def set_condition(
    existing: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime.datetime,
) -> list[Condition]:
    """Returns ``existing`` with condition ``type_`` set; other types keep their order."""
    previous = next((c for c in existing if c.type == type_), None)
    transition = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    if previous is None:
        return [*existing, updated]
    return [updated if c.type == type_ else c for c in existing]


def parse_conditions(raw: Any) -> list[Condition]:
    """Conditions from a stored status; entries that do not parse are dropped."""
    conditions: list[Condition] = []
    for item in raw or []:
        try:
            conditions.append(Condition.model_validate(item))
        except ValueError:
            continue
    return conditions


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
