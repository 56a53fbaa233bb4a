"""Reads and writes the leader Lease for :mod:`hybrid_compute.control.leader_election`, and
tells the control loop whether this replica leads.

Every API error is logged and retried: a replica that cannot reach the Lease never
crashes, it just does not lead (or stops leading once its renew deadline passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import secrets
import socket
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.control.leader_election import (
    LEASE_NAME,
    Decision,
    ElectionTiming,
    LeaseRecord,
    Sighting,
    decide,
    leading_until,
    lease_record,
    released_spec,
)

logger = logging.getLogger("hybrid_compute.control.lease_elector")

CONFLICT = 409
NOT_FOUND = 404


def default_identity() -> str:
    """The pod's name (from the downward API) or the host name, plus a random
    suffix: a restarted process must not mistake its predecessor's Lease for its own."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{secrets.token_hex(4)}"


def default_namespace(option: str | None) -> str:
    """``--leader-election-namespace``, else the pod's namespace, else ``default``."""
    return option or os.environ.get("POD_NAMESPACE") or "default"


def _now() -> datetime.datetime:
    # Real time, never the operator's adjustable clock: lease durations are real.
    return datetime.datetime.now(datetime.UTC)


class LeaseElector:
    """Competes for the Lease ``name`` in ``namespace`` until cancelled."""

    def __init__(self, api: client.ApiClient, namespace: str, identity: str,
                 timing: ElectionTiming | None = None, name: str = LEASE_NAME) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or ElectionTiming()
        self.holder = ""
        """The holder as last read; "" when nobody holds the Lease or it is unknown."""
        self.leading = asyncio.Event()
        self.standby = asyncio.Event()
        self.standby.set()
        self._leading_until: datetime.datetime | None = None
        self._sighting: Sighting | None = None

    def is_leader(self) -> bool:
        return self._leading_until is not None and _now() < self._leading_until

    def describe_leader(self) -> str:
        return self.holder or "not elected yet"

    def _lead(self, until: datetime.datetime) -> None:
        if self._leading_until is None:
            logger.info("this replica (%s) now leads: Lease %s/%s", self.identity,
                        self.namespace, self.name)
        self._leading_until = until
        self.holder = self.identity
        self.standby.clear()
        self.leading.set()

    def _step_down(self, why: str) -> None:
        if self._leading_until is not None:
            logger.warning("this replica (%s) stops leading: %s", self.identity, why)
        self._leading_until = None
        self.leading.clear()
        self.standby.set()

    def _read(self) -> tuple[LeaseRecord | None, dict[str, Any] | None]:
        try:
            response = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False)
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None, None
            raise
        lease: dict[str, Any] = json.loads(response.data)
        return lease_record(lease), lease

    def _write(self, decision: Decision, lease: dict[str, Any] | None) -> None:
        assert decision.spec is not None
        if lease is None:
            self.coordination.create_namespaced_lease(self.namespace, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": decision.spec})
        else:
            # The resourceVersion read travels with the write: if another replica
            # wrote in between, the API server refuses this one with a conflict.
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, {**lease, "spec": decision.spec})

    async def step(self) -> datetime.datetime:
        """Reads the Lease, acts on the decision; returns when to look again."""
        started = _now()
        record, lease = await asyncio.to_thread(self._read)
        decision = decide(record, self._sighting, self.identity, started, self.timing)
        self._sighting = decision.sighting
        if decision.action == "wait":
            self.holder = decision.holder
            self._step_down(f"the Lease is held by {decision.holder}")
            return decision.retry_at
        try:
            await asyncio.to_thread(self._write, decision, lease)
        except ApiException as error:
            if error.status not in (CONFLICT, NOT_FOUND):
                raise
            # Another replica wrote the Lease first (or deleted it): look again soon.
            self._sighting = None
            self._step_down("another replica wrote the Lease first")
            return _now() + self.timing.retry_interval
        self._lead(leading_until(started, self.timing))
        return decision.retry_at

    async def run(self) -> None:
        while True:
            try:
                retry_at = await self.step()
            except asyncio.CancelledError:
                raise
            except ApiException as error:
                logger.warning("leader election: Lease %s/%s: API %s %s; retrying in %.0fs",
                               self.namespace, self.name, error.status, error.reason,
                               self.timing.retry_interval.total_seconds())
                retry_at = _now() + self.timing.retry_interval
            except Exception:
                logger.exception("leader election failed; retrying in %.0fs",
                                 self.timing.retry_interval.total_seconds())
                retry_at = _now() + self.timing.retry_interval
            # A leader that cannot renew in time stops acting at its deadline, not at
            # the next attempt.
            if self._leading_until is not None:
                retry_at = min(retry_at, self._leading_until)
            await asyncio.sleep(max((retry_at - _now()).total_seconds(), 0.0))
            if self._leading_until is not None and not self.is_leader():
                self._step_down("the Lease was not renewed within the renew deadline")

    async def release(self) -> None:
        """Hands the Lease back on shutdown so a standby replica takes over at once."""
        if not self.is_leader():
            return
        self._step_down("shutting down")
        with contextlib.suppress(ApiException, OSError):
            record, lease = await asyncio.to_thread(self._read)
            if record is not None and lease is not None and record.holder == self.identity:
                await asyncio.to_thread(
                    self.coordination.replace_namespaced_lease, self.name, self.namespace,
                    {**lease, "spec": released_spec(record, _now())})
                logger.info("released Lease %s/%s", self.namespace, self.name)
