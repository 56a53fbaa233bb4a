"""Many OnDemand slots in Standby, for benchmarks that measure what a crowd costs."""

from __future__ import annotations

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


def wait_all_phased(custom: client.CustomObjectsApi, expected: int,
                    timeout: float = 600) -> None:
    """Until the ``expected`` slots of the crowd's namespace all have a phase."""
    deadline = time.monotonic() + timeout
    while not all_phased(custom, expected):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expected} slots did not all get a phase in "
                               f"{timeout / 60:.0f} minutes")
        time.sleep(1)
