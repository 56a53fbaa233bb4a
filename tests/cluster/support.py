"""Helpers shared by the cluster tests of slots and workloads."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from kubernetes import client

from hybrid_compute.api.labels import SLOT_LABEL, VRAM_ANNOTATION
from hybrid_compute.api.units import GIB, MIB
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME
from tests.conftest import TestCluster

BUDGET = 24576 * MIB - GIB  # an RTX 3090 less the operator's default headroom
MUTEX = 10 * GIB
DELAYS = {"pod-ready.stage.kwok.x-k8s.io/delay": "1s",
          "pod-delete.stage.kwok.x-k8s.io/delay": "2s"}


def slot(name: str, alias: str, vram: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hybridcompute.io/v1alpha1",
        "kind": "ModelSlot",
        "metadata": {"name": name},
        "spec": {"alias": alias, "model": {"path": f"{name}.gguf", "vram": vram},
                 "podAnnotations": DELAYS, "minResidency": "1s", **spec},
    }


def alias(namespace: str, name: str) -> str:
    """Aliases are cluster-wide, and the operator remembers demands per alias: each
    test gets its own."""
    return f"local/{name}-{namespace.rsplit('-', 1)[-1]}"


def seed_slots(namespace: str, idle: str = "5m") -> list[dict[str, Any]]:
    return [
        slot("fast", alias(namespace, "fast"), "7Gi", default=True, fallback="cloud/fast"),
        slot("quality", alias(namespace, "quality"), "20Gi", activation="OnDemand",
             idleTimeout=idle, priority=200, fallback="cloud/mid"),
        slot("embed", alias(namespace, "embed"), "1Gi", device="cpu", embedding=True,
             model={"path": "embed.gguf"}),
    ]


class VramSampler:
    """Sums the VRAM annotations of every GPU pod on dreamteam, every 50 ms."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.samples = 0
        self.peak = 0
        self.breaches: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pods = [p for p in self.core.list_pod_for_all_namespaces().items
                    if p.spec.node_name == DEFAULT_NODE_NAME
                    and p.status.phase not in ("Succeeded", "Failed")
                    and VRAM_ANNOTATION in (p.metadata.annotations or {})]
            sizes = {p.metadata.name: int(p.metadata.annotations[VRAM_ANNOTATION])
                     for p in pods}
            held = sum(sizes.values())
            large = sorted(name for name, size in sizes.items() if size > MUTEX)
            self.samples += 1
            self.peak = max(self.peak, held)
            if held > BUDGET:
                self.breaches.append(f"{held / GIB:.1f} GiB held by {sorted(sizes)}")
            if len(large) > 1:
                self.breaches.append(f"two consumers above the mutex size at once: {large}")
            self._stop.wait(0.05)

    def __enter__(self) -> VramSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        print(f"VRAM sampler: {self.samples} samples, peak {self.peak / GIB:.1f} GiB "
              f"of {BUDGET / GIB:.1f} GiB")
        assert self.samples > 10, "the sampler barely ran"
        assert not self.breaches, f"GPU invariants broken: {self.breaches[:3]}"


def read(k8s: TestCluster, namespace: str, name: str, plural: str = "modelslots"
         ) -> dict[str, Any]:
    result: dict[str, Any] = k8s.custom.get_namespaced_custom_object(
        "hybridcompute.io", "v1alpha1", namespace, plural, name)
    return result


def phase(k8s: TestCluster, namespace: str, name: str, plural: str = "modelslots"
          ) -> str | None:
    return (read(k8s, namespace, name, plural).get("status") or {}).get("phase")


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_phases(k8s: TestCluster, namespace: str, expected: dict[str, str],
                timeout: float = 60) -> None:
    def reached() -> bool:
        return all(phase(k8s, namespace, name) == value for name, value in expected.items())
    try:
        wait(reached, timeout, f"phases {expected}")
    except AssertionError:
        seen = {name: phase(k8s, namespace, name) for name in expected}
        raise AssertionError(f"expected phases {expected}, saw {seen}") from None


def slot_pods(k8s: TestCluster, namespace: str, name: str) -> list[Any]:
    return list(k8s.core.list_namespaced_pod(
        namespace, label_selector=f"{SLOT_LABEL}={name}").items)


def deployment_replicas(k8s: TestCluster, namespace: str, name: str) -> int:
    return int(k8s.apps.read_namespaced_deployment(name, namespace).spec.replicas)


def apply(k8s: TestCluster, namespace: str, objects: list[dict[str, Any]]) -> None:
    for item in objects:
        item["metadata"]["namespace"] = namespace
    k8s.cluster.apply(objects)


def operator_healthy(port: int) -> bool:
    """The operator's health endpoint on ``port`` answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
