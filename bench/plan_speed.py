"""How long ``plan`` takes for a large install: 1,000 slots and workloads over
64 GPUs (800 ModelSlots, 200 GpuWorkloads, some with time windows).

The view is built once (as the operator's loop keeps its parsed objects) and
planned repeatedly with a moving clock and fresh demands, as the loop does; the
first plan, which renders every pod template, is reported apart.
Target: the median steady-state plan takes at most 10 ms.
"""

from __future__ import annotations

import datetime
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
NODES = 16
GPUS_PER_NODE = 4
SLOTS = 800
WORKLOADS = 200


def build_view(seed: int = 7) -> View:
    rng = random.Random(seed)
    nodes = tuple(GpuNode(f"node-{n:02d}", GPUS_PER_NODE, 24576 * MIB,
                          replicas=4 if n % 2 == 0 else 1, allocatable=16)
                  for n in range(NODES))
    slots = []
    pods = []
    for index in range(SLOTS):
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
    for index in range(WORKLOADS):
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


def measure(runs: int = 50) -> dict[str, float]:
    view = build_view()
    memo = PlanMemo()  # kept across plans, as the operator's loop keeps it
    start = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)
    began = time.perf_counter()
    plan(view, start, memo)
    cold_ms = (time.perf_counter() - began) * 1000
    rng = random.Random(11)
    timings = []
    for run in range(runs):
        now = start + datetime.timedelta(seconds=run)
        demands = {f"local/m{rng.randrange(SLOTS)}": now for _ in range(20)}
        varied = View(nodes=view.nodes, slots=view.slots, pods=view.pods, demands=demands,
                      workloads=view.workloads)
        began = time.perf_counter()
        plan(varied, now, memo)
        timings.append((time.perf_counter() - began) * 1000)
    timings.sort()
    return {"cold_ms": cold_ms, "p50_ms": statistics.median(timings),
            "p99_ms": timings[int(len(timings) * 0.99) - 1]}


def main() -> None:
    result = measure()
    print(f"plan, {SLOTS} slots and {WORKLOADS} workloads over {NODES * GPUS_PER_NODE} GPUs: "
          f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms "
          f"(first plan {result['cold_ms']:.0f} ms); "
          f"p50/target = {result['p50_ms'] / TARGET_MS:.2f}")


if __name__ == "__main__":
    main()
