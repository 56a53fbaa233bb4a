"""What the GPU agent reports changes the plan: foreign memory comes off the budget,
a slot it crowds out waits with a reason that names it, and an agent that does
not answer leaves the plan as it was."""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field

import pytest
from aiohttp.test_utils import TestServer

from hybrid_compute.agent.nvml import ProcessMemory
from hybrid_compute.agent.server import AgentService, build_app
from hybrid_compute.agent.snapshot import GpuReader, NodeSnapshot
from hybrid_compute.control.telemetry import (
    GpuTelemetry,
    HttpAgents,
    foreign_use,
    foreign_vram,
    with_telemetry,
)
from hybrid_compute.plan import Plan, plan
from hybrid_compute.plan.routing import gpu_busy
from hybrid_compute.plan.view import PodInfo, View
from hybrid_compute.server.metrics import OperatorMetrics
from tests.fake_nvml import GIB, FakeGpu, FakeNvml
from tests.simworld import SEED_SLOTS, START, World, dreamteam, slot

FAST_POD_UID = "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"


def snapshot(used: int, processes: list[ProcessMemory] | None = None,
             cgroups: dict[int, str] | None = None, utilization: int = 10) -> NodeSnapshot:
    nvml = FakeNvml([FakeGpu(used_bytes=used, utilization_percent=utilization,
                             processes=processes or [])])
    return GpuReader("dreamteam", lambda: nvml, (cgroups or {}).get,
                     clock=lambda: START).read()


@dataclass
class ObservedWorld(World):
    """The simulated cluster with a GPU agent that reads the card one step late, as a
    real agent's interval makes it; ``stranger`` is memory of a process the operator
    did not start. Views carry the figures the way the runtime adds them."""

    stranger: int = 0
    telemetry: GpuTelemetry = field(default_factory=lambda: GpuTelemetry(HttpAgents([])))
    read_by_agent: int = 0

    def view(self) -> View:
        self.telemetry.snapshots = {
            "dreamteam": snapshot(used=self.read_by_agent + self.stranger)}
        return self.telemetry.annotate(super().view(), self.now)

    def step(self) -> Plan:
        in_use = sum(p.info.vram_bytes for p in self.pods if p.info.gpus)
        result = super().step()
        self.read_by_agent = in_use
        return result


def seed_world() -> ObservedWorld:
    return ObservedWorld([slot(name, spec) for name, spec in SEED_SLOTS.items()])


def fast_ready_then_quality_asked(world: ObservedWorld) -> None:
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)  # past fast's minimum residency
    world.demand("local/quality")


def test_foreign_memory_defers_a_slot_that_no_longer_fits_and_names_it() -> None:
    world = seed_world()
    fast_ready_then_quality_asked(world)
    # 4 GiB of someone else's: 23 - 4 = 19 GiB left for quality's 20 GiB.
    world.stranger = 4 * GIB
    for _ in range(5):
        world.step()
    assert world.phase("quality") == "Pending"
    assert world.phase("fast") == "Ready", "fast was evicted for a slot that cannot load"
    quality = next(s for s in world.slots if s.name == "quality")
    assert quality.status.reason == ("waiting for room: 20.0 GiB needed, held by "
                                     "processes outside hybrid-compute (4.0 GiB)")
    fits = {c.type: c for c in quality.status.conditions}["Fits"]
    assert fits.status == "True", "memory that comes and goes made the slot 'too large'"

    world.stranger = 0
    world.run_until(lambda: world.phase("quality") == "Ready", limit=20)
    assert world.phase("fast") == "Standby"


def test_with_no_stranger_the_same_demand_swaps_the_slot_in() -> None:
    world = seed_world()
    fast_ready_then_quality_asked(world)
    world.run_until(lambda: world.phase("quality") == "Ready", limit=20)


def test_foreign_memory_counts_against_the_budget_of_a_start() -> None:
    world = seed_world()
    world.stranger = 20 * GIB
    for _ in range(5):
        world.step()
    # 23 GiB less 20 GiB foreign leaves 3 GiB: fast (7 GiB) waits instead of loading.
    assert world.phase("fast") in ("Pending", "Standby")
    assert not [p for p in world.pods if p.info.owner == "fast"]


def pods_view(*pods: PodInfo) -> View:
    return View(nodes=(dreamteam(),), pods=pods)


def fast_pod(vram: int = 7 * GIB, uid: str = FAST_POD_UID) -> PodInfo:
    return PodInfo("fast-1", "lab", "fast", "dreamteam", vram, 1, "h", True, False,
                   "Running", uid=uid)


def test_matched_processes_make_a_model_above_its_estimate_still_ours() -> None:
    cgroup = f"0::/kubepods.slice/kubepods-pod{FAST_POD_UID.replace('-', '_')}.slice/x\n"
    report = snapshot(used=12 * GIB,
                      processes=[ProcessMemory(100, 9 * GIB), ProcessMemory(200, 3 * GIB)],
                      cgroups={100: cgroup, 200: "0::/user.slice/session-1.scope\n"})
    # fast's llama-server uses 9 GiB against a 7 GiB estimate; only pid 200 is foreign.
    assert foreign_vram([report], pods_view(fast_pod())) == {"dreamteam/0": 3 * GIB}


