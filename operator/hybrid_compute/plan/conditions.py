"""Kubernetes-style conditions: set one, keep lastTransitionTime unless the status
flips, stamp observedGeneration."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel

from hybrid_compute.api.common import Condition, ConditionStatus

StatusT = TypeVar("StatusT", bound=BaseModel)


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
    if previous is not None and (previous.status, previous.reason, previous.message,
                                 previous.observed_generation) == (status, reason, message,
                                                                   generation):
        return existing  # unchanged: most conditions, on most passes
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


def render_status(previous: StatusT, updates: Iterable[tuple[str, bool | None, str, str]],
                  generation: int, now: datetime.datetime, fields: dict[str, Any]
                  ) -> dict[str, Any]:
    """A stored status with condition updates (type, True/False/None, reason,
    message) and field changes applied, as the JSON the API server stores."""
    return render_status_once(previous, updates, generation, now, fields)[0]


def render_status_once(previous: StatusT,
                       updates: Iterable[tuple[str, bool | None, str, str]],
                       generation: int, now: datetime.datetime, fields: dict[str, Any]
                       ) -> tuple[dict[str, Any], bool]:
    """:func:`render_status`, and whether the result is the same at any other moment:
    true when no condition changed, so none took ``now`` as its transition time."""
    kept = list(getattr(previous, "conditions", []))
    conditions = kept
    for type_, value, reason, message in updates:
        text: ConditionStatus = "Unknown" if value is None else ("True" if value else "False")
        conditions = set_condition(conditions, type_, text, reason, message, generation, now)
    status = previous.model_copy(update={
        "observed_generation": generation, "conditions": conditions, **fields})
    rendered: dict[str, Any] = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    return rendered, conditions is kept
