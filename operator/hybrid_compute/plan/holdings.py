"""What exists and what each GPU holds right now: the pods, Deployments and
workload children per owner, and the GPUs their memory sits on. Pods of deleted
objects count too: their memory is held until they are gone.

A status records its GPUs as one comma-joined string (``status.gpu``);
:func:`~.ledger.parse_gpu_ids` and :func:`~.ledger.gpu_label` are the one way to read
and write it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from hybrid_compute.plan.ledger import Gpu, located_gpus, record_holding
from hybrid_compute.plan.view import DeploymentInfo, PodInfo, View, WorkloadChild

Key = tuple[str, str]
"""(namespace, name) of a ModelSlot or a GpuWorkload."""


@dataclass(frozen=True)
class Owned:
    """What exists per owner (namespace, name of a ModelSlot or GpuWorkload)."""

    slot_pods: dict[Key, list[PodInfo]]
    workload_pods: dict[Key, list[PodInfo]]
    deployments: dict[Key, DeploymentInfo]
    workload_children: dict[Key, WorkloadChild]


def group_owned(view: View) -> Owned:
    slot_pods: dict[Key, list[PodInfo]] = defaultdict(list)
    workload_pods: dict[Key, list[PodInfo]] = defaultdict(list)
    for pod in view.pods:
        group = slot_pods if pod.kind == "ModelSlot" else workload_pods
        group[(pod.namespace, pod.owner)].append(pod)
    return Owned(slot_pods, workload_pods,
                 {(d.namespace, d.owner): d for d in view.deployments},
                 {(c.namespace, c.owner): c for c in view.workload_children})


@dataclass(frozen=True)
class Holdings:
    """Where each owner's existing pods (or children still asking for pods) hold
    memory. Something not scheduled yet, with no record, holds every GPU, so
    nothing else starts beside it."""

    slots: dict[Key, list[str]]
    workloads: dict[Key, list[str]]


def record_holdings(view: View, owned: Owned, gpus: dict[str, Gpu], mutex_bytes: int
                    ) -> Holdings:
    """Counts what exists on the GPUs of ``gpus`` and says where it sits."""
    return Holdings(_slot_holdings(view, owned, gpus, mutex_bytes),
                    _workload_holdings(view, owned, gpus, mutex_bytes))


def _slot_holdings(view: View, owned: Owned, gpus: dict[str, Gpu], mutex_bytes: int
                   ) -> dict[Key, list[str]]:
    held_gpus: dict[Key, list[str]] = {}
    # Only pods and Deployments hold memory: a slot with neither holds none. Most
    # slots of a large install hold nothing (a Deployment scaled to zero).
    holding: list[tuple[Key, int]] = []
    for key in owned.slot_pods.keys() | owned.deployments.keys():
        deployment = owned.deployments.get(key)
        asked = deployment.replicas * deployment.vram_bytes if deployment else 0
        held = max(sum(p.vram_bytes for p in owned.slot_pods.get(key, ())), asked)
        if held:
            holding.append((key, held))
    slots_by_key = {slot.key: slot for slot in view.slots} if holding else {}
    for key, held in sorted(holding):
        slot = slots_by_key.get(key)
        pods = owned.slot_pods.get(key, [])
        gpu_count = max([p.gpus for p in pods] + [1])
        placed = located_gpus(gpus, slot.status.gpu if slot else None,
                              {p.node for p in pods if p.node}, gpu_count) or list(gpus)
        held_gpus[key] = placed
        record_holding(gpus, placed, held, gpu_count, key[1], mutex_bytes)
        for gpu_id in placed:
            gpus[gpu_id].slot_held += held // gpu_count
    return held_gpus


def _workload_holdings(view: View, owned: Owned, gpus: dict[str, Gpu], mutex_bytes: int
                       ) -> dict[Key, list[str]]:
    held_gpus: dict[Key, list[str]] = {}
    workloads_by_key = {w.key: w for w in view.workloads}
    children = owned.workload_children
    # Only pods and active children hold memory: a workload with neither holds none.
    for key in sorted(owned.workload_pods.keys() | children.keys()):
        workload = workloads_by_key.get(key)
        pods = owned.workload_pods.get(key, [])
        child = children.get(key)
        asked = child.vram_bytes if child and child.active else 0
        held = max(sum(p.vram_bytes for p in pods if p.gpus), asked)
        if held == 0:
            continue
        nodes = {p.node for p in pods if p.node} or ({child.node} if child and child.node
                                                     else set())
        placed = located_gpus(gpus, workload.status.gpu if workload else None,
                              nodes, 1) or list(gpus)
        held_gpus[key] = placed
        record_holding(gpus, placed, held, 1, key[1], mutex_bytes)
    return held_gpus
