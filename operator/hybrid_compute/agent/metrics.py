"""Prometheus metrics of the GPU agent, built from the latest snapshot at scrape time.

A custom collector rather than long-lived gauges: a GPU that disappears, or a
process that ends, leaves no stale series behind. The registry is the agent's
own, so an operator that hosts the agent in-process keeps the two apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hybrid_compute.agent.snapshot import GpuReading, NodeSnapshot

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


def agent_registry(latest: Callable[[], NodeSnapshot | None]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(latest))
    return registry
