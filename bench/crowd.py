"""Many OnDemand slots in Standby, for benchmarks that measure what a crowd costs."""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client

NAMESPACE = "crowd"


def slot(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"alias": f"local/{name}", "model": {"path": f"{name}.gguf",
                                                         "vram": "8Gi"}, **spec}}


def crowd(count: int) -> list[dict[str, Any]]:
    return [slot(f"standby-{index:04d}", activation="OnDemand", idleTimeout="5m")
            for index in range(count)]


def all_phased(custom: client.CustomObjectsApi, expected: int) -> bool:
    listed = custom.list_namespaced_custom_object("hybridcompute.io", "v1alpha1", NAMESPACE,
                                                  "modelslots")["items"]
    return len(listed) == expected and all((s.get("status") or {}).get("phase")
                                           for s in listed)


def settled(apps: client.AppsV1Api) -> bool:
    """Whether the Deployment controller has caught up with every crowd Deployment."""
    listed = apps.list_namespaced_deployment(NAMESPACE, _preload_content=False)
    return all((d.get("status") or {}).get("observedGeneration") == d["metadata"]["generation"]
               for d in json.loads(listed.data)["items"])


def wait_all_phased(api: client.ApiClient, expected: int, timeout: float = 600) -> None:
    """Until the ``expected`` slots of the crowd's namespace all have a phase and the
    Deployment controller has caught up with their Deployments."""
    custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    while not (all_phased(custom, expected) and settled(apps)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expected} slots did not all get a phase and settle in "
                               f"{timeout / 60:.0f} minutes")
        time.sleep(1)
