"""Who gets which GPU in this plan: consumers (ModelSlots and GpuWorkloads) in rank
order, each placed where it fits, the ones left over with the reason they wait, and
who gives way to whom.

The :class:`Rank` is the queue both kinds of consumer share: slots pinned by their
minimum residency and running non-preemptible workloads first; then Household
reservations (:mod:`.reservations`); then Always slots, requested slots and a
default slot in use; then GpuWorkloads by priority; then the idle default slot. Two
consumers above the mutex size never share a GPU.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, NamedTuple

from hybrid_compute.api.units import gib
from hybrid_compute.plan.holdings import Holdings, Key
from hybrid_compute.plan.ledger import Gpu, most_free, reserve
from hybrid_compute.plan.view import View

ConsumerKind = Literal["ModelSlot", "GpuWorkload"]


class Tier(IntEnum):
    """The first part of a rank: what a consumer is there for."""

    PINNED = 0
    """A slot within its minimum residency, a running non-preemptible workload."""
    HOUSEHOLD = 1
    """A Reservation of priority class Household: the card handed to the household."""
    WANTED = 2
    """An Always slot, a slot serving requests."""
    WORKLOAD = 3
    IDLE_DEFAULT = 4


class Rank(NamedTuple):
    """A consumer's place in the queue: lower goes first."""

    tier: Tier
    minus_priority: int
    """The consumer's priority, negated: a higher priority goes first."""
    displaced: int
    """0 for a consumer that runs (or holds memory) now, 1 for a newcomer."""
    since: datetime.datetime
    """When it was asked for: older first."""
    namespace: str
    name: str


@dataclass(slots=True)
class Candidate:
    """A consumer that wants GPU memory in this plan, and its place in the queue."""

    kind: ConsumerKind
    key: Key
    label: str
    """How reasons name it: the alias of a slot, the name of a workload."""
    vram: int
    gpus: int
    rank: Rank
    current_gpus: list[str]
    is_default: bool = False
    running: bool = False
    """Its pods exist on ``current_gpus``."""
    whole_gpu: bool = False
    """A Reservation of a whole GPU: it takes one nothing else is placed on, all of it
    (``vram`` is 0 until then)."""
    node: str | None = None
    """The only node it may go to."""
    reservation: bool = False
    """A GpuWorkload of kind Reservation."""

    @property
    def per_device(self) -> int:
        return self.vram // self.gpus


def choose_gpus(candidate: Candidate, gpus: dict[str, Gpu], by_node: list[list[Gpu]],
                mutex_bytes: int, free_bound: int, open_gpus: list[Gpu]) -> list[str] | None:
    """GPUs with room for the candidate, preferring where it already is.
    ``free_bound`` is the most any GPU has left (:func:`most_free`): a candidate
    larger than that is turned away without looking at every device. ``open_gpus``:
    the devices of ``by_node`` in the same order, less the whole (not time-sliced)
    ones a consumer has taken, which no one else may share."""
    per_device = candidate.vram // candidate.gpus
    if per_device > free_bound:
        return None
    large = per_device > mutex_bytes

    def fits(gpu: Gpu) -> bool:
        if candidate.node is not None and gpu.node.name != candidate.node:
            return False
        if candidate.whole_gpu:
            return not gpu.residents and gpu.reserved == 0 and gpu.capacity > 0
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
        anywhere = candidate.node is None and not candidate.whole_gpu
        for gpu in open_gpus:
            if gpu.capacity - gpu.reserved < per_device:
                continue
            if anywhere:
                # fits() without the call, for the many consumers it is asked about.
                if (gpu.exclusive and gpu.residents) or (large and gpu.large_residents):
                    continue
            elif not fits(gpu):
                continue
            exclusive = gpu.exclusive
            # (exclusive, held) below the best's, without a tuple per device.
            if (best is None or exclusive < best.exclusive
                    or (exclusive == best.exclusive and gpu.held < best.held)):
                best = gpu
                if not exclusive and gpu.held == 0:
                    return [best.id]  # nothing can beat an empty shared device
        return [best.id] if best else None
    for devices in by_node:
        if devices[0].node.time_sliced:
            continue
        free = [g.id for g in devices if fits(g)]
        if len(free) >= candidate.gpus:
            return free[: candidate.gpus]
    return None


