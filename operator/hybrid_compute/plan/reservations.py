"""Reservations: GPU memory held for something that is not a pod of this cluster (a
game, a desktop session, a transcode), a GpuWorkload of kind ``Reservation``.

A reservation runs nothing. It is a consumer like the others: placed by rank
(priority class Household right after the pinned consumers, before every slot that
serves requests; Workload among the GPU workloads), and the slots and workloads
its place displaces give way by their own rules (a slot drains first, and is cut
only when its drain policy says so). Its lifecycle:

* **Queued** while it has no place (or is outside its schedule);
* **Admitted** once placed, while what it displaces drains and unloads (its status
  lists them in ``evicted``);
* **Running** once nothing else holds its memory: it holds from then on, and the
  ledger counts it from its status (``gpu``), across operator restarts too;
  ``endsAt`` is the start plus ``duration``;
* **Succeeded** once ``endsAt`` has passed; a reservation without a duration holds
  until it is deleted. Either way the default slot takes the card back.

A reservation of ``wholeGpu`` takes a GPU that no one else is placed on, all of
what it offers.

**Foreign use is a reservation too.** Memory the GPU agent sees held by processes
that are not pods of this cluster (a desktop game, say) comes off the GPU's
capacity for as long as it lasts: nothing is placed in it, and what no longer fits
beside it drains and gives way as it would to a reservation that ranks above
everything (the memory is taken already). Each process the agent names, of at
least :data:`FOREIGN_EVENT_BYTES`, gets an Event on its node when it comes and
when it goes (:func:`foreign_events`), and reasons name it.
"""

from __future__ import annotations

import datetime
from typing import Any

from hybrid_compute.api.common import parse_bytes, parse_duration
from hybrid_compute.api.gpuworkload import RESERVATION, GpuWorkloadSpec
from hybrid_compute.api.units import MIB, gib
from hybrid_compute.plan.ledger import (
    Gpu,
    gpu_label,
    located_gpus,
    record_holding,
    start,
    start_blockers,
)
from hybrid_compute.plan.outputs import ACCEPTED, ConditionUpdate, EventIntent, ForeignUse
from hybrid_compute.plan.view import View, WorkloadInfo
from hybrid_compute.plan.windows import local_text, window_state
from hybrid_compute.plan.workload_turn import WorkloadDecision, WorkloadFindings, WorkloadTurn

FOREIGN_EVENT_BYTES = 512 * MIB
"""Foreign processes holding less (a desktop's compositor, a browser) count in the
GPU's capacity without an Event each time they come and go."""
NODE_EVENT_NAMESPACE = "default"
"""Events about a Node (cluster-scoped) go to this namespace, as the kubelet's do."""


def is_reservation(spec: GpuWorkloadSpec) -> bool:
    return spec.kind == RESERVATION


def label(workload: WorkloadInfo) -> str:
    """How the ledger and the reasons of others name a workload."""
    if workload.spec is not None and is_reservation(workload.spec):
        return f"reservation {workload.name}"
    return workload.name


def holding(workload: WorkloadInfo) -> bool:
    """A reservation that holds its memory now, by its status."""
    spec = workload.spec
    return (spec is not None and is_reservation(spec) and workload.status.phase == "Running"
            and bool(workload.status.gpu))


def ended(workload: WorkloadInfo, now: datetime.datetime) -> bool:
    """A reservation whose duration has run out."""
    ends_at = workload.status.ends_at
    return (workload.spec is not None and is_reservation(workload.spec)
            and workload.spec.duration is not None and ends_at is not None and now >= ends_at)


def candidate_size(spec: GpuWorkloadSpec, gpus: dict[str, Gpu]) -> tuple[int, bool]:
    """What a consumer asks for before it is placed, and whether that is a whole GPU
    (its size is the GPU's, 0 until then). A reservation larger than what a GPU
    offers beside the operator's headroom, but no larger than the GPU, takes all of
    it: ``--vram 24Gi`` on a 24 GiB card keeps everything of the operator's off it."""
    if spec.vram is None:
        return 0, True
    vram = parse_bytes(spec.vram)
    if is_reservation(spec) and any(
            gpu.capacity + gpu.foreign < vram <= gpu.node.gpu_memory_bytes
            and spec.node in (None, gpu.node.name) for gpu in gpus.values()):
        return 0, True
    return vram, False


def held_bytes(spec: GpuWorkloadSpec, gpu: Gpu) -> int:
    """What a reservation holds on ``gpu``."""
    if spec.vram is None:
        return gpu.capacity
    return min(parse_bytes(spec.vram), gpu.capacity)


def describe_size(spec: GpuWorkloadSpec, gpu: Gpu) -> str:
    size = held_bytes(spec, gpu)
    whole = spec.vram is None or parse_bytes(spec.vram) > size
    return f"the whole GPU ({gib(size)})" if whole else gib(size)


def moment_text(moment: datetime.datetime) -> str:
    return f"{moment.astimezone(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"


def record_holdings(view: View, gpus: dict[str, Gpu], mutex_bytes: int
                    ) -> dict[tuple[str, str], list[str]]:
    """Counts the reservations that hold now on their recorded GPUs."""
    held: dict[tuple[str, str], list[str]] = {}
    for workload in view.workloads:
        spec = workload.spec
        if spec is None or not holding(workload):
            continue
        placed = located_gpus(gpus, workload.status.gpu, (), 1) or list(gpus)
        for gpu_id in placed:
            record_holding(gpus, [gpu_id], held_bytes(spec, gpus[gpu_id]), 1, label(workload),
                           mutex_bytes)
        held[workload.key] = placed
    return held


