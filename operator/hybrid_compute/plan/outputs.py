"""What a plan decides besides placement: Events to post, condition updates and the
per-GPU summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EventType = Literal["Normal", "Warning"]
ConditionUpdate = tuple[str, "bool | None", str, str]


@dataclass(frozen=True)
class EventIntent:
    """An Event the act layer posts on a ModelSlot or GpuWorkload."""

    namespace: str
    name: str
    type: EventType
    reason: str
    message: str
    kind: str = "ModelSlot"


@dataclass(frozen=True)
class GpuSummary:
    id: str
    capacity_bytes: int
    planned_bytes: int
    held_bytes: int
    residents: tuple[str, ...]