@dataclass
class Placement:
    """Where each placed consumer goes, and why the others wait."""

    slots: dict[Key, list[str]] = field(default_factory=dict)
    workloads: dict[Key, list[str]] = field(default_factory=dict)
    slot_waiting: dict[Key, str] = field(default_factory=dict)
    """Slots that want a GPU and wait for room."""
    slot_standby: dict[Key, str] = field(default_factory=dict)
    """Idle default slots whose GPU another consumer takes."""
    workload_waiting: dict[Key, str] = field(default_factory=dict)

    def of(self, kind: ConsumerKind) -> dict[Key, list[str]]:
        return self.slots if kind == "ModelSlot" else self.workloads


def place(candidates: list[Candidate], gpus: dict[str, Gpu], mutex_bytes: int) -> Placement:
    """Places the candidates in rank order, reserving their memory on ``gpus``."""
    placement = Placement()
    ready_nodes: dict[str, list[Gpu]] = defaultdict(list)
    for gpu in gpus.values():
        if gpu.node.ready:
            ready_nodes[gpu.node.name].append(gpu)
    by_node = [devices for _name, devices in sorted(ready_nodes.items())]
    open_gpus = [gpu for devices in by_node for gpu in devices
                 if not (gpu.exclusive and gpu.residents)]
    free_bound, roomiest = most_free(gpus)
    # Once a placement takes from the roomiest device, the bound is worked out again
    # only when a waiting reason names that device: until then the old bound, which
    # can only be higher, still turns away whoever fits no device.
    bound_stale = False
    for candidate in sorted(candidates, key=lambda c: c.rank):
        chosen = choose_gpus(candidate, gpus, by_node, mutex_bytes, free_bound, open_gpus)
        if chosen is None:
            if bound_stale:
                (free_bound, roomiest), bound_stale = most_free(gpus), False
            _record_waiting(placement, candidate,
                            *waiting_reason(candidate, gpus, bool(by_node), roomiest,
                                            mutex_bytes))
            continue
        placement.of(candidate.kind)[candidate.key] = chosen
        per_device = (gpus[chosen[0]].free_for_plan if candidate.whole_gpu
                      else candidate.per_device)
        reserve(gpus, chosen, per_device, candidate.label, mutex_bytes)
        if any(gpus[gpu_id].exclusive for gpu_id in chosen):
            open_gpus[:] = [gpu for gpu in open_gpus if not (gpu.exclusive and gpu.residents)]
        if candidate.reservation:
            for gpu_id in chosen:
                gpus[gpu_id].reservations.append(candidate.label)
        if any(gpus[g].free_for_plan + per_device >= free_bound for g in chosen):
            bound_stale = True
    return placement


def waiting_reason(candidate: Candidate, gpus: dict[str, Gpu], any_node_ready: bool,
                   roomiest: str | None, mutex_bytes: int) -> tuple[str, str]:
    """Why a candidate found no place, and who holds the room it needs."""
    where = _named_gpus(candidate, gpus, roomiest)
    blockers = sorted({r for g in where for r in gpus[g].residents})
    # A large reservation takes its room as a reservation, not as a mutex holder.
    large = candidate.per_device > mutex_bytes and any(
        set(gpus[g].large_residents) - set(gpus[g].reservations) for g in where)
    foreign = max((gpus[g].foreign for g in where), default=0)
    if foreign:
        blockers.append(f"{foreign_text(gpus[g] for g in where)} outside hybrid-compute "
                        f"({gib(foreign)})")
    if not any_node_ready:
        blockers = ["no GPU node is Ready"]
    holders = ", ".join(blockers) or "other consumers"
    if candidate.whole_gpu:
        return f"waiting for a whole GPU, held by {holders}", holders
    if large:
        lock_holders = sorted({r for g in where for r in gpus[g].large_residents})
        return (f"waiting for the GPU mutex: {', '.join(lock_holders)} already "
                f"uses more than {gib(mutex_bytes)}"), holders
    return f"waiting for room: {gib(candidate.vram)} needed, held by {holders}", holders


