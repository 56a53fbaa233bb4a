"""Warm standby through the node agent: the plan's per-node list of model files to
keep in the page cache (which files, in which order), the status field that shows
how much of a slot's file is resident, the telemetry that sends each agent its
list only when it changed (and again after the agent restarts), and a real
``hybrid-compute agent`` process that takes the operator's list and makes the
file resident, measured with ``mincore``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from hybrid_compute.agent.page_cache import evict_file, measure_residency
from hybrid_compute.agent.server import AgentService, build_app
from hybrid_compute.agent.snapshot import (
    CachedFile,
    CacheState,
    GpuReader,
    NodeSnapshot,
    PageCacheReport,
)
from hybrid_compute.agent.warmer import parse_warm_request
from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus
from hybrid_compute.api.units import MIB
from hybrid_compute.control.telemetry import (
    GpuTelemetry,
    HeaderAnswer,
    HttpAgents,
    WarmProblem,
    warm_request,
)
from hybrid_compute.plan import plan
from hybrid_compute.plan.model_vram import ModelFileKey
from hybrid_compute.plan.view import FileResidency, GpuNode, SlotInfo, View
from hybrid_compute.plan.warm_standby import RankedSlot, WarmFile, in_rank_order, warm_lists
from hybrid_compute.server.metrics import OperatorMetrics
from tests.fake_nvml import GIB, FakeNvml
from tests.simworld import SEED_SLOTS, START, World, dreamteam, dual_node, slot

NOW = START


@dataclass(frozen=True)
class Outcome:
    """A slot's decision as the warm list reads it."""

    slot: SlotInfo
    phase: str
    node: str | None = None
    template_vram: int | None = None


def on_demand(path: str, priority: int = 100, **extra: object) -> dict[str, object]:
    return {"alias": f"local/{path.removesuffix('.gguf')}", "model": {"path": path},
            "activation": "OnDemand", "idleTimeout": "5m", "priority": priority, **extra}


def paths(files: Sequence[WarmFile]) -> list[str]:
    return [f.path for f in files]


def small_node() -> GpuNode:
    return GpuNode("small", 1, 8 * GIB, 1, 1)


# Which files, in which order


def test_pending_then_default_then_recent_demand_then_priority() -> None:
    asked = {"recent": NOW - datetime.timedelta(minutes=10),
             "stale": NOW - datetime.timedelta(hours=2),
             "important-stale": NOW - datetime.timedelta(hours=3),
             "waiting": NOW}
    slots = {
        "stale": slot("stale", on_demand("stale.gguf")),
        "important": slot("important", on_demand("important.gguf", priority=500)),
        "recent": slot("recent", on_demand("recent.gguf")),
        "important-stale": slot("important-stale", on_demand("important-stale.gguf", 300)),
        "default": slot("default", {"alias": "local/default", "default": True,
                                    "model": {"path": "default.gguf"}}),
        "waiting": slot("waiting", on_demand("waiting.gguf", priority=50)),
    }
    phases = {"waiting": "Pending", "default": "Unloading"}
    outcomes = [Outcome(s, phases.get(name, "Standby")) for name, s in slots.items()]
    lists = warm_lists(View(nodes=(dreamteam(),)), outcomes,
                       lambda s: asked.get(s.name), NOW)
    files = lists["dreamteam"]
    assert paths(files) == ["waiting.gguf", "default.gguf", "recent.gguf", "important.gguf",
                            "important-stale.gguf", "stale.gguf"], \
        "expected Pending, default, recently asked, then by priority"
    assert [f.priority for f in files] == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0], \
        "the agent orders by priority: it must fall along the list"
    assert {f.host_path for f in files} == {"/models"}


def _stored_before_the_path_rule(info: SlotInfo, path: str) -> SlotInfo:
    """A slot whose model.path the API no longer accepts, as an object stored
    before the rule still holds it."""
    assert info.spec is not None
    model = info.spec.model.model_copy(update={"path": path})
    return replace(info, spec=info.spec.model_copy(update={"model": model}))


