"""Whether an object's spec is one the operator can act on, as a status.

The API server's schema and CEL rules reject most mistakes; this catches the rest
(objects stored before a CRD change, rules no schema can express) so a bad object
gets a condition with a reason instead of crashing a handler.
"""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import ValidationError

from hybrid_compute.api.common import CrdInfo
from hybrid_compute.conditions import parse_conditions, set_condition


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field: ``spec.model.vram: ...``."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(str(part) for part in problem["loc"])])
        lines.append(f"{path}: {problem['msg']}")
    return "; ".join(lines)


def acceptance_status(crd: CrdInfo, body: dict[str, Any], now: datetime.datetime
                      ) -> dict[str, Any]:
    """The status the operator applies after validating ``body``'s spec, for kinds
    the control loop does not plan (RoutePolicy, for now)."""
    generation = body.get("metadata", {}).get("generation")
    conditions = parse_conditions((body.get("status") or {}).get("conditions"))
    try:
        crd.spec_model.model_validate(body.get("spec") or {})
    except ValidationError as error:
        conditions = set_condition(conditions, "Accepted", "False", "InvalidSpec",
                                   describe_validation_error(error), generation, now)
    else:
        conditions = set_condition(conditions, "Accepted", "True", "Valid",
                                   "the spec is valid", generation, now)
    return {"observedGeneration": generation,
            "conditions": [c.model_dump(by_alias=True, mode="json", exclude_none=True)
                           for c in conditions]}


def needs_update(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether applying ``desired`` would change the stored status."""
    current = current or {}
    return any(current.get(key) != value for key, value in desired.items())
