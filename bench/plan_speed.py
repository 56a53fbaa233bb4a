"""How long ``plan`` takes for a large install: 1,000 slots and workloads over
64 GPUs (800 ModelSlots, 200 GpuWorkloads, some with time windows), and ten times
as many objects over the same GPUs.

The view is built once (as the operator's loop keeps its parsed objects) and
planned repeatedly with a moving clock and fresh demands, as the loop does; the
first plan, which renders every pod template, is reported apart. Wall time and
the process's CPU time are both reported: on a shared machine the CPU figure is
the steadier one.
Targets: the median steady-state plan takes at most 10 ms, and the 10,000-object
median at most 12 times the 1,000-object one (the cost grows linearly).
"""

from __future__ import annotations

import datetime
import gc
import random
import statistics
import time

from hybrid_compute.api.gpuworkload import GpuWorkloadSpec
from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.api.units import MIB
from hybrid_compute.plan import plan
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.view import GpuNode, PodInfo, SlotInfo, View, WorkloadInfo

TARGET_MS = 10.0
TARGET_GROWTH = 12.0
NODES = 16
GPUS_PER_NODE = 4
SLOTS = 800
WORKLOADS = 200
SCALE = 10
"""The large case: this many times the slots and workloads, over the same GPUs."""


def build_view(seed: int = 7, slot_count: int = SLOTS, workload_count: int = WORKLOADS
               ) -> View:
    rng = random.Random(seed)
    nodes = tuple(GpuNode(f"node-{n:02d}", GPUS_PER_NODE, 24576 * MIB,
                          replicas=4 if n % 2 == 0 else 1, allocatable=16)
                  for n in range(NODES))
    slots = []
    pods = []
    for index in range(slot_count):
        on_demand = rng.random() < 0.7
        spec = {"alias": f"local/m{index}",
                "model": {"path": f"m{index}.gguf", "vram": f"{rng.choice([1, 2, 4, 7, 12])}Gi"},
                "priority": rng.randint(0, 300),
                "device": "cpu" if rng.random() < 0.1 else "gpu"}
        if on_demand:
            spec.update(activation="OnDemand", idleTimeout="5m")
        elif index < NODES and spec["device"] == "gpu":
            spec["default"] = True
        slot = SlotInfo("bench", f"m{index}", f"uid-{index}", 1,
                        ModelSlotSpec.model_validate(spec))
        slots.append(slot)
        if rng.random() < 0.05:
            pods.append(PodInfo(f"m{index}-pod", "bench", f"m{index}",
                                f"node-{rng.randrange(NODES):02d}", 2 * 1024**3, 1,
                                "stale", ready=True, terminating=rng.random() < 0.5))
    workloads = []
    for index in range(workload_count):
        spec = {"class": rng.choice(["TTS", "ImageGeneration", "FineTuning", "Other"]),
                "vram": f"{rng.choice([2, 4, 8, 11, 20])}Gi",
                "preemptible": rng.random() < 0.9,
                "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}}
        if rng.random() < 0.5:
            spec["schedule"] = {"timeZone": "Pacific/Auckland",
                                "windows": [{"start": "02:00", "end": "08:00"}]}
        workloads.append(WorkloadInfo("bench", f"w{index}", f"uid-w{index}", 1,
                                      GpuWorkloadSpec.model_validate(spec)))
    return View(nodes=nodes, slots=tuple(slots), pods=tuple(pods),
                workloads=tuple(workloads))


def measure(scale: int = 1, runs: int = 50) -> dict[str, float]:
    """Cold and steady-state plan times (ms) for ``scale`` times the objects."""
    slot_count = SLOTS * scale
    view = build_view(slot_count=slot_count, workload_count=WORKLOADS * scale)
    # The operator's loop freezes what it holds once its watch caches are filled, and
    # again after its first quiet pass (``control.loop.Freezer``): the records and the
    # memo live as long as the process, outside the collector's full passes.
    gc.freeze()
    memo = PlanMemo()  # kept across plans, as the operator's loop keeps it
    start = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)
    began = time.perf_counter()
    plan(view, start, memo)
    cold_ms = (time.perf_counter() - began) * 1000
    gc.freeze()  # and again once its first quiet pass has filled the memo
    rng = random.Random(11)
    timings = []
    cpu_timings = []
    for run in range(runs):
        now = start + datetime.timedelta(seconds=run)
        demands = {f"local/m{rng.randrange(slot_count)}": now for _ in range(20)}
        varied = View(nodes=view.nodes, slots=view.slots, pods=view.pods, demands=demands,
                      workloads=view.workloads)
        began, began_cpu = time.perf_counter(), time.process_time()
        plan(varied, now, memo)
        cpu_timings.append((time.process_time() - began_cpu) * 1000)
        timings.append((time.perf_counter() - began) * 1000)
    gc.unfreeze()  # the next case starts from a collector that holds nothing frozen
    timings.sort()
    return {"cold_ms": cold_ms, "p50_ms": statistics.median(timings),
            "p99_ms": timings[max(int(len(timings) * 0.99) - 1, 0)],
            "cpu_p50_ms": statistics.median(cpu_timings)}


def main() -> None:
    small = measure()
    print(f"plan, {SLOTS} slots and {WORKLOADS} workloads over {NODES * GPUS_PER_NODE} GPUs: "
          f"p50 {small['p50_ms']:.1f} ms (CPU {small['cpu_p50_ms']:.1f} ms), "
          f"p99 {small['p99_ms']:.1f} ms (first plan {small['cold_ms']:.0f} ms); "
          f"p50/target = {small['p50_ms'] / TARGET_MS:.2f}")
    large = measure(SCALE, runs=10)
    growth = large["cpu_p50_ms"] / small["cpu_p50_ms"]
    print(f"plan, {SLOTS * SCALE} slots and {WORKLOADS * SCALE} workloads over "
          f"{NODES * GPUS_PER_NODE} GPUs: p50 {large['p50_ms']:.1f} ms "
          f"(CPU {large['cpu_p50_ms']:.1f} ms), p99 {large['p99_ms']:.1f} ms "
          f"(first plan {large['cold_ms']:.0f} ms); CPU p50 {SCALE}x/1x = {growth:.1f}, "
          f"growth/target = {growth / TARGET_GROWTH:.2f}")


if __name__ == "__main__":
    main()
