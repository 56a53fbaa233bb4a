"""The GPU agent through its NVML boundary: readings, failures it reports and keeps
serving through, its Prometheus metrics and its HTTP endpoints."""

from __future__ import annotations

import asyncio
import ctypes.util
import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hybrid_compute.agent.nvml import ERROR_LIBRARY_NOT_FOUND, NvmlError, ProcessMemory, load_nvml
from hybrid_compute.agent.server import AgentService, build_app
from hybrid_compute.agent.snapshot import (
    GpuReader,
    NodeSnapshot,
    pod_uid_from_cgroup,
    proc_name_reader,
)
from hybrid_compute.cli import build_parser
from tests.fake_nvml import GIB, FakeGpu, FakeNvml, driver_not_loaded

MOMENT = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
POD_UID = "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"
SYSTEMD_CGROUP = ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
                  f"{POD_UID.replace('-', '_')}.slice/cri-containerd-abc.scope\n")
CGROUPFS_CGROUP = f"12:memory:/kubepods/besteffort/pod{POD_UID}/0123abcd\n"


def rtx3090(**fields: Any) -> FakeGpu:
    return FakeGpu(**{"uuid": "GPU-aaaa", "used_bytes": 9 * GIB, "utilization_percent": 73,
                      "temperature_celsius": 61, "power_milliwatts": 251_500, **fields})


def reader(nvml: FakeNvml, cgroups: dict[int, str] | None = None) -> GpuReader:
    return GpuReader("dreamteam", lambda: nvml, (cgroups or {}).get, clock=lambda: MOMENT)


def test_a_healthy_gpu_is_read_with_memory_utilisation_sensors_and_processes() -> None:
    nvml = FakeNvml([rtx3090(processes=[ProcessMemory(4242, 7 * GIB),
                                        ProcessMemory(77, 2 * GIB),
                                        ProcessMemory(9, None)])])
    snapshot = reader(nvml, {4242: SYSTEMD_CGROUP, 77: "0::/user.slice/session-2.scope\n"}
                      ).read()
    assert snapshot.available and snapshot.error is None
    assert snapshot.driver_version == "580.95.05" and snapshot.taken_at == MOMENT
    (gpu,) = snapshot.gpus
    assert (gpu.index, gpu.uuid, gpu.name) == (0, "GPU-aaaa", "NVIDIA GeForce RTX 3090")
    assert (gpu.memory_used_bytes, gpu.memory_total_bytes) == (9 * GIB, 24 * GIB)
    assert (gpu.utilization_percent, gpu.temperature_celsius, gpu.power_watts) == (73, 61, 251.5)
    assert gpu.processes is not None
    by_pid = {p.pid: p for p in gpu.processes}
    assert (by_pid[4242].attributed, by_pid[4242].pod_uid) == (True, POD_UID)
    assert (by_pid[77].attributed, by_pid[77].pod_uid) == (True, None), \
        "a host process whose cgroup was read is known not to be a pod"
    assert (by_pid[9].attributed, by_pid[9].used_memory_bytes) == (False, None)


@pytest.mark.parametrize("cgroup", [SYSTEMD_CGROUP, CGROUPFS_CGROUP])
def test_pod_uid_is_found_with_either_cgroup_driver(cgroup: str) -> None:
    assert pod_uid_from_cgroup(cgroup) == POD_UID


def test_a_missing_sensor_is_none_and_the_gpu_stays_available() -> None:
    nvml = FakeNvml([rtx3090(unsupported=frozenset({"temperature", "power", "processes"}))])
    (gpu,) = reader(nvml).read().gpus
    assert gpu.available and gpu.error is None
    assert (gpu.temperature_celsius, gpu.power_watts, gpu.processes) == (None, None, None)
    assert gpu.memory_used_bytes == 9 * GIB


def test_a_lost_gpu_is_reported_and_the_other_keeps_reporting() -> None:
    nvml = FakeNvml([rtx3090(), rtx3090(uuid="GPU-bbbb", used_bytes=GIB)])
    gpu_reader = reader(nvml)
    gpu_reader.read()
    nvml.gpus[1].lost = True
    snapshot = gpu_reader.read()
    assert snapshot.available
    first, second = snapshot.gpus
    assert first.available and first.memory_used_bytes == 9 * GIB
    assert not second.available and second.uuid == "GPU-bbbb"
    assert second.error == "NVML error on GPU 1: GPU is lost"
    assert second.memory_used_bytes is None


def test_a_gpu_that_disappears_is_still_listed_as_gone() -> None:
    nvml = FakeNvml([rtx3090(), rtx3090(uuid="GPU-bbbb")])
    gpu_reader = reader(nvml)
    assert [g.available for g in gpu_reader.read().gpus] == [True, True]
    del nvml.gpus[1]
    gone = gpu_reader.read().gpus[1]
    assert (gone.index, gone.uuid, gone.available) == (1, "GPU-bbbb", False)
    assert gone.error == "disappeared: the driver now reports 1 GPUs"