def test_loaded_cpu_claimed_and_escaping_files_are_not_listed() -> None:
    slots = [
        slot("ready", on_demand("ready.gguf")),
        slot("twin", on_demand("ready.gguf")),
        slot("cpu", {"alias": "local/cpu", "device": "cpu", "model": {"path": "cpu.gguf"}}),
        slot("claimed", on_demand("claimed.gguf", model={"path": "claimed.gguf",
                                                         "persistentVolumeClaim": "models"})),
        _stored_before_the_path_rule(slot("escaping", on_demand("x.gguf")), "../../etc/x.gguf"),
        slot("broken", on_demand("broken.gguf")),
        slot("spelled", on_demand("a.gguf", model={"path": "/models/sub/./a.gguf"})),
    ]
    outcomes = [Outcome(slots[0], "Ready", node="dreamteam"),
                *(Outcome(s, "Standby") for s in slots[1:5]),
                Outcome(slots[5], "Unschedulable"), Outcome(slots[6], "Unloading")]
    lists = warm_lists(View(nodes=(dreamteam(), dual_node())), outcomes, lambda _s: None, NOW)
    assert paths(lists["dreamteam"]) == ["sub/a.gguf"], \
        "only not-loaded GPU slots on the agent's folder, and not a file a loaded slot maps"
    assert paths(lists["dual"]) == ["sub/a.gguf", "ready.gguf"], \
        "a file loaded on one node is still worth warming on another"


def test_a_file_is_listed_only_on_nodes_where_its_slot_could_load() -> None:
    big = slot("big", on_demand("big.gguf"))
    split = slot("split", on_demand("split.gguf", gpus=2))
    lists = warm_lists(View(nodes=(dreamteam(), dual_node(), small_node())),
                       [Outcome(big, "Standby", template_vram=20 * GIB),
                        Outcome(split, "Standby", template_vram=40 * GIB)],
                       lambda _s: None, NOW)
    assert {node: paths(files) for node, files in lists.items()} == {
        "dreamteam": ["big.gguf"], "dual": ["big.gguf", "split.gguf"], "small": []}, \
        "every GPU node gets a list, empty ones too, so an agent lets go of old files"


def seed_world_with_coder() -> World:
    slots = [slot(name, spec) for name, spec in SEED_SLOTS.items()]
    slots.append(slot("coder", {**on_demand("coder.gguf", priority=300), "model": {
        "path": "coder.gguf", "vram": "10Gi"}}))
    return World(slots)


def test_the_plan_lists_what_is_not_loaded_and_follows_a_swap() -> None:
    world = seed_world_with_coder()
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert world.last_plan is not None
    assert paths(world.last_plan.warm["dreamteam"]) == ["coder.gguf", "q.gguf", "r.gguf"], \
        "the standby slots by priority (coder 300, quality 200, quality-alt 200 by name)"
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("fast") in ("Unloading", "Standby"))
    assert world.last_plan is not None
    assert paths(world.last_plan.warm["dreamteam"]) == ["fast.gguf", "coder.gguf", "r.gguf"], \
        "the default slot leaving the GPU comes first; quality is loading"
    world.run_until(lambda: world.phase("quality") == "Ready")
    assert paths(world.last_plan.warm["dreamteam"]) == ["fast.gguf", "coder.gguf", "r.gguf"]


def test_the_plan_is_the_same_for_the_same_view() -> None:
    world = seed_world_with_coder()
    world.run_until(lambda: world.phase("fast") == "Ready")
    view = world.view()
    assert plan(view, world.now).warm == plan(view, world.now).warm


# How warm a slot's file is, in its status


def world_with_residency(resident: dict[str, int], size: int = 1000,
                         state: str = "Held") -> tuple[World, View]:
    world = seed_world_with_coder()
    world.run_until(lambda: world.phase("fast") == "Ready")
    view = replace(world.view(), page_cache={
        ("/models", "coder.gguf"): {node: FileResidency(state, size, count)
                                    for node, count in resident.items()}})
    return world, view


def test_a_standby_slots_status_shows_how_much_of_its_file_is_resident() -> None:
    world, view = world_with_residency({"dreamteam": 999})
    status = plan(view, world.now).slot("lab", "coder").status
    assert status["pageCache"] == {"node": "dreamteam", "residentPercent": 99,
                                   "state": "Held", "sizeBytes": 1000}, \
        "99.9% shows as 99: 100 only once the whole file is resident"
    ModelSlotStatus.model_validate(status)
    assert "pageCache" not in plan(world.view(), world.now).slot("lab", "coder").status, \
        "without an agent's report the field goes away"
    assert "pageCache" not in plan(view, world.now).slot("lab", "fast").status


