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

INITIAL_PHASE = {"ModelSlot": "Pending", "GpuWorkload": "Queued"}


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field: ``spec.model.vram: ...``."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(str(part) for part in problem["loc"])])
        lines.append(f"{path}: {problem['msg']}")
    return "; ".join(lines)


def acceptance_status(crd: CrdInfo, body: dict[str, Any], now: datetime.datetime
                      ) -> dict[str, Any]:
    """The status the operator applies after validating ``body``'s spec."""
    generation = body.get("metadata", {}).get("generation")
    current = body.get("status") or {}
    conditions = parse_conditions(current.get("conditions"))
    status: dict[str, Any] = {"observedGeneration": generation}
    try:
        crd.spec_model.model_validate(body.get("spec") or {})
    except ValidationError as error:
        message = describe_validation_error(error)
        conditions = set_condition(conditions, "Accepted", "False", "InvalidSpec", message,
                                   generation, now)
        if crd.kind in INITIAL_PHASE:
            status.update(phase="Failed", reason=f"invalid spec: {message}")
    else:
        conditions = set_condition(conditions, "Accepted", "True", "Valid",
                                   "the spec is valid", generation, now)
        if crd.kind in INITIAL_PHASE:
            phase, reason = current.get("phase"), current.get("reason")
            if phase in (None, "Failed"):
                phase, reason = INITIAL_PHASE[crd.kind], "accepted"
            status.update(phase=phase, reason=reason)
    status["conditions"] = [c.model_dump(by_alias=True, mode="json", exclude_none=True)
                            for c in conditions]
    return status


def needs_update(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether applying ``desired`` would change the stored status."""
    current = current or {}
    return any(current.get(key) != value for key, value in desired.items())