def decide(turn: WorkloadTurn, spec: GpuWorkloadSpec, gpus: dict[str, Gpu],
           findings: WorkloadFindings) -> WorkloadDecision:
    """One reservation's phase, reason and status."""
    workload, now = turn.workload, turn.now
    key = workload.key
    if ended(workload, now):
        ends_at = workload.status.ends_at
        assert ends_at is not None
        reason = f"ended at {moment_text(ends_at)}"
        return turn.decide("Succeeded", reason, False,
                           [ACCEPTED, ConditionUpdate("Finished", True, "Ended", reason),
                            ConditionUpdate("Admitted", False, "Finished", reason)],
                           manage_child=False)
    if key in findings.verdicts.too_large:
        message = f"can never fit: {findings.verdicts.too_large[key]}"
        return turn.decide("Queued", message, False,
                           [ACCEPTED, ConditionUpdate("Fits", False, "TooLarge", message),
                            ConditionUpdate("Admitted", False, "TooLarge", message)])
    placed = findings.placement.get(key)
    if placed is None:
        # Outside its schedule a reservation waits for its next window; it was not
        # preempted.
        held = holding(workload)
        return turn.not_placed(findings, held, held and key not in findings.verdicts.queued)
    return _placed(turn, spec, gpus, findings, placed)


def _placed(turn: WorkloadTurn, spec: GpuWorkloadSpec, gpus: dict[str, Gpu],
            findings: WorkloadFindings, placed: list[str]) -> WorkloadDecision:
    """A placed reservation holds once nothing else holds its memory."""
    workload, previous, now = turn.workload, turn.workload.status, turn.now
    own = label(workload)
    gpu = gpus[placed[0]]
    where = gpu_label(placed)
    size = describe_size(spec, gpu)
    updates: dict[str, Any] = {"held_vram": size}
    starting = not holding(workload)
    if starting:
        leaving = findings.departures.evicted_from(placed, own)
        earlier = (previous.evicted or []) if previous.phase == "Admitted" else []
        updates["evicted"] = sorted({*earlier, *leaving}) or None
        blocked = start_blockers(gpus, placed, held_bytes(spec, gpu), own, 0,
                                 turn.settings.mutex_bytes)
        if blocked:
            holders = sorted({h for g in blocked for h in g.holders if h != own})
            reason = f"admitted; waiting for {', '.join(holders)} to release {where}"
            return turn.decide("Admitted", reason, False, _conditions(size, reason),
                               gpu=where, node=gpu.node.name, status_updates=updates)
        start(gpus, placed, held_bytes(spec, gpu), own, turn.settings.mutex_bytes)
        updates["admitted_at"] = now
        updates["ends_at"] = (now + parse_duration(spec.duration) if spec.duration
                              else None)
    ends_at = updates["ends_at"] if starting else previous.ends_at
    reason = f"holding {size} on {where} until {_end_text(spec, ends_at, now)}"
    if starting:
        evicted = updates["evicted"]
        turn.event("Normal", "Reserved", reason[:1].upper() + reason[1:]
                   + (f"; evicted {', '.join(evicted)}" if evicted else ""))
    return turn.decide("Running", reason, True, _conditions(size, reason), gpu=where,
                       node=gpu.node.name, status_updates=updates)


def _end_text(spec: GpuWorkloadSpec, ends_at: datetime.datetime | None,
              now: datetime.datetime) -> str:
    if ends_at is not None:
        return moment_text(ends_at)
    if spec.schedule is not None:
        closes = window_state(spec.schedule, now).next_change
        return f"its window closes at {local_text(closes, spec.schedule.time_zone)}"
    return "deleted"


def _conditions(size: str, reason: str) -> list[ConditionUpdate]:
    return [ACCEPTED, ConditionUpdate("Fits", True, "Fits", f"needs {size}"),
            ConditionUpdate("Admitted", True, "Admitted", reason),
            ConditionUpdate("Preempted", False, "Admitted", reason)]


def foreign_uses(view: View) -> tuple[ForeignUse, ...]:
    """The named foreign processes large enough to be announced, per GPU of a known
    node."""
    nodes = {node.name for node in view.nodes}
    found = []
    for gpu_id, processes in sorted(view.foreign_processes.items()):
        node = gpu_id.rsplit("/", 1)[0]
        if node in nodes:
            # Memory the agent could not attribute has no process to name, and comes
            # and goes with the operator's own loads: it counts, without Events.
            found += [ForeignUse(gpu_id, node, p) for p in processes
                      if p.pid is not None and p.bytes >= FOREIGN_EVENT_BYTES]
    return tuple(found)


def foreign_events(view: View, uses: tuple[ForeignUse, ...]) -> list[EventIntent]:
    """An Event on the node for each foreign process that came since the last plan,
    and one for each that went."""
    current = {(use.gpu, use.process.key): use for use in uses}
    announced = {(gpu, key): name for gpu, key, name in view.foreign_announced}
    events = [EventIntent(
        NODE_EVENT_NAMESPACE, use.node, "Normal", "ForeignGpuUse",
        f"{use.process.label} holds {gib(use.process.bytes)} of {use.gpu} outside "
        f"hybrid-compute: planned as a reservation of that size while it lasts", "Node")
        for key, use in sorted(current.items()) if key not in announced]
    events += [EventIntent(
        NODE_EVENT_NAMESPACE, gpu.rsplit("/", 1)[0], "Normal", "ForeignGpuUseEnded",
        f"{name} no longer holds memory on {gpu}: its reservation ended", "Node")
        for (gpu, key), name in sorted(announced.items()) if (gpu, key) not in current]
    return events
