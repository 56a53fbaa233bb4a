"""Why a stored spec is one the operator cannot act on, in one line.

The API server's schema and CEL rules reject most mistakes; the models catch the
rest (objects stored before a CRD change, rules no schema can express), and the
plan turns this line into a condition instead of crashing a handler.
"""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field: ``spec.model.vram: ...``."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(str(part) for part in problem["loc"])])
        lines.append(f"{path}: {problem['msg']}")
    return "; ".join(lines)
