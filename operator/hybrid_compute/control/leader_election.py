"""Leader election over a ``coordination.k8s.io/v1`` Lease: the rules, without I/O.

Several operator replicas may run; only the one holding the Lease observes, plans
and acts. A replica reads the Lease, asks :func:`decide` what to do, writes the
Lease when told to (with the resourceVersion it read, so that of two replicas
racing for it only one write lands), and looks again when the decision says.

A holder counts as gone when its record has not changed for a whole lease duration
*as this replica saw it*: the time runs on this replica's clock from when it first
saw that record, and is never compared with the holder's ``renewTime``, so clocks
that disagree between machines cannot make a live holder look expired.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

LEASE_NAME = "hybrid-compute-leader"


@dataclass(frozen=True)
class ElectionTiming:
    lease_duration: datetime.timedelta = datetime.timedelta(seconds=15)
    """How long others wait on a record that stopped changing before taking over."""
    renew_interval: datetime.timedelta = datetime.timedelta(seconds=5)
    renew_deadline: datetime.timedelta = datetime.timedelta(seconds=10)
    """A leader that has not renewed for this long stops acting: well before anyone
    else may take over, which is a whole lease duration after its last renewal."""
    retry_interval: datetime.timedelta = datetime.timedelta(seconds=2)
    """How often a replica that does not lead looks again, and how soon a failed
    read or write is retried."""


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease as read: its spec and the resourceVersion to write against."""

    resource_version: str
    holder: str = ""
    lease_duration_seconds: int | None = None
    acquire_time: str | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Sighting:
    """A Lease record as this replica first saw it, and when."""

    resource_version: str
    seen_at: datetime.datetime


Action = Literal["create", "take", "renew", "wait"]


@dataclass(frozen=True)
class Decision:
    action: Action
    retry_at: datetime.datetime
    """When to read the Lease again."""
    spec: dict[str, Any] | None = None
    """The Lease spec to write; None while waiting."""
    holder: str = ""
    """Who holds the Lease as read ("" for nobody)."""
    sighting: Sighting | None = None
    """What to pass to the next :func:`decide`."""


def lease_record(lease: Mapping[str, Any]) -> LeaseRecord:
    """The parts of a Lease object that the election reads."""
    spec = lease.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    return LeaseRecord(
        resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        holder=spec.get("holderIdentity") or "",
        lease_duration_seconds=duration if isinstance(duration, int) else None,
        acquire_time=spec.get("acquireTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def micro_time(moment: datetime.datetime) -> str:
    """Kubernetes' MicroTime format, which acquireTime and renewTime use."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spec(identity: str, acquired: str, now: datetime.datetime, transitions: int,
          timing: ElectionTiming) -> dict[str, Any]:
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": math.ceil(timing.lease_duration.total_seconds()),
        "acquireTime": acquired,
        "renewTime": micro_time(now),
        "leaseTransitions": transitions,
    }


def decide(lease: LeaseRecord | None, sighting: Sighting | None, identity: str,
           now: datetime.datetime, timing: ElectionTiming) -> Decision:
    """What replica ``identity`` does with the Lease it read (None: there is none)."""
    renew_at = now + timing.renew_interval
    if lease is None:
        return Decision("create", renew_at, _spec(identity, micro_time(now), now, 0, timing))
    if lease.holder == identity:
        acquired = lease.acquire_time or micro_time(now)
        return Decision("renew", renew_at,
                        _spec(identity, acquired, now, lease.transitions, timing),
                        holder=identity)
    if sighting is None or sighting.resource_version != lease.resource_version:
        sighting = Sighting(lease.resource_version, now)
    duration = (datetime.timedelta(seconds=lease.lease_duration_seconds)
                if lease.lease_duration_seconds else timing.lease_duration)
    expires = sighting.seen_at + duration
    if not lease.holder or now >= expires:
        return Decision("take", renew_at,
                        _spec(identity, micro_time(now), now, lease.transitions + 1, timing),
                        holder=lease.holder, sighting=sighting)
    return Decision("wait", min(expires, now + timing.retry_interval), holder=lease.holder,
                    sighting=sighting)


def released_spec(lease: LeaseRecord, now: datetime.datetime) -> dict[str, Any]:
    """What a leader that shuts down writes, so another replica takes over at once
    instead of waiting a lease duration."""
    return {"holderIdentity": "", "leaseDurationSeconds": 1,
            "acquireTime": lease.acquire_time, "renewTime": micro_time(now),
            "leaseTransitions": lease.transitions}


def leading_until(renew_started: datetime.datetime,
                  timing: ElectionTiming) -> datetime.datetime:
    """How long a leader may act after a write of the Lease that started at
    ``renew_started`` succeeded."""
    return renew_started + timing.renew_deadline
