"""Every write of the control loop: server-side apply under one field manager, the
deletion of a workload's child, and Events.

The one other writer is :mod:`hybrid_compute.control.lease_elector`, which owns the
leader Lease and its optimistic-concurrency protocol.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from kubernetes import client, config
from kubernetes.config import kube_config

from hybrid_compute.api.common import API_VERSION, CrdInfo
from hybrid_compute.plan.outputs import EventIntent

FIELD_MANAGER = "hybrid-compute"
APPLY_PATCH = "application/apply-patch+yaml"
REPORTING_COMPONENT = "hybrid-compute"


def use_kubeconfig(path: str) -> None:
    """Makes ``path`` the kubeconfig of every client of this process, kopf's login
    included. The client library reads ``$KUBECONFIG`` into its default once, when
    it is imported, so setting the variable later is not enough."""
    os.environ["KUBECONFIG"] = path
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path


def load_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig file, ``$KUBECONFIG``, or the pod's account."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def apply(api: client.ApiClient, manifest: dict[str, Any],
          resource_version: str | None = None) -> int:
    """Server-side applies a Deployment, Service, Job or ConfigMap; with
    ``resource_version``, only while the object is at that version (409 otherwise,
    404 when it is gone). Returns the version the object is at now."""
    if resource_version is not None:
        manifest = {**manifest, "metadata": {**manifest["metadata"],
                                             "resourceVersion": resource_version}}
    metadata = manifest["metadata"]
    options = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
    if manifest["kind"] == "Deployment":
        applied: Any = client.AppsV1Api(api).patch_namespaced_deployment(
            metadata["name"], metadata["namespace"], manifest, **options)
    elif manifest["kind"] == "Service":
        applied = client.CoreV1Api(api).patch_namespaced_service(
            metadata["name"], metadata["namespace"], manifest, **options)
    elif manifest["kind"] == "ConfigMap":
        applied = client.CoreV1Api(api).patch_namespaced_config_map(
            metadata["name"], metadata["namespace"], manifest, **options)
    elif manifest["kind"] == "Job":
        applied = client.BatchV1Api(api).patch_namespaced_job(
            metadata["name"], metadata["namespace"], manifest, **options)
    else:
        raise ValueError(f"cannot apply kind {manifest['kind']}")
    return int(applied.metadata.resource_version or 0)


def apply_status(api: client.ApiClient, crd: CrdInfo, namespace: str, name: str,
                 status: dict[str, Any]) -> int:
    """Server-side applies ``status`` (only the fields this manager owns) to an object;
    returns the version the object is at now."""
    body = {"apiVersion": API_VERSION, "kind": crd.kind,
            "metadata": {"name": name, "namespace": namespace}, "status": status}
    group, version = API_VERSION.split("/")
    applied = client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        group, version, namespace, crd.plural, name, body,
        field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH,
    )
    return int(applied["metadata"].get("resourceVersion") or 0)


def delete_child(api: client.ApiClient, kind: str, namespace: str, name: str) -> None:
    """Deletes a Job or Deployment and, in the background, its pods."""
    body = client.V1DeleteOptions(propagation_policy="Background")
    if kind == "Job":
        client.BatchV1Api(api).delete_namespaced_job(name, namespace, body=body)
    else:
        client.AppsV1Api(api).delete_namespaced_deployment(name, namespace, body=body)


def _involved(event: EventIntent) -> dict[str, str]:
    """The object an Event is about: one of the operator's kinds, or a Node (which has
    no namespace; its Events live in the namespace the intent names)."""
    if event.kind == "Node":
        return {"apiVersion": "v1", "kind": "Node", "name": event.name}
    return {"apiVersion": API_VERSION, "kind": event.kind, "name": event.name,
            "namespace": event.namespace}


def post_event(api: client.ApiClient, event: EventIntent, now: datetime.datetime) -> None:
    """Creates the Event ``event`` describes, stamped ``now``."""
    stamp = now.isoformat().replace("+00:00", "Z")
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{event.name}.", "namespace": event.namespace},
        "involvedObject": _involved(event),
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "source": {"component": REPORTING_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": REPORTING_COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    client.CoreV1Api(api).create_namespaced_event(event.namespace, body)
