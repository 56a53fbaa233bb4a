"""The GPU ledger a plan fills in: what each device holds now, what the plan
reserves on it, and whether starting a consumer (a ModelSlot or a GpuWorkload)
there keeps the budget and the large-consumer mutex (break-before-make). Where a
consumer is placed is :mod:`.placement`'s."""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from hybrid_compute.api.units import gib
from hybrid_compute.plan.outputs import GpuSummary
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
    foreign_names: tuple[str, ...] = ()
    """How reasons name those processes (:attr:`~.view.ForeignProcess.label`)."""
    held: int = 0
    """Bytes held now by existing pods and children still asking for pods."""
    slot_held: int = 0
    """The part of ``held`` that ModelSlots' pods and Deployments hold: models."""
    reserved: int = 0
    """Bytes the plan assigns to wanted consumers."""
    holders: list[str] = field(default_factory=list)
    residents: list[str] = field(default_factory=list)
    large_holders: list[str] = field(default_factory=list)
    """Holders above the mutex size."""
    large_residents: list[str] = field(default_factory=list)
    """Placed consumers above the mutex size."""
    reservations: list[str] = field(default_factory=list)
    """Placed reservations (:mod:`.reservations`): the room they take is not a
    consumer's to give back, whatever its size."""

    @property
    def free_for_plan(self) -> int:
        return self.capacity - self.reserved


def parse_gpu_ids(recorded: str | None) -> list[str]:
    """The GPU ids of a comma-joined ``status.gpu``; none for an empty one."""
    return recorded.split(",") if recorded else []


def gpu_label(gpu_ids: Iterable[str]) -> str:
    """``status.gpu`` for the given GPU ids."""
    return ",".join(gpu_ids)


def located_gpus(gpus: dict[str, Gpu], recorded: str | None, nodes: Collection[str],
                 gpu_count: int) -> list[str]:
    """The GPUs something that exists sits on: its recorded GPUs on the nodes its pods
    run on, else the first ``gpu_count`` GPUs of those nodes; none when neither says."""
    placed = [g for g in parse_gpu_ids(recorded)
              if g in gpus and (not nodes or gpus[g].node.name in nodes)]
    if placed or not nodes:
        return placed
    return [g for g in gpus if gpus[g].node.name in nodes][:gpu_count]


def build_gpus(view: View) -> dict[str, Gpu]:
    gpus: dict[str, Gpu] = {}
    for node in sorted(view.nodes, key=lambda n: n.name):
        for gpu_id in node.gpu_ids():
            foreign = view.foreign_vram.get(gpu_id, 0)
            capacity = node.gpu_memory_bytes - view.settings.headroom_bytes - foreign
            gpus[gpu_id] = Gpu(gpu_id, node, max(capacity, 0), exclusive=not node.time_sliced,
                               foreign=foreign, foreign_names=tuple(
                                   p.label for p in view.foreign_processes.get(gpu_id, ())))
    return gpus


def fit_problem(gpu_count: int, vram: int, gpus: dict[str, Gpu], node_name: str | None = None
                ) -> str | None:
    """Why a consumer can never fit any GPU (of ``node_name``, when given; with the
    numbers), or None. Memory of foreign processes does not count here: it comes and
    goes, so a consumer it crowds out waits for room instead of being called too
    large."""
    if not gpus:
        return "no node advertises nvidia.com/gpu"
    per_device = vram // gpu_count
    best: Gpu | None = None
    for gpu in gpus.values():
        node = gpu.node
        if node_name is not None and node.name != node_name:
            continue
        if gpu_count > 1 and (node.time_sliced or node.gpu_count < gpu_count):
            continue
        if per_device <= gpu.capacity + gpu.foreign:
            return None
        if best is None or gpu.capacity + gpu.foreign > best.capacity + best.foreign:
            best = gpu
    if best is None and node_name is not None:
        return f"node {node_name} advertises no nvidia.com/gpu"
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


_free_for_plan = operator.attrgetter("free_for_plan")


def most_free(gpus: dict[str, Gpu]) -> tuple[int, str | None]:
    """The most any GPU has left in this plan, and which GPU that is."""
    best = max(gpus.values(), key=_free_for_plan, default=None)
    return (best.free_for_plan, best.id) if best else (0, None)


def reserve(gpus: dict[str, Gpu], chosen: list[str], per_device: int, resident: str,
            mutex_bytes: int) -> None:
    """Assigns ``per_device`` bytes of each chosen GPU to a placed consumer."""
    for gpu_id in chosen:
        gpu = gpus[gpu_id]
        gpu.reserved += per_device
        gpu.residents.append(resident)
        if per_device > mutex_bytes:
            gpu.large_residents.append(resident)


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


def summarize(gpus: dict[str, Gpu]) -> tuple[GpuSummary, ...]:
    """What the plan reports per GPU."""
    return tuple(GpuSummary(g.id, g.capacity, g.reserved, g.held, tuple(g.residents),
                            g.foreign, g.foreign_names, g.slot_held)
                 for g in gpus.values())
