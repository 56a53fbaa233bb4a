"""Performs the writes :func:`hybrid_compute.control.diff.diff` lists, in order.

Nothing here compares what a plan wants with what exists: the diff decided that.
What act owns is what a failed write means. A write that fails stops the rest of
its :class:`~hybrid_compute.control.diff.Group` (the object changed or went away
meanwhile, and the next plan starts from what is new); a failed Event is logged
and stops nothing.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.control import kube
from hybrid_compute.control.diff import (
    ApplyObject,
    ApplyStatus,
    DeleteChild,
    Group,
    PostEvent,
    Write,
)
from hybrid_compute.control.informer import Written
from hybrid_compute.plan.routing import PolicyDecision

logger = logging.getLogger("hybrid_compute.control.act")

Perform = Callable[[client.ApiClient, Write, datetime.datetime], Written | None]

_RESOURCES = {"Deployment": "deployments", "Service": "services", "Job": "jobs",
              "ConfigMap": "configmaps"}


def perform(api: client.ApiClient, write: Write, now: datetime.datetime) -> Written | None:
    """One write, through :mod:`hybrid_compute.control.kube`; an applied object is
    returned at the version it is at now."""
    match write:
        case ApplyObject():
            metadata = write.manifest["metadata"]
            version = kube.apply(api, write.manifest, write.resource_version)
            return Written(_RESOURCES[write.manifest["kind"]], metadata["namespace"],
                           metadata["name"], version)
        case ApplyStatus():
            version = kube.apply_status(api, write.crd, write.namespace, write.name,
                                        write.status)
            return Written(write.crd.plural, write.namespace, write.name, version)
        case DeleteChild():
            kube.delete_child(api, write.kind, write.namespace, write.name)
        case PostEvent():
            kube.post_event(api, write.event, now)
    return None


def act(api: client.ApiClient, writes: Sequence[Write], now: datetime.datetime,
        status_written: Callable[[PolicyDecision], None] | None = None,
        write_one: Perform = perform, written: list[Written] | None = None) -> list[str]:
    """Performs ``writes`` in order; returns one line per write done or failed, for
    logs and tests. ``status_written`` hears of every RoutePolicy status stored (the
    reported spend it carries is then durable); ``written`` receives every object
    applied, at its new version."""
    lines: list[str] = []
    failed: set[Group] = set()
    for write in writes:
        if write.group in failed:
            continue
        if isinstance(write, ApplyStatus) and write.repeats is not None \
                and write.repeats not in failed:
            continue
        try:
            done = write_one(api, write, now)
        except ApiException as error:
            line = _failure(write, error)
            if line is not None:
                lines.append(line)
            if not isinstance(write, PostEvent):
                failed.add(write.group)
            continue
        lines.append(write.line)
        if done is not None and written is not None:
            written.append(done)
        if isinstance(write, ApplyStatus) and write.stores_spend_of is not None \
                and status_written is not None:
            status_written(write.stores_spend_of)
    return lines


def _failure(write: Write, error: ApiException) -> str | None:
    """Logs a failed write; returns the line that reports it, if any."""
    group = write.group
    target = f"{group.namespace}/{group.name}"
    conflict = f"conflict on {target} ({error.status}), replanning"
    if isinstance(write, PostEvent):
        logger.warning("posting event %s on %s/%s failed: %s", write.event.reason,
                       write.event.namespace, write.event.name, error.status)
        return write.line
    match group.kind:
        case "demand":
            return conflict
        case "slot":
            if error.status in (404, 409):
                return conflict
            logger.warning("applying %s failed: %s %s", target, error.status, error.reason)
        case "workload":
            if error.status != 404:
                logger.warning("applying %s failed: %s %s", target, error.status,
                               error.reason)
        case "policy":
            if error.status not in (404, 409):
                logger.warning("applying RoutePolicy %s failed: %s %s", target,
                               error.status, error.reason)
            return f"conflict on routepolicy {target} ({error.status}), replanning"
    return None