def test_a_slowly_changing_residency_does_not_rewrite_the_status() -> None:
    world, view = world_with_residency({"dreamteam": 99_410}, size=100_000)
    first = plan(view, world.now).slot("lab", "coder").status
    coder = next(s for s in view.slots if s.name == "coder")
    stored = replace(coder, status=ModelSlotStatus.model_validate(first))
    _, later = world_with_residency({"dreamteam": 99_870}, size=100_000)
    later = replace(later, slots=tuple(stored if s.name == "coder" else s for s in later.slots))
    assert plan(later, world.now).slot("lab", "coder").status == first, \
        "a change within the same whole percent must not write the status again"


def test_without_a_node_the_status_names_the_node_holding_most_of_the_file() -> None:
    world, view = world_with_residency({"dreamteam": 100, "dual": 900})
    assert plan(view, world.now).slot("lab", "coder").status["pageCache"]["node"] == "dual"


def test_the_operator_exports_each_warm_slots_residency() -> None:
    world, view = world_with_residency({"dreamteam": 500})
    metrics = OperatorMetrics()
    metrics.record_plan(view, plan(view, world.now), 0.001)
    labels = {"namespace": "lab", "slot": "coder", "alias": "local/coder"}
    name = "hybrid_compute_slot_page_cache_resident_ratio"
    assert metrics.registry.get_sample_value(name, labels) == 0.5
    metrics.record_plan(world.view(), plan(world.view(), world.now), 0.001)
    assert metrics.registry.get_sample_value(name, labels) is None, "a stale series stays"


# Sending the lists


def files(*names: str, host_path: str = "/models") -> tuple[WarmFile, ...]:
    return tuple(WarmFile(host_path, name, float(len(names) - i)) for i, name in enumerate(names))


@dataclass
class FakeAgents:
    """Agents that keep what they were sent, as the real one does, and can be made
    unreachable, restarted or refusing."""

    folders: dict[str, str | None] = field(default_factory=lambda: {"dreamteam": "/models"})
    """Node -> the agent's folder; None: an agent without a page-cache budget."""
    held: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    sent: list[tuple[str, list[str]]] = field(default_factory=list)
    resident: int = 1000
    """Bytes of each 1000-byte file the page cache holds."""
    unreachable: bool = False
    refusal: str | None = None
    name: str = "fake"

    async def fetch(self, nodes: list[str]) -> tuple[list[NodeSnapshot], list[str]]:
        if self.unreachable:
            return [], ["fake: ClientConnectorError"]
        return [NodeSnapshot(
            node=node, taken_at=START, available=True,
            page_cache=None if folder is None else PageCacheReport(
                budget_bytes=GIB, held_bytes=0, lock=False, memory_pressure=False,
                pressure_reason="calm", host_path=folder,
                files=[CachedFile(path=p, priority=q, state=CacheState.HELD, size_bytes=1000,
                                  resident_bytes=self.resident)
                       for p, q in self.held.get(node, [])]))
            for node, folder in self.folders.items()], []

    async def model_header(self, node: str, file: ModelFileKey) -> HeaderAnswer:
        return None

    async def warm(self, node: str, files: Sequence[WarmFile]) -> WarmProblem | None:
        if self.unreachable:
            return WarmProblem("http://agent/warm: ClientConnectorError", retry=True)
        if self.refusal is not None:
            return WarmProblem(f"http://agent/warm answered 400: {self.refusal}", retry=False)
        self.sent.append((node, paths(files)))
        self.held[node] = [(f.path, f.priority) for f in files]
        return None


async def round_trip(telemetry: GpuTelemetry) -> list[str]:
    """One round of the background task: poll, then send."""
    await telemetry.poll(["dreamteam"])
    return await telemetry.push_warm()


def test_a_list_is_sent_once_and_again_only_when_it_changes() -> None:
    agents = FakeAgents()
    telemetry = GpuTelemetry(agents)

    async def exercise() -> None:
        assert await round_trip(telemetry) == [], "nothing is sent before the first plan"
        telemetry.want_warm({"dreamteam": files("coder.gguf", "q.gguf")})
        assert await round_trip(telemetry) == ["dreamteam"]
        for _ in range(3):
            telemetry.want_warm({"dreamteam": files("coder.gguf", "q.gguf")})
            assert await round_trip(telemetry) == []
        telemetry.want_warm({"dreamteam": files("q.gguf")})
        assert await telemetry.push_warm() == ["dreamteam"]
        assert await round_trip(telemetry) == []

    asyncio.run(exercise())
    assert agents.sent == [("dreamteam", ["coder.gguf", "q.gguf"]), ("dreamteam", ["q.gguf"])]