def test_a_driver_failure_is_reported_and_nvml_is_initialised_again_after_it() -> None:
    nvml = FakeNvml([rtx3090()])
    gpu_reader = reader(nvml)
    assert gpu_reader.read().available
    nvml.driver_error = driver_not_loaded()
    failed = gpu_reader.read()
    assert not failed.available and failed.gpus == []
    assert failed.error == "NVML driver error: Driver Not Loaded"
    assert gpu_reader.read().error == "NVML unavailable: Driver Not Loaded"
    nvml.driver_error = None
    recovered = gpu_reader.read()
    assert recovered.available and recovered.gpus[0].memory_used_bytes == 9 * GIB
    assert nvml.init_calls == 3, "NVML was not initialised again after the failure"


def test_a_machine_without_the_library_reports_why() -> None:
    def missing() -> FakeNvml:
        raise NvmlError(ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found")

    snapshot = GpuReader("cpu-box", missing, clock=lambda: MOMENT).read()
    assert not snapshot.available
    assert snapshot.error == "NVML unavailable: NVML Shared Library Not Found"


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None,
                    reason="an NVIDIA driver is installed here")
def test_the_real_library_without_a_driver_is_reported_not_raised() -> None:
    snapshot = GpuReader("here", load_nvml).read()
    assert not snapshot.available
    assert snapshot.error is not None and "NVML" in snapshot.error


def scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            grouped.setdefault(sample.name, []).append((sample.labels, sample.value))
    return grouped


def test_metrics_follow_the_latest_reading_and_drop_what_is_gone() -> None:
    nvml = FakeNvml([rtx3090(processes=[ProcessMemory(4242, 7 * GIB)]),
                     rtx3090(uuid="GPU-bbbb", used_bytes=GIB)])
    service = AgentService(reader(nvml, {4242: CGROUPFS_CGROUP}))
    asyncio.run(service.refresh())
    metrics = scrape(generate_latest(service.registry).decode())
    gpu0 = {"node": "dreamteam", "gpu": "dreamteam/0"}
    assert metrics["hybrid_compute_gpu_agent_up"] == [({"node": "dreamteam"}, 1.0)]
    assert (gpu0, 9.0 * GIB) in metrics["hybrid_compute_gpu_memory_used_bytes"]
    assert (gpu0, 24.0 * GIB) in metrics["hybrid_compute_gpu_memory_total_bytes"]
    assert (gpu0, 0.73) in metrics["hybrid_compute_gpu_utilization_ratio"]
    assert (gpu0, 251.5) in metrics["hybrid_compute_gpu_power_watts"]
    assert metrics["hybrid_compute_gpu_process_memory_bytes"] == [
        ({**gpu0, "pid": "4242", "pod_uid": POD_UID}, 7.0 * GIB)]

    nvml.gpus[1].lost = True
    nvml.gpus[0].processes = []
    asyncio.run(service.refresh())
    metrics = scrape(generate_latest(service.registry).decode())
    gpu1 = {"node": "dreamteam", "gpu": "dreamteam/1"}
    assert (gpu1, 0.0) in metrics["hybrid_compute_gpu_available"]
    assert all(labels != gpu1 for labels, _ in metrics["hybrid_compute_gpu_memory_used_bytes"])
    assert "hybrid_compute_gpu_process_memory_bytes" not in metrics, \
        "a process that ended still has a series"

    nvml.driver_error = driver_not_loaded()
    asyncio.run(service.refresh())
    metrics = scrape(generate_latest(service.registry).decode())
    assert metrics["hybrid_compute_gpu_agent_up"] == [({"node": "dreamteam"}, 0.0)]


def test_http_endpoints_serve_snapshot_metrics_and_health_without_a_driver() -> None:
    nvml = FakeNvml([rtx3090()])
    service = AgentService(reader(nvml))

    async def exercise() -> None:
        async with TestClient(TestServer(build_app(service))) as http:
            response = await http.get("/snapshot")
            assert response.status == 200
            snapshot = NodeSnapshot.model_validate(await response.json())
            assert snapshot.gpus[0].memory_used_bytes == 9 * GIB
            assert "memoryUsedBytes" in (await response.json())["gpus"][0]
            nvml.driver_error = driver_not_loaded()
            await service.refresh()
            response = await http.get("/snapshot")
            body = await response.json()
            assert response.status == 200
            assert (body["available"], body["error"]) == (
                False, "NVML driver error: Driver Not Loaded")
            metrics = await http.get("/metrics")
            assert metrics.status == 200
            assert metrics.headers["Content-Type"].startswith("text/plain")
            assert 'hybrid_compute_gpu_agent_up{node="dreamteam"} 0.0' in await metrics.text()
            assert (await http.get("/healthz")).status == 200

    asyncio.run(exercise())


def test_agent_command_takes_port_node_and_interval() -> None:
    args = build_parser().parse_args(["agent", "--port", "9500", "--node-name", "dreamteam",
                                      "--interval", "2"])
    assert (args.port, args.node_name, args.interval, args.proc_root) == (
        9500, "dreamteam", 2.0, "/proc")
    assert build_parser().parse_args(["agent"]).port == 9400


def test_each_process_is_named_by_its_command_where_the_agent_sees_it(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "comm").write_text("steam\n")
    nvml = FakeNvml([FakeGpu(used_bytes=18 * GIB,
                             processes=[ProcessMemory(4242, 18 * GIB),
                                        ProcessMemory(4343, GIB)])])
    reading = GpuReader("dreamteam", lambda: nvml, read_name=proc_name_reader(tmp_path)).read()
    processes = reading.gpus[0].processes or []
    assert [(p.pid, p.name) for p in processes] == [(4242, "steam"), (4343, None)]
