"""An in-memory :class:`~hybrid_compute.agent.nvml.Nvml` for tests and demos: GPUs
can be added, lost or removed, and the driver can fail, between two readings."""

from __future__ import annotations

from dataclasses import dataclass, field

from hybrid_compute.agent.nvml import (
    ERROR_DRIVER_NOT_LOADED,
    ERROR_GPU_IS_LOST,
    ERROR_NOT_FOUND,
    ERROR_NOT_SUPPORTED,
    NvmlError,
    ProcessMemory,
)

GIB = 1024**3


@dataclass
class FakeGpu:
    """One simulated device; change its fields to change the next reading."""

    name: str = "NVIDIA GeForce RTX 3090"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total_bytes: int = 24 * GIB
    used_bytes: int = 0
    utilization_percent: int = 0
    temperature_celsius: int = 40
    power_milliwatts: int = 30_000
    processes: list[ProcessMemory] = field(default_factory=list)
    lost: bool = False
    """Every call on it fails with NVML_ERROR_GPU_IS_LOST (fell off the bus)."""
    unsupported: frozenset[str] = frozenset()
    """Readings this device has no sensor for: ``temperature``, ``power``, ..."""


@dataclass
class FakeNvml:
    gpus: list[FakeGpu] = field(default_factory=list)
    driver_error: NvmlError | None = None
    """When set, every call (init included) raises it."""
    driver: str = "580.95.05"
    initialised: bool = False
    init_calls: int = 0

    def _check(self) -> None:
        if self.driver_error is not None:
            raise self.driver_error
        if not self.initialised:
            raise NvmlError(1, "Uninitialized")

    def _gpu(self, index: int, reading: str = "") -> FakeGpu:
        self._check()
        if index >= len(self.gpus):
            raise NvmlError(ERROR_NOT_FOUND, "Not Found")
        gpu = self.gpus[index]
        if gpu.lost:
            raise NvmlError(ERROR_GPU_IS_LOST, "GPU is lost")
        if reading in gpu.unsupported:
            raise NvmlError(ERROR_NOT_SUPPORTED, "Not Supported")
        return gpu

    def init(self) -> None:
        self.init_calls += 1
        if self.driver_error is not None:
            raise self.driver_error
        self.initialised = True

    def shutdown(self) -> None:
        self.initialised = False

    def driver_version(self) -> str:
        self._check()
        return self.driver

    def device_count(self) -> int:
        self._check()
        return len(self.gpus)

    def name(self, index: int) -> str:
        return self._gpu(index).name

    def uuid(self, index: int) -> str:
        return self._gpu(index).uuid

    def memory(self, index: int) -> tuple[int, int]:
        gpu = self._gpu(index, "memory")
        return gpu.used_bytes, gpu.total_bytes

    def utilization_percent(self, index: int) -> int:
        return self._gpu(index, "utilization").utilization_percent

    def temperature_celsius(self, index: int) -> int:
        return self._gpu(index, "temperature").temperature_celsius

    def power_milliwatts(self, index: int) -> int:
        return self._gpu(index, "power").power_milliwatts

    def processes(self, index: int) -> list[ProcessMemory]:
        return list(self._gpu(index, "processes").processes)


def driver_not_loaded() -> NvmlError:
    return NvmlError(ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded")
