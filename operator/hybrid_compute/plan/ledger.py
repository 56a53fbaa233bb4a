"""The GPU ledger a plan fills in: what each device holds now, what the plan
reserves on it, and the rules for placing a consumer (a ModelSlot or a
GpuWorkload) there — VRAM, whole devices, and the large-consumer mutex."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hybrid_compute.api.units import gib
from hybrid_compute.plan.view import GpuNode, View


@dataclass(slots=True)
class Gpu:
    """One device during a plan."""

    id: str
    node: GpuNode
    capacity: int
    exclusive: bool
    foreign: int = 0
    """Bytes held by processes that are not the operator's (GPU agent); already
    taken off ``capacity``, kept to name them in reasons."""
    held: int = 0
    """Bytes held now by existing pods and children still asking for pods."""
    reserved: int = 0
    """Bytes the plan assigns to wanted consumers."""
    holders: list[str] = field(default_factory=list)
    residents: list[str] = field(default_factory=list)
    large_holders: list[str] = field(default_factory=list)
    """Holders above the mutex size."""
    large_residents: list[str] = field(default_factory=list)
    """Placed consumers above the mutex size."""

    @property
    def free_for_plan(self) -> int:
        return self.capacity - self.reserved


@dataclass(slots=True)
class Candidate:
    """A consumer that wants GPU memory in this plan, and its place in the queue."""

    kind: str
    key: tuple[str, str]
    label: str
    """How reasons name it: the alias of a slot, the name of a workload."""
    vram: int
    gpus: int
    rank: tuple[Any, ...]
    current_gpus: list[str]
    is_default: bool = False
    running: bool = False
    """Its pods exist on ``current_gpus``."""


def build_gpus(view: View) -> dict[str, Gpu]:
    gpus: dict[str, Gpu] = {}
    for node in sorted(view.nodes, key=lambda n: n.name):
        for gpu_id in node.gpu_ids():
            foreign = view.foreign_vram.get(gpu_id, 0)
            capacity = node.gpu_memory_bytes - view.settings.headroom_bytes - foreign
            gpus[gpu_id] = Gpu(gpu_id, node, max(capacity, 0), exclusive=not node.time_sliced,
                               foreign=foreign)
    return gpus


def fit_problem(gpu_count: int, vram: int, gpus: dict[str, Gpu]) -> str | None:
    """Why a consumer can never fit any GPU (with the numbers), or None. Memory of
    foreign processes does not count here: it comes and goes, so a consumer it
    crowds out waits for room instead of being called too large."""
    if not gpus:
        return "no node advertises nvidia.com/gpu"
    per_device = vram // gpu_count
    best: Gpu | None = None
    for gpu in gpus.values():
        node = gpu.node
        if gpu_count > 1 and (node.time_sliced or node.gpu_count < gpu_count):
            continue
        if per_device <= gpu.capacity + gpu.foreign:
            return None
        if best is None or gpu.capacity + gpu.foreign > best.capacity + best.foreign:
            best = gpu
    if best is None:
        return (f"needs {gpu_count} whole GPUs on one node; no node without time-slicing "
                f"has {gpu_count}")
    if gpu_count > 1:
        return (f"needs {gib(per_device)} on each of {gpu_count} GPUs, "
                f"{best.id} offers {gib(best.capacity + best.foreign)}")
    return f"needs {gib(vram)}, {best.id} offers {gib(best.capacity + best.foreign)}"


def record_holding(gpus: dict[str, Gpu], placed: list[str], held: int, gpu_count: int,
                   holder: str, mutex_bytes: int) -> None:
    per_device = held // max(gpu_count, 1)
    for gpu_id in placed:
        gpu = gpus[gpu_id]
        gpu.held += per_device
        gpu.holders.append(holder)
        if per_device > mutex_bytes:
            gpu.large_holders.append(holder)


def most_free(gpus: dict[str, Gpu]) -> tuple[int, str | None]:
    """The most any GPU has left in this plan, and which GPU that is."""
    best = max(gpus.values(), key=lambda g: g.free_for_plan, default=None)
    return (best.free_for_plan, best.id) if best else (0, None)


def choose_gpus(candidate: Candidate, gpus: dict[str, Gpu], by_node: list[list[Gpu]],
                mutex_bytes: int, free_bound: int) -> list[str] | None:
    """GPUs with room for the candidate, preferring where it already is.
    ``free_bound`` is the most any GPU has left (:func:`most_free`): a candidate
    larger than that is turned away without looking at every device."""
    per_device = candidate.vram // candidate.gpus
    if per_device > free_bound:
        return None
    large = per_device > mutex_bytes

    def fits(gpu: Gpu) -> bool:
        if gpu.exclusive and gpu.residents:
            return False
        if large and gpu.large_residents:
            return False
        return gpu.free_for_plan >= per_device

    current = candidate.current_gpus
    if current and len(current) == candidate.gpus and all(fits(gpus[g]) for g in current):
        return current
    if candidate.running:
        # A running pod cannot change devices: it keeps its place or gives it up.
        return None
    if candidate.gpus == 1:
        # Shared (time-sliced) devices before whole ones, which a small consumer
        # would waste; among those, the emptiest, so fewer consumers give way.
        best: Gpu | None = None
        for devices in by_node:
            for gpu in devices:
                if gpu.capacity - gpu.reserved < per_device or not fits(gpu):
                    continue
                if best is None or (gpu.exclusive, gpu.held) < (best.exclusive, best.held):
                    best = gpu
                    if not gpu.exclusive and gpu.held == 0:
                        return [best.id]  # nothing can beat an empty shared device
        return [best.id] if best else None
    for devices in by_node:
        if devices[0].node.time_sliced:
            continue
        free = [g.id for g in devices if fits(g)]
        if len(free) >= candidate.gpus:
            return free[: candidate.gpus]
    return None


def reserve(gpus: dict[str, Gpu], chosen: list[str], candidate: Candidate,
            mutex_bytes: int) -> None:
    per_device = candidate.vram // candidate.gpus
    for gpu_id in chosen:
        gpu = gpus[gpu_id]
        gpu.reserved += per_device
        gpu.residents.append(candidate.label)
        if per_device > mutex_bytes:
            gpu.large_residents.append(candidate.label)


def start_blockers(gpus: dict[str, Gpu], placed: list[str], per_device: int, own_name: str,
                   own_share: int, mutex_bytes: int) -> list[Gpu]:
    """GPUs where starting now would break the budget or the mutex, counting
    everything that exists (break-before-make)."""
    blocked = []
    for gpu_id in placed:
        gpu = gpus[gpu_id]
        over_budget = gpu.held - own_share + per_device > gpu.capacity
        mutex_taken = per_device > mutex_bytes and any(
            holder != own_name for holder in gpu.large_holders)
        if over_budget or mutex_taken:
            blocked.append(gpu)
    return blocked


def start(gpus: dict[str, Gpu], placed: list[str], per_device: int, name: str,
          mutex_bytes: int) -> None:
    """Counts a consumer that is being started as holding its memory already."""
    record_holding(gpus, placed, per_device * len(placed), len(placed), name, mutex_bytes)
