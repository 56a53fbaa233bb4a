"""The narrow boundary to NVIDIA's management library (NVML).

The agent needs a handful of calls; :class:`Nvml` names them, :class:`PynvmlNvml`
implements them over ``pynvml`` (the nvidia-ml-py package), and tests use
:class:`tests.fake_nvml.FakeNvml`. Every failure crosses the boundary
as :class:`NvmlError`, so the rest of the agent never imports ``pynvml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# NVML return codes the agent treats specially (values from nvml.h).
ERROR_NOT_SUPPORTED = 3
ERROR_NOT_FOUND = 6
ERROR_DRIVER_NOT_LOADED = 9
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_GPU_IS_LOST = 15
ERROR_UNKNOWN = 999

TEMPERATURE_SENSOR_GPU = 0


class NvmlError(Exception):
    """An NVML call failed; ``code`` is NVML's return code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def not_supported(self) -> bool:
        """The device cannot report this value (a sensor it lacks): not a fault."""
        return self.code == ERROR_NOT_SUPPORTED


@dataclass(frozen=True)
class ProcessMemory:
    """A process with a context on a GPU; ``used_bytes`` is None where the driver
    does not account it per process."""

    pid: int
    used_bytes: int | None


class Nvml(Protocol):
    """The NVML calls the agent makes, by device index."""

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def driver_version(self) -> str: ...

    def device_count(self) -> int: ...

    def name(self, index: int) -> str: ...

    def uuid(self, index: int) -> str: ...

    def memory(self, index: int) -> tuple[int, int]:
        """(used, total) bytes."""
        ...

    def utilization_percent(self, index: int) -> int: ...

    def temperature_celsius(self, index: int) -> int: ...

    def power_milliwatts(self, index: int) -> int: ...

    def processes(self, index: int) -> list[ProcessMemory]:
        """Compute and graphics processes, each pid once."""
        ...


ResultT = TypeVar("ResultT")


class PynvmlNvml:
    """:class:`Nvml` over ``pynvml``; imported lazily so a machine without the
    package's shared library still starts the agent and reports why."""

    def __init__(self) -> None:
        # pynvml ships no type information; through import_module it is plainly Any.
        self._pynvml: Any = importlib.import_module("pynvml")

    def _call(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        try:
            return function(*args)
        except self._pynvml.NVMLError as error:
            code = int(getattr(error, "value", ERROR_UNKNOWN))
            raise NvmlError(code, str(error)) from error

    def _handle(self, index: int) -> Any:
        return self._call(self._pynvml.nvmlDeviceGetHandleByIndex, index)

    def init(self) -> None:
        self._call(self._pynvml.nvmlInit)

    def shutdown(self) -> None:
        self._call(self._pynvml.nvmlShutdown)

    def driver_version(self) -> str:
        return _text(self._call(self._pynvml.nvmlSystemGetDriverVersion))

    def device_count(self) -> int:
        return int(self._call(self._pynvml.nvmlDeviceGetCount))

    def name(self, index: int) -> str:
        return _text(self._call(self._pynvml.nvmlDeviceGetName, self._handle(index)))

    def uuid(self, index: int) -> str:
        return _text(self._call(self._pynvml.nvmlDeviceGetUUID, self._handle(index)))

    def memory(self, index: int) -> tuple[int, int]:
        info = self._call(self._pynvml.nvmlDeviceGetMemoryInfo, self._handle(index))
        return int(info.used), int(info.total)

    def utilization_percent(self, index: int) -> int:
        rates = self._call(self._pynvml.nvmlDeviceGetUtilizationRates, self._handle(index))
        return int(rates.gpu)

    def temperature_celsius(self, index: int) -> int:
        return int(self._call(self._pynvml.nvmlDeviceGetTemperature, self._handle(index),
                              TEMPERATURE_SENSOR_GPU))

    def power_milliwatts(self, index: int) -> int:
        return int(self._call(self._pynvml.nvmlDeviceGetPowerUsage, self._handle(index)))

    def processes(self, index: int) -> list[ProcessMemory]:
        handle = self._handle(index)
        seen: dict[int, ProcessMemory] = {}
        for query in (self._pynvml.nvmlDeviceGetComputeRunningProcesses,
                      self._pynvml.nvmlDeviceGetGraphicsRunningProcesses):
            for process in self._call(query, handle):
                used = process.usedGpuMemory
                seen.setdefault(int(process.pid), ProcessMemory(
                    int(process.pid), int(used) if used is not None else None))
        return list(seen.values())


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def load_nvml() -> Nvml:
    """The real library; raises :class:`NvmlError` when the package is missing."""
    try:
        return PynvmlNvml()
    except ImportError as error:
        raise NvmlError(ERROR_LIBRARY_NOT_FOUND,
                        f"the nvidia-ml-py package is not installed: {error}") from error