def test_unmatched_processes_fall_back_to_used_less_planned() -> None:
    report = snapshot(used=12 * GIB, processes=[ProcessMemory(100, 9 * GIB),
                                                ProcessMemory(200, 3 * GIB)])
    assert foreign_vram([report], pods_view(fast_pod())) == {"dreamteam/0": 5 * GIB}


def test_a_pod_still_loading_leaves_no_negative_foreign_memory() -> None:
    assert foreign_vram([snapshot(used=2 * GIB)], pods_view(fast_pod())) == {"dreamteam/0": 0}


def test_unreadable_gpus_and_unknown_nodes_add_nothing() -> None:
    elsewhere = snapshot(used=5 * GIB).model_copy(update={"node": "elsewhere"})
    broken = snapshot(used=5 * GIB)
    lost = broken.gpus[0].model_copy(update={"available": False, "error": "GPU is lost"})
    broken = broken.model_copy(update={"gpus": [lost]})
    assert foreign_vram([elsewhere, broken], pods_view()) == {}


def test_utilisation_reaches_the_view_for_the_routers_busy_rule() -> None:
    view = with_telemetry(pods_view(), [snapshot(used=GIB, utilization=91)])
    assert view.gpu_utilisation == {"dreamteam/0": 91.0}
    assert gpu_busy(view, 90) and not gpu_busy(view, 95)


def test_agents_are_read_over_http_and_an_unreachable_one_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([FakeGpu(used_bytes=11 * GIB)])
    service = AgentService(GpuReader("dreamteam", lambda: nvml, clock=lambda: START))
    metrics = OperatorMetrics()

    async def exercise() -> None:
        async with TestServer(build_app(service)) as server:
            live = str(server.make_url("/")).rstrip("/")
            telemetry = GpuTelemetry(HttpAgents([live]), metrics=metrics)
            assert await telemetry.poll(["dreamteam"])
            assert telemetry.snapshots["dreamteam"].gpus[0].memory_used_bytes == 11 * GIB
            assert metrics.agent_reachable.labels("http")._value.get() == 1
            dead = GpuTelemetry(HttpAgents(["http://127.0.0.1:9"], timeout=1), metrics=metrics)
            with caplog.at_level(logging.WARNING, "hybrid_compute.control.telemetry"):
                assert not await dead.poll(["dreamteam"])
            assert dead.snapshots == {}
            assert metrics.agent_reachable.labels("http")._value.get() == 0
            assert "GPU agent unreachable, planning without its figures" in caplog.text

    asyncio.run(exercise())
    view = with_telemetry(pods_view(), [])
    assert view.foreign_vram == {} and plan(view, START).gpus[0].capacity_bytes == 23 * GIB


def test_node_placeholder_expands_per_gpu_node() -> None:
    agents = HttpAgents(["http://{node}:9400/", "http://agent.monitoring:9400"])
    assert agents.targets(["dreamteam", "dual"]) == [
        "http://dreamteam:9400/snapshot", "http://dual:9400/snapshot",
        "http://agent.monitoring:9400/snapshot"]


def test_a_stale_node_drops_out_when_its_agent_stops_answering() -> None:
    class Flaky:
        name = "http"

        def __init__(self) -> None:
            self.answers = [[snapshot(used=11 * GIB)], []]

        async def fetch(self, nodes: list[str]) -> tuple[list[NodeSnapshot], list[str]]:
            found = self.answers.pop(0)
            return found, [] if found else ["dreamteam: timeout"]

    telemetry = GpuTelemetry(Flaky())
    assert asyncio.run(telemetry.poll(["dreamteam"])) is True
    assert asyncio.run(telemetry.poll(["dreamteam"])) is True, "losing the figures is a change"
    assert telemetry.snapshots == {}



def test_matched_foreign_processes_are_named_largest_first() -> None:
    cgroup = f"0::/kubepods.slice/kubepods-pod{FAST_POD_UID.replace('-', '_')}.slice/x\n"
    nvml = FakeNvml([FakeGpu(used_bytes=29 * GIB, processes=[
        ProcessMemory(100, 9 * GIB), ProcessMemory(200, 2 * GIB),
        ProcessMemory(300, 18 * GIB)])])
    names = {100: "llama-server", 200: "Xorg", 300: "steam"}
    report = GpuReader("dreamteam", lambda: nvml,
                       {100: cgroup, 200: "0::/user.slice\n", 300: "0::/user.slice\n"}.get,
                       clock=lambda: START, read_name=names.get).read()
    found = foreign_use([report], pods_view(fast_pod()))["dreamteam/0"]
    assert [(p.label, p.bytes) for p in found] == [("steam (pid 300)", 18 * GIB),
                                                   ("Xorg (pid 200)", 2 * GIB)]
    view = with_telemetry(pods_view(fast_pod()), [report])
    assert view.foreign_vram == {"dreamteam/0": 20 * GIB}
    assert view.foreign_processes["dreamteam/0"] == found


def test_unmatched_foreign_memory_is_one_unnamed_entry() -> None:
    report = snapshot(used=12 * GIB, processes=[ProcessMemory(100, 9 * GIB)])
    found = foreign_use([report], pods_view(fast_pod()))["dreamteam/0"]
    assert [(p.label, p.pid, p.bytes) for p in found] == [("processes", None, 5 * GIB)]