def test_a_list_the_agent_already_holds_is_not_sent_again_after_an_operator_restart(
        ) -> None:
    agents = FakeAgents(held={"dreamteam": [("coder.gguf", 1.0)]})
    telemetry = GpuTelemetry(agents)

    async def exercise() -> None:
        telemetry.want_warm({"dreamteam": files("coder.gguf")})
        assert await round_trip(telemetry) == []
        telemetry.want_warm({"dreamteam": files("q.gguf")})
        assert await round_trip(telemetry) == ["dreamteam"]

    asyncio.run(exercise())
    assert agents.sent == [("dreamteam", ["q.gguf"])]


def test_an_agent_that_restarted_is_sent_its_list_again(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    agents = FakeAgents()
    telemetry = GpuTelemetry(agents)

    async def exercise() -> None:
        telemetry.want_warm({"dreamteam": files("coder.gguf")})
        await round_trip(telemetry)
        agents.held.clear()
        with caplog.at_level(logging.INFO, "hybrid_compute.control.telemetry"):
            assert await round_trip(telemetry) == ["dreamteam"]
        assert await round_trip(telemetry) == []

    asyncio.run(exercise())
    assert "no longer holds its warm list (restarted?)" in caplog.text
    assert len(agents.sent) == 2


def test_an_unreachable_agent_is_logged_once_and_asked_again(caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    agents = FakeAgents()
    telemetry = GpuTelemetry(agents)

    async def exercise() -> None:
        telemetry.want_warm({"dreamteam": files("coder.gguf")})
        await telemetry.poll(["dreamteam"])
        agents.unreachable = True
        with caplog.at_level(logging.WARNING, "hybrid_compute.control.telemetry"):
            for _ in range(3):
                assert await telemetry.push_warm() == []
        agents.unreachable = False
        assert await telemetry.push_warm() == ["dreamteam"]

    asyncio.run(exercise())
    lines = [r.message for r in caplog.records if "did not take the warm list" in r.message]
    assert len(lines) == 1, f"expected one warning for three failed rounds, got {lines}"


def test_a_refused_list_waits_until_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    agents = FakeAgents(refusal="x.gguf is outside the model folder /models")
    telemetry = GpuTelemetry(agents)

    async def exercise() -> None:
        telemetry.want_warm({"dreamteam": files("coder.gguf")})
        await telemetry.poll(["dreamteam"])
        with caplog.at_level(logging.WARNING, "hybrid_compute.control.telemetry"):
            assert await telemetry.push_warm() == []
            assert await telemetry.push_warm() == []
        agents.refusal = None
        assert await telemetry.push_warm() == [], "the same list is not tried again"
        telemetry.want_warm({"dreamteam": files("coder.gguf", "q.gguf")})
        assert await telemetry.push_warm() == ["dreamteam"]

    asyncio.run(exercise())
    assert caplog.text.count("outside the model folder") == 1


def test_only_files_under_the_agents_folder_go_to_agents_with_a_page_cache() -> None:
    agents = FakeAgents(folders={"dreamteam": "/models", "dual": None})
    telemetry = GpuTelemetry(agents)

    async def exercise() -> None:
        await telemetry.poll(["dreamteam", "dual"])
        telemetry.want_warm({
            "dreamteam": (*files("coder.gguf"), *files("other.gguf", host_path="/srv")),
            "dual": files("coder.gguf")})
        assert await telemetry.push_warm() == ["dreamteam"]

    asyncio.run(exercise())
    assert agents.sent == [("dreamteam", ["coder.gguf"])]


def test_a_replica_that_stops_leading_sends_nothing_more() -> None:
    agents = FakeAgents()
    telemetry = GpuTelemetry(agents)

    async def exercise() -> None:
        telemetry.want_warm({"dreamteam": files("coder.gguf")})
        await round_trip(telemetry)
        telemetry.want_warm(None)
        agents.held.clear()
        assert await round_trip(telemetry) == [], \
            "another replica's list on the agent must not be overwritten"

    asyncio.run(exercise())


def test_the_background_task_sends_a_new_list_before_the_next_poll() -> None:
    agents = FakeAgents()
    telemetry = GpuTelemetry(agents, interval=60)

    async def exercise() -> None:
        task = asyncio.create_task(telemetry.run(lambda: ["dreamteam"], lambda: None))
        try:
            await asyncio.sleep(0.1)
            telemetry.want_warm({"dreamteam": files("coder.gguf")})
            for _ in range(50):
                if agents.sent:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(exercise())
    assert agents.sent == [("dreamteam", ["coder.gguf"])], \
        "a changed list waits for the 60 s poll interval"


def test_a_residency_change_of_a_whole_percent_wakes_the_plan() -> None:
    agents = FakeAgents(held={"dreamteam": [("coder.gguf", 1.0)]}, resident=500)
    telemetry = GpuTelemetry(agents)

    async def exercise() -> None:
        await telemetry.poll(["dreamteam"])
        agents.resident = 504
        assert not await telemetry.poll(["dreamteam"]), "50.4% is still 50%: no new plan"
        agents.resident = 510
        assert await telemetry.poll(["dreamteam"]), "51% is worth a plan"

    asyncio.run(exercise())
    view = telemetry.annotate(View(nodes=(dreamteam(),)), START)
    assert view.page_cache == {("/models", "coder.gguf"): {
        "dreamteam": FileResidency("Held", 1000, 510)}}


def test_the_request_body_is_what_the_agent_parses() -> None:
    body = warm_request(files("coder.gguf", "sub/q.gguf"))
    assert body == {"files": [
        {"path": "coder.gguf", "priority": 2.0, "hostPath": "/models"},
        {"path": "sub/q.gguf", "priority": 1.0, "hostPath": "/models"}]}
    parsed = parse_warm_request(body)
    assert [(f.path, f.priority, f.host_path) for f in parsed.files] == [
        ("coder.gguf", 2.0, "/models"), ("sub/q.gguf", 1.0, "/models")]


def test_an_agent_without_a_budget_refuses_and_a_closed_port_is_retried() -> None:
    service = AgentService(GpuReader("dreamteam", lambda: FakeNvml([])))

    async def exercise() -> tuple[WarmProblem | None, WarmProblem | None]:
        async with TestServer(build_app(service)) as server:
            refused = await HttpAgents([str(server.make_url(""))]).warm(
                "dreamteam", files("coder.gguf"))
        closed = await HttpAgents([f"http://127.0.0.1:{free_port()}"]).warm(
            "dreamteam", files("coder.gguf"))
        return refused, closed

    refused, closed = asyncio.run(exercise())
    assert refused is not None and not refused.retry
    assert "answered 404" in refused.message and "--page-cache-budget" in refused.message
    assert closed is not None and closed.retry


# A real agent process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_model(folder: Path, name: str, size: int) -> Path:
    """Random bytes, flushed so the pages are clean and can be evicted."""
    path = folder / name
    with path.open("wb") as file:
        file.write(os.urandom(size))
        file.flush()
        os.fsync(file.fileno())
    return path


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """``hybrid-compute agent`` with a page-cache budget over a model folder under
    tmp_path (no NVML here: the GPU part reports that and the rest serves)."""
    models = tmp_path / "models"
    models.mkdir()
    probe = write_model(models, "probe.bin", 4 * MIB)
    evict_file(probe)
    if measure_residency(probe).ratio > 0.02:
        pytest.fail(f"{tmp_path} keeps evicted pages resident (tmpfs?): residency cannot "
                    "be observed; set --basetemp to a folder on a disk")
    port = free_port()
    # An empty /proc stand-in: no memory pressure to read, so none pauses warming.
    command = [sys.executable, "-m", "hybrid_compute", "agent", "--port", str(port),
               "--host", "127.0.0.1", "--node-name", "dreamteam", "--interval", "0.2",
               "--model-root", str(models), "--model-host-path", "/models",
               "--page-cache-budget", "64Mi", "--proc-root", str(tmp_path / "no-proc")]
    log = (tmp_path / "agent.log").open("wb")
    started = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, started, tmp_path / "agent.log")
        yield url, models, started
    finally:
        started.terminate()
        started.wait(10)
        log.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the agent exited with {process.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    pytest.fail(f"the agent did not listen within 30 s: {log.read_text()}")


def test_the_operators_list_reaches_a_real_agent_and_the_file_becomes_resident(
        agent_process: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    url, models, _process = agent_process
    for name in ("fast.gguf", "q.gguf", "r.gguf"):
        evict_file(write_model(models, name, 8 * MIB))
    world = World([slot(name, spec) for name, spec in SEED_SLOTS.items()])
    world.run_until(lambda: world.phase("fast") == "Ready")
    telemetry = GpuTelemetry(HttpAgents([url]))

    async def until_resident() -> View:
        deadline = time.monotonic() + 30
        await telemetry.poll(["dreamteam"])
        assert world.last_plan is not None
        telemetry.want_warm(world.last_plan.warm)
        assert await telemetry.push_warm() == ["dreamteam"]
        while time.monotonic() < deadline:
            await telemetry.poll(["dreamteam"])
            view = telemetry.annotate(world.view(), world.now)
            found = view.page_cache.get(("/models", "q.gguf"), {}).get("dreamteam")
            if found is not None and found.resident_percent == 100:
                return view
            await asyncio.sleep(0.2)
        raise AssertionError(f"q.gguf never became resident: {telemetry.snapshots}")

    view = asyncio.run(until_resident())
    assert measure_residency(models / "q.gguf").ratio > 0.98, "mincore says q.gguf is cold"
    assert measure_residency(models / "r.gguf").ratio > 0.98
    assert measure_residency(models / "fast.gguf").ratio < 0.02, \
        "fast is loaded: its file is llama-server's to map, not the agent's to hold"
    status = plan(view, world.now).slot("lab", "quality").status
    assert status["pageCache"] == {"node": "dreamteam", "residentPercent": 100,
                                   "state": "Held", "sizeBytes": 8 * MIB}


def test_a_restarted_agent_gets_the_list_again(
        agent_process: tuple[str, Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, models, process = agent_process
    write_model(models, "q.gguf", MIB)
    telemetry = GpuTelemetry(HttpAgents([url]))
    wanted = {"dreamteam": files("q.gguf")}

    async def send() -> list[str]:
        await telemetry.poll(["dreamteam"])
        telemetry.want_warm(wanted)
        return await telemetry.push_warm()

    assert asyncio.run(send()) == ["dreamteam"]
    assert asyncio.run(send()) == [], "an unchanged list is not sent again"
    process.terminate()
    process.wait(10)
    assert asyncio.run(send()) == [], "an agent that is down is skipped"
    log = tmp_path / "restarted.log"
    with log.open("wb") as output:
        again = subprocess.Popen(process.args, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(int(url.rsplit(":", 1)[1]), again, log)
        assert asyncio.run(send()) == ["dreamteam"], "the restarted agent holds nothing"
        asyncio.run(telemetry.poll(["dreamteam"]))
        report = telemetry.snapshots["dreamteam"].page_cache
        assert report is not None and [f.path for f in report.files] == ["q.gguf"]
    finally:
        again.terminate()
        again.wait(10)


_RANKS = st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1),
                   st.floats(-10, 0), st.integers(-3, 3), st.floats(-10, 0))


@given(st.lists(st.tuples(_RANKS, st.booleans()), min_size=8, max_size=40),
       st.lists(_RANKS, max_size=6), st.randoms())
def test_the_warm_order_built_on_the_previous_one_is_the_sorted_order(
        listed: list[tuple[tuple[int, int, int, float, int, float], bool]],
        new: list[tuple[int, int, int, float, int, float]], rng: random.Random) -> None:
    """Entries the last plan ordered, some gone, some new (a slot whose rank changed
    is a new entry of the same slot), handed over in any order: the same order as a
    sort."""
    spec = ModelSlotSpec.model_validate({"alias": "local/a", "model": {"path": "a.gguf"}})

    def entry(rank: tuple[int, int, int, float, int, float], index: int) -> RankedSlot:
        return (rank, ("ns", f"s{index:03d}"), ("/models", f"s{index}.gguf"), spec, None)

    before = [entry(rank, index) for index, (rank, _) in enumerate(listed)]
    previous = in_rank_order(before)
    staying = [e for e, (_, keep) in zip(before, listed, strict=True) if keep]
    # A slot is listed once: a new entry takes the name of one that left, or a new one.
    left = [e[1][1] for e in before if e not in staying]
    names = iter([*left, *(f"n{index:03d}" for index in range(len(new)))])
    ranked = [*staying, *((rank, ("ns", next(names)), ("/models", "x.gguf"), spec, None)
                          for rank in new)]
    rng.shuffle(ranked)
    assert in_rank_order(ranked, previous) == sorted(ranked, key=lambda e: (e[0], e[1]))
