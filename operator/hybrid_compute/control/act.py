"""Applies a plan: server-side apply of children and statuses, Events.

Only differences are written: a Deployment whose replicas and template already
match, or a status that already reads as planned, is left alone.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.api.common import API_VERSION
from hybrid_compute.api.gpuworkload import GpuWorkload
from hybrid_compute.api.modelslot import ModelSlot
from hybrid_compute.api.routepolicy import RoutePolicy
from hybrid_compute.control import kube
from hybrid_compute.plan.planner import (
    EventIntent,
    Plan,
    PolicyDecision,
    SlotDecision,
    WorkloadDecision,
)
from hybrid_compute.plan.view import DeploymentInfo, SlotInfo, View
from hybrid_compute.render.children import template_hash

logger = logging.getLogger("hybrid_compute.control.act")

REPORTING_COMPONENT = "hybrid-compute"


def _observed_deployment(decision: SlotDecision, view: View) -> DeploymentInfo | None:
    return next((d for d in view.deployments
                 if (d.namespace, d.owner) == (decision.namespace, decision.name)), None)


def _deployment_matches(decision: SlotDecision, view: View) -> bool:
    observed = _observed_deployment(decision, view)
    desired = decision.deployment
    if observed is None or desired is None:
        return False
    template = desired["spec"]["template"]
    node = template["spec"].get("nodeSelector", {}).get("kubernetes.io/hostname")
    return (observed.replicas == desired["spec"]["replicas"]
            and observed.template_hash == template_hash(template)
            and observed.node == node)


def act(api: client.ApiClient, plan: Plan, view: View, now: datetime.datetime,
        status_written: Callable[[PolicyDecision], None] | None = None) -> list[str]:
    """Writes what differs; returns one line per write, for logs and tests.
    ``status_written`` hears of every RoutePolicy status stored (the reported spend
    it carries is then durable)."""
    writes: list[str] = []
    stored = {slot.key: slot for slot in view.slots}
    written: set[tuple[str, str]] = set()
    # A demand lives in the operator's memory until a status holds it: record it
    # before acting on it, or an operator killed between evicting the old slot and
    # writing the new one's status forgets why it evicted anything.
    for decision in plan.slots:
        key = (decision.namespace, decision.name)
        slot = stored.get(key)
        heard = decision.status.get("lastRequestTime")
        if heard and slot is not None and _stored_status(slot).get("lastRequestTime") != heard:
            try:
                kube.apply_status(api, ModelSlot.crd, key[0], key[1], decision.status)
            except ApiException as error:
                writes.append(f"conflict on {key[0]}/{key[1]} ({error.status}), replanning")
                continue
            written.add(key)
            writes.append(f"status {key[0]}/{key[1]} phase={decision.phase} (demand)")
    # Scale-downs first, so VRAM is released before anything else asks for it.
    ordered = sorted(plan.slots, key=lambda d: d.replicas)
    for decision in ordered:
        key = (decision.namespace, decision.name)
        try:
            if decision.deployment is not None and not _deployment_matches(decision, view):
                manifest = decision.deployment
                observed = _observed_deployment(decision, view)
                if observed is not None and decision.replicas > 0:
                    # Scale up only the Deployment we saw: if the garbage collector
                    # removed it since (its slot was deleted), the apply fails
                    # instead of creating it again beside pods still terminating.
                    manifest = {**manifest, "metadata": {
                        **manifest["metadata"], "resourceVersion": observed.resource_version}}
                kube.apply(api, manifest)
                writes.append(f"deployment {key[0]}/{key[1]} replicas="
                              f"{decision.deployment['spec']['replicas']}")
            if decision.service is not None and key not in view.services:
                kube.apply(api, decision.service)
                writes.append(f"service {key[0]}/{key[1]}")
            slot = stored.get(key)
            current = _stored_status(slot) if slot else {}
            if current != decision.status and key not in written:
                kube.apply_status(api, ModelSlot.crd, key[0], key[1], decision.status)
                writes.append(f"status {key[0]}/{key[1]} phase={decision.phase}")
        except ApiException as error:
            if error.status in (404, 409):
                # Changed or deleted meanwhile: plan again soon on what is new.
                writes.append(f"conflict on {key[0]}/{key[1]} ({error.status}), replanning")
                continue
            logger.warning("applying %s/%s failed: %s %s", key[0], key[1], error.status,
                           error.reason)
    for workload in plan.workloads:
        writes += _act_workload(api, workload, view)
    for policy in plan.policies:
        writes += _act_policy(api, policy, status_written)
    for event in plan.events:
        post_event(api, event, now)
        writes.append(f"event {event.reason} {event.namespace}/{event.name}")
    return writes


def _stored_status(slot: SlotInfo) -> dict[str, Any]:
    return slot.status.model_dump(by_alias=True, mode="json", exclude_none=True)


def _child_matches(decision: WorkloadDecision, view: View) -> bool:
    observed = next((c for c in view.workload_children
                     if (c.namespace, c.owner) == (decision.namespace, decision.name)), None)
    desired = decision.child
    if observed is None or desired is None:
        return False
    node = desired["spec"]["template"]["spec"].get("nodeSelector", {}).get(
        "kubernetes.io/hostname")
    return (observed.active == decision.active and observed.node == node
            and observed.template_hash == template_hash(desired["spec"]["template"]))


def _act_workload(api: client.ApiClient, decision: WorkloadDecision, view: View) -> list[str]:
    writes: list[str] = []
    key = f"{decision.namespace}/{decision.name}"
    stored = next((w for w in view.workloads
                   if (w.namespace, w.name) == (decision.namespace, decision.name)), None)
    child = next((c for c in view.workload_children
                  if (c.namespace, c.owner) == (decision.namespace, decision.name)), None)
    try:
        if decision.recreate_child and child is not None:
            kube.delete_child(api, child.kind, decision.namespace, decision.name)
            writes.append(f"deleted {child.kind.lower()} {key} (template changed)")
        elif decision.child is not None and not _child_matches(decision, view):
            kube.apply(api, decision.child)
            writes.append(f"{decision.child['kind'].lower()} {key} active={decision.active}")
        current = stored.status.model_dump(by_alias=True, mode="json", exclude_none=True) \
            if stored else {}
        if current != decision.status:
            kube.apply_status(api, GpuWorkload.crd, decision.namespace, decision.name,
                              decision.status)
            writes.append(f"status {key} phase={decision.phase}")
    except ApiException as error:
        if error.status != 404:
            logger.warning("applying %s failed: %s %s", key, error.status, error.reason)
    return writes


def _act_policy(api: client.ApiClient, decision: PolicyDecision,
                status_written: Callable[[PolicyDecision], None] | None) -> list[str]:
    """ConfigMap first, then the Deployment that loads it, then the status; the
    status carries reported spend, so it is written last, once the rest held."""
    writes: list[str] = []
    key = f"{decision.namespace}/{decision.name}"
    try:
        if decision.config_map is not None:
            kube.apply(api, decision.config_map)
            writes.append(f"configmap {decision.namespace}/"
                          f"{decision.config_map['metadata']['name']} "
                          f"config={(decision.config_hash or '')[:12]}")
        if decision.litellm_patch is not None:
            kube.apply(api, decision.litellm_patch)
            writes.append(f"deployment {decision.namespace}/"
                          f"{decision.litellm_patch['metadata']['name']} "
                          f"config={(decision.config_hash or '')[:12]}")
        current = decision.policy.status.model_dump(by_alias=True, mode="json",
                                                    exclude_none=True)
        if current != decision.status:
            kube.apply_status(api, RoutePolicy.crd, decision.namespace, decision.name,
                              decision.status)
            writes.append(f"status routepolicy {key}")
            if status_written is not None:
                status_written(decision)
    except ApiException as error:
        if error.status not in (404, 409):
            logger.warning("applying RoutePolicy %s failed: %s %s", key, error.status,
                           error.reason)
        writes.append(f"conflict on routepolicy {key} ({error.status}), replanning")
    return writes


def post_event(api: client.ApiClient, event: EventIntent, now: datetime.datetime) -> None:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{event.name}.", "namespace": event.namespace},
        "involvedObject": {"apiVersion": API_VERSION, "kind": event.kind,
                           "name": event.name, "namespace": event.namespace},
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": {"component": REPORTING_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": REPORTING_COMPONENT,
        "firstTimestamp": now.isoformat().replace("+00:00", "Z"),
        "lastTimestamp": now.isoformat().replace("+00:00", "Z"),
        "count": 1,
    }
    try:
        client.CoreV1Api(api).create_namespaced_event(event.namespace, body)
    except ApiException as error:
        logger.warning("posting event %s on %s/%s failed: %s", event.reason,
                       event.namespace, event.name, error.status)