def _named_gpus(candidate: Candidate, gpus: dict[str, Gpu], roomiest: str | None
                ) -> list[str]:
    """The GPUs whose holders a waiting candidate's reason names: where it is, else
    where it may go; of more than four, the roomiest alone (naming every resident of
    a large cluster helps nobody), found without listing every GPU."""
    where = candidate.current_gpus
    if not where:
        if candidate.node is None and len(gpus) > 4:
            return [roomiest] if roomiest else [next(iter(gpus))]
        where = [g for g in gpus if candidate.node in (None, gpus[g].node.name)]
    if len(where) > 4:
        return [roomiest] if roomiest else where[:1]
    return where


def foreign_text(devices: Iterable[Gpu]) -> str:
    """Who holds memory outside hybrid-compute on ``devices``: the processes by name
    where the GPU agent could tell them apart."""
    names = sorted({name for gpu in devices for name in gpu.foreign_names})
    return ", ".join(names) or "processes"


def _record_waiting(placement: Placement, candidate: Candidate, message: str,
                    holders: str) -> None:
    if candidate.kind != "ModelSlot":
        placement.workload_waiting[candidate.key] = message
    elif candidate.is_default and candidate.rank.tier != Tier.PINNED:
        placement.slot_standby[candidate.key] = f"standby: the GPU is taken by {holders}"
    else:
        placement.slot_waiting[candidate.key] = message


@dataclass
class Departures:
    """Who gives way to whom, for reasons and Events."""

    by_gpu: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """GPU id -> aliases and workloads leaving it."""
    slot_taken_by: dict[Key, str] = field(default_factory=dict)
    """Evicted slot -> who takes its place."""
    workload_taken_by: dict[Key, str] = field(default_factory=dict)

    def evicted_from(self, gpu_ids: Iterable[str], own_label: str) -> list[str]:
        """Who leaves the given GPUs, but the consumer itself."""
        return sorted({a for g in gpu_ids for a in self.by_gpu.get(g, []) if a != own_label})


def departures(view: View, candidates: list[Candidate], placement: Placement,
               holdings: Holdings) -> Departures:
    """The consumers that hold memory now and have no place in this plan."""
    newcomers: dict[str, list[str]] = defaultdict(list)
    for candidate in candidates:
        target = placement.of(candidate.kind).get(candidate.key)
        already = (holdings.slots if candidate.kind == "ModelSlot"
                   else holdings.workloads).get(candidate.key)
        if target and already != target:
            for gpu_id in target:
                newcomers[gpu_id].append(candidate.label)
    # Who takes a device, named once per device: many leave the same one.
    takers = {gpu_id: ", ".join(sorted(labels)) for gpu_id, labels in newcomers.items()}
    found = Departures()
    for slot in view.slots:
        if slot.key in holdings.slots and slot.key not in placement.slots and slot.spec:
            for gpu_id in holdings.slots[slot.key]:
                found.by_gpu[gpu_id].append(slot.spec.alias)
                if gpu_id in takers:
                    found.slot_taken_by[slot.key] = takers[gpu_id]
    for key, held_on in holdings.workloads.items():
        if key not in placement.workloads:
            for gpu_id in held_on:
                found.by_gpu[gpu_id].append(key[1])
                if gpu_id in takers:
                    found.workload_taken_by[key] = takers[gpu_id]
    return found
