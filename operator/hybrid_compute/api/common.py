"""Types shared by the three custom resources: the base model, conditions,
quantities, durations, aliases and the CRD metadata each kind declares."""

from __future__ import annotations

import datetime
import functools
import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from hybrid_compute.api.units import parse_quantity

GROUP = "hybridcompute.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "hybrid"

ALIAS_PATTERN = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?/[a-z0-9]([a-z0-9._:-]*[a-z0-9])?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[kMGTPE]|([eE][+-]?[0-9]+))?$"
)
CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def cel(rule: str, message: str, reason: str | None = None,
        field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
    entry = {"rule": rule, "message": message}
    if reason:
        entry["reason"] = reason
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


# The types carry no description of their own: a type-level description would
# replace the docstring of every field using it in the CRD (kubectl explain).
Alias = Annotated[str, StringConstraints(pattern=ALIAS_PATTERN, max_length=128)]
"""A model alias of the form provider/name, for example local/fast."""
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]
"""A duration such as 30s, 5m or 1h30m."""
ClockTime = Annotated[str, StringConstraints(pattern=CLOCK_PATTERN)]
"""A time of day, HH:MM on a 24-hour clock."""
DnsLabel = Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)]
def _positive_quantity(value: str) -> str:
    if parse_bytes(value) <= 0:
        raise ValueError("must be a positive quantity such as 7Gi")
    return value


def _known_time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as "
                         "Pacific/Auckland or UTC") from None
    return value


PositiveQuantity = Annotated[
    str,
    StringConstraints(pattern=QUANTITY_PATTERN, max_length=32),
    AfterValidator(_positive_quantity),
    Field(
        description="A positive amount of memory as a Kubernetes quantity, e.g. 7Gi or 512Mi.",
        json_schema_extra=validations(
            cel("quantity(self).isGreaterThan(quantity('0'))",
                "must be a positive quantity such as 7Gi", reason="FieldValueInvalid"),
        ),
    ),
]


# A zone name CEL can load; an unknown name fails the rule's evaluation, so the API
# server rejects the object.
TIME_ZONE_RULE = cel(
    "self == 'UTC' || timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0",
    "must be an IANA time zone such as Pacific/Auckland or UTC",
)

TimeZone = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$", max_length=64),
    AfterValidator(_known_time_zone),
    Field(json_schema_extra=validations(TIME_ZONE_RULE)),
]


class ApiModel(BaseModel):
    """Base of every spec and status model: camelCase on the wire, docstrings as
    descriptions, unknown fields refused (the API server refuses them too)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        validate_default=False,
    )


class SecretKeyRef(ApiModel):
    """A key in a Secret in the object's namespace. Only the reference is stored;
    the value never leaves the Secret."""

    name: DnsLabel
    """Name of the Secret."""
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
    """Key within the Secret."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One aspect of the object's state, in the usual Kubernetes form."""

    type: str
    """Condition type, for example Ready."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    """A CamelCase word saying why the condition has this status."""
    message: str = ""
    """A sentence for humans with the details."""
    last_transition_time: datetime.datetime
    """When the status last changed."""
    observed_generation: int | None = None
    """The metadata.generation this condition was computed from."""


Conditions = Annotated[
    list[Condition],
    Field(json_schema_extra={"x-kubernetes-list-type": "map",
                             "x-kubernetes-list-map-keys": ["type"]}),
]


@dataclass(frozen=True)
class CrdInfo:
    """How a kind is published: names, printer columns, where its CRD file goes."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[dict[str, Any], ...]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    scope: str = "Namespaced"
    categories: tuple[str, ...] = field(default=(CATEGORY,))

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def column(name: str, json_path: str, type_: str = "string", priority: int = 0,
           description: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "type": type_, "jsonPath": json_path}
    if priority:
        entry["priority"] = priority
    if description:
        entry["description"] = description
    return entry


AGE_COLUMN = column("Age", ".metadata.creationTimestamp", "date")


class CustomObject:
    """Mixin telling the generator which CRD a kind belongs to."""

    crd: ClassVar[CrdInfo]


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@functools.lru_cache(maxsize=4096)
def parse_duration(text: str) -> datetime.timedelta:
    """Parses the Duration format (``1h30m``, ``45s``, ``250ms``)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}; use forms like 30s, 5m or 1h30m")
    seconds = sum(float(number) * _UNIT_SECONDS[unit]
                  for number, unit in _DURATION_PART.findall(text))
    return datetime.timedelta(seconds=seconds)


def duration_text(span: datetime.timedelta) -> str:
    """A span in the Duration format, to whole seconds: ``4m30s``, ``2h``, ``0s``."""
    seconds = max(round(span.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"),
                                                        (seconds, "s")) if value)
    return text or "0s"


@functools.lru_cache(maxsize=4096)
def parse_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes."""
    return int(parse_quantity(quantity))
