"""Prometheus metrics of the GPU agent, built from the latest snapshot at scrape time.

A custom collector rather than long-lived gauges: a GPU that disappears, or a
process that ends, leaves no stale series behind. The registry is the agent's
own, so an operator that hosts the agent in-process keeps the two apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hybrid_compute.agent.page_cache import ReleaseReason
from hybrid_compute.agent.snapshot import CacheState, GpuReading, NodeSnapshot, PageCacheReport

GPU_LABELS = ["node", "gpu"]
"""``gpu`` is ``<node>/<index>``, the id the operator uses for the same device."""


def gpu_id(node: str, index: int) -> str:
    return f"{node}/{index}"


class SnapshotCollector(Collector):
    def __init__(self, latest: Callable[[], NodeSnapshot | None]) -> None:
        self._latest = latest

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._latest())

    def _families(self, snapshot: NodeSnapshot | None) -> list[Metric]:
        up = GaugeMetricFamily(
            "hybrid_compute_gpu_agent_up",
            "1 when NVML answered at the last reading, 0 when the library or driver failed",
            labels=["node"])
        last = GaugeMetricFamily(
            "hybrid_compute_gpu_agent_last_reading_timestamp_seconds",
            "When the agent last read the GPUs (Unix time)", labels=["node"])
        driver = GaugeMetricFamily(
            "hybrid_compute_gpu_driver_info", "The NVIDIA driver version (always 1)",
            labels=["node", "driver_version"])
        info = GaugeMetricFamily(
            "hybrid_compute_gpu_info", "Identity of each GPU (always 1)",
            labels=[*GPU_LABELS, "uuid", "name"])
        available = GaugeMetricFamily(
            "hybrid_compute_gpu_available",
            "1 when the GPU could be read, 0 when it is lost, gone or erroring",
            labels=GPU_LABELS)
        used = GaugeMetricFamily("hybrid_compute_gpu_memory_used_bytes",
                                 "GPU memory in use, by every process", labels=GPU_LABELS)
        total = GaugeMetricFamily("hybrid_compute_gpu_memory_total_bytes",
                                  "GPU memory installed", labels=GPU_LABELS)
        utilization = GaugeMetricFamily(
            "hybrid_compute_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU (0-1)",
            labels=GPU_LABELS)
        temperature = GaugeMetricFamily("hybrid_compute_gpu_temperature_celsius",
                                        "GPU core temperature", labels=GPU_LABELS)
        power = GaugeMetricFamily("hybrid_compute_gpu_power_watts", "GPU power draw",
                                  labels=GPU_LABELS)
        process = GaugeMetricFamily(
            "hybrid_compute_gpu_process_memory_bytes",
            "GPU memory per process; pod_uid is empty for processes outside pods",
            labels=[*GPU_LABELS, "pid", "pod_uid"])
        families: list[Metric] = [up, last, driver, info, available, used, total, utilization,
                                  temperature, power, process]
        if snapshot is None:
            return families
        node = snapshot.node
        up.add_metric([node], 1 if snapshot.available else 0)
        last.add_metric([node], snapshot.taken_at.timestamp())
        if snapshot.driver_version:
            driver.add_metric([node, snapshot.driver_version], 1)
        for reading in snapshot.gpus:
            self._add_gpu(node, reading, info, available, used, total, utilization,
                          temperature, power, process)
        return families

    @staticmethod
    def _add_gpu(node: str, reading: GpuReading, info: GaugeMetricFamily,
                 available: GaugeMetricFamily, used: GaugeMetricFamily,
                 total: GaugeMetricFamily, utilization: GaugeMetricFamily,
                 temperature: GaugeMetricFamily, power: GaugeMetricFamily,
                 process: GaugeMetricFamily) -> None:
        labels = [node, gpu_id(node, reading.index)]
        if reading.uuid:
            info.add_metric([*labels, reading.uuid, reading.name or ""], 1)
        available.add_metric(labels, 1 if reading.available else 0)
        for family, value in ((used, reading.memory_used_bytes),
                              (total, reading.memory_total_bytes),
                              (temperature, reading.temperature_celsius),
                              (power, reading.power_watts)):
            if value is not None:
                family.add_metric(labels, value)
        if reading.utilization_percent is not None:
            utilization.add_metric(labels, reading.utilization_percent / 100)
        for entry in reading.processes or []:
            if entry.used_memory_bytes is not None:
                process.add_metric([*labels, str(entry.pid), entry.pod_uid or ""],
                                   entry.used_memory_bytes)


class PageCacheCollector(Collector):
    """The warm-standby model files: residency per file, the budget, releases."""

    def __init__(self, node: str, report: Callable[[], PageCacheReport]) -> None:
        self._node = node
        self._report = report

    def collect(self) -> Iterable[Metric]:
        report = self._report()
        node = self._node
        resident = GaugeMetricFamily(
            "hybrid_compute_page_cache_resident_bytes",
            "Bytes of a wanted model file in the node's page cache", labels=["node", "file"])
        size = GaugeMetricFamily("hybrid_compute_page_cache_file_size_bytes",
                                 "Size of a wanted model file", labels=["node", "file"])
        held = GaugeMetricFamily(
            "hybrid_compute_page_cache_held",
            "1 when the agent holds the file warm within its budget (2 when locked)",
            labels=["node", "file"])
        budget = GaugeMetricFamily("hybrid_compute_page_cache_budget_bytes",
                                   "RAM the agent may fill with warm model files",
                                   labels=["node"])
        pressure = GaugeMetricFamily(
            "hybrid_compute_page_cache_memory_pressure",
            "1 while the node's memory is short and the agent gives its budget back",
            labels=["node"])
        released = CounterMetricFamily(
            "hybrid_compute_page_cache_released",
            "Model files the agent evicted, by reason (budget, pressure)",
            labels=["node", "reason"])
        budget.add_metric([node], report.budget_bytes)
        pressure.add_metric([node], 1 if report.memory_pressure else 0)
        for reason in ReleaseReason:
            released.add_metric([node, reason.value], report.released.get(reason.value, 0))
        for entry in report.files:
            if entry.resident_bytes is not None:
                resident.add_metric([node, entry.path], entry.resident_bytes)
            if entry.size_bytes is not None:
                size.add_metric([node, entry.path], entry.size_bytes)
            held.add_metric([node, entry.path], {CacheState.HELD: 1, CacheState.LOCKED: 2}
                            .get(entry.state, 0))
        return [resident, size, held, budget, pressure, released]


def agent_registry(latest: Callable[[], NodeSnapshot | None],
                   page_cache: PageCacheCollector | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(latest))
    if page_cache is not None:
        registry.register(page_cache)
    return registry
