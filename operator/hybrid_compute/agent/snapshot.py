"""What the agent reports for one node: per GPU its memory, utilisation, temperature,
power and processes, or the reason it cannot.

:class:`GpuReader` turns NVML calls into a :class:`NodeSnapshot`. It never raises:
a missing library, a driver error or a GPU that fell off the bus become
``available: false`` with an ``error`` that says what happened, and the next
reading tries again. The operator reads the same model back from ``/snapshot``.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import logging
import re
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from hybrid_compute.agent.nvml import Nvml, NvmlError, ProcessMemory

logger = logging.getLogger("hybrid_compute.agent")

# Kubernetes puts each pod in a cgroup named after its UID: ``pod<uid>`` with the
# cgroupfs driver, ``kubepods-<qos>-pod<uid with underscores>.slice`` with systemd.
_POD_CGROUP = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


class SnapshotModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class GpuProcess(SnapshotModel):
    pid: int
    used_memory_bytes: int | None = None
    """None where the driver does not account memory per process."""
    attributed: bool = False
    """The agent read the process's cgroup, so ``pod_uid`` is known (None: not a pod)."""
    pod_uid: str | None = None
    name: str | None = None
    """The process's command name (``/proc/<pid>/comm``), where the agent can see it:
    what the operator names memory held outside its pods by."""


class GpuReading(SnapshotModel):
    index: int
    available: bool
    error: str | None = None
    """Why the GPU could not be read (lost, disappeared, driver error)."""
    uuid: str | None = None
    name: str | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_percent: int | None = None
    temperature_celsius: int | None = None
    power_watts: float | None = None
    processes: list[GpuProcess] | None = None
    """None when the driver cannot list processes on this device."""


class CacheState(enum.StrEnum):
    """Where a warm-standby model file stands in the agent's page-cache budget."""

    PENDING = "Pending"
    """Asked for; the warmer has not reached it yet."""
    HELD = "Held"
    """Within the budget: read into the page cache and kept there by re-reading."""
    LOCKED = "Locked"
    """Within the budget and locked in memory (``--lock``)."""
    OVER_BUDGET = "OverBudget"
    """Does not fit the budget beside higher-priority files."""
    PAUSED = "Paused"
    """Not held because memory is short, or was until recently."""
    MISSING = "Missing"
    """The file cannot be read."""


class CachedFile(SnapshotModel):
    path: str
    """As the operator named it, relative to the node's model folder."""
    priority: float
    state: CacheState
    size_bytes: int | None = None
    resident_bytes: int | None = None
    """Bytes of the file in the page cache now, whoever read them."""
    message: str | None = None
    """Why a file is not held or not locked."""


class PageCacheReport(SnapshotModel):
    budget_bytes: int
    held_bytes: int
    lock: bool
    """The agent was asked to lock held files in memory."""
    memory_pressure: bool
    pressure_reason: str
    released: dict[str, int] = {}
    """Files released since start, by reason (budget, pressure)."""
    host_path: str | None = None
    """The node folder the files are under (``--model-host-path``): the operator asks
    only for files there."""
    files: list[CachedFile] = []


class NodeSnapshot(SnapshotModel):
    node: str
    taken_at: datetime.datetime
    available: bool
    """NVML answered; False with ``error`` when the library or the driver failed."""
    error: str | None = None
    driver_version: str | None = None
    gpus: list[GpuReading] = []
    page_cache: PageCacheReport | None = None
    """The warm-standby model files; None when the agent has no page-cache budget."""


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID in a ``/proc/<pid>/cgroup`` file, or None for a process outside pods."""
    match = _POD_CGROUP.search(text)
    return match.group(1).replace("_", "-") if match else None


def proc_cgroup_reader(proc_root: Path) -> Callable[[int], str | None]:
    """Reads ``<proc_root>/<pid>/cgroup``; None when the process is not visible (the
    agent does not share the host's PID namespace, or the process ended)."""
    def read(pid: int) -> str | None:
        try:
            return (proc_root / str(pid) / "cgroup").read_text()
        except OSError:
            return None
    return read


def proc_name_reader(proc_root: Path) -> Callable[[int], str | None]:
    """Reads ``<proc_root>/<pid>/comm``, the command name; None when the process is
    not visible."""
    def read(pid: int) -> str | None:
        try:
            return (proc_root / str(pid) / "comm").read_text().strip() or None
        except OSError:
            return None
    return read


def _optional(read: Callable[[], int]) -> int | None:
    """A reading the device may lack a sensor for."""
    try:
        return read()
    except NvmlError as error:
        if error.not_supported:
            return None
        raise


class GpuReader:
    """Reads every GPU of a node. Keeps NVML initialised between readings and
    initialises it again after a driver-wide failure."""

    def __init__(self, node: str, load: Callable[[], Nvml],
                 read_cgroup: Callable[[int], str | None] | None = None,
                 clock: Callable[[], datetime.datetime] | None = None, *,
                 read_name: Callable[[int], str | None] | None = None) -> None:
        self.node = node
        self._load = load
        self._read_cgroup = read_cgroup or (lambda _pid: None)
        self._read_name = read_name or (lambda _pid: None)
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._nvml: Nvml | None = None
        self._known: dict[int, tuple[str, str]] = {}
        """index -> (uuid, name) of every GPU seen since start, to report one that
        disappears instead of silently listing fewer."""

    def _failed(self, error: str) -> NodeSnapshot:
        return NodeSnapshot(node=self.node, taken_at=self._clock(), available=False,
                            error=error)

    def read(self) -> NodeSnapshot:
        if self._nvml is None:
            try:
                nvml = self._load()
                nvml.init()
            except NvmlError as error:
                return self._failed(f"NVML unavailable: {error.message}")
            self._nvml = nvml
        nvml = self._nvml
        try:
            driver = nvml.driver_version()
            count = nvml.device_count()
        except NvmlError as error:
            # The driver itself failed: start afresh next time (it may be reloaded).
            self._nvml = None
            with contextlib.suppress(NvmlError):
                nvml.shutdown()
            return self._failed(f"NVML driver error: {error.message}")
        gpus = [self._read_gpu(nvml, index) for index in range(count)]
        for index in sorted(self._known):
            if index >= count:
                uuid, name = self._known[index]
                gpus.append(GpuReading(
                    index=index, available=False, uuid=uuid, name=name,
                    error=f"disappeared: the driver now reports {count} GPUs"))
        return NodeSnapshot(node=self.node, taken_at=self._clock(), available=True,
                            driver_version=driver, gpus=gpus)

    def _read_gpu(self, nvml: Nvml, index: int) -> GpuReading:
        try:
            uuid, name = nvml.uuid(index), nvml.name(index)
            self._known[index] = (uuid, name)
            used, total = nvml.memory(index)
            power = _optional(lambda: nvml.power_milliwatts(index))
            try:
                processes: list[GpuProcess] | None = [
                    self._attribute(p) for p in nvml.processes(index)]
            except NvmlError as error:
                if not error.not_supported:
                    raise
                processes = None
            return GpuReading(
                index=index, available=True, uuid=uuid, name=name,
                memory_used_bytes=used, memory_total_bytes=total,
                utilization_percent=_optional(lambda: nvml.utilization_percent(index)),
                temperature_celsius=_optional(lambda: nvml.temperature_celsius(index)),
                power_watts=power / 1000 if power is not None else None,
                processes=processes)
        except NvmlError as error:
            known = self._known.get(index)
            return GpuReading(index=index, available=False,
                              uuid=known[0] if known else None,
                              name=known[1] if known else None,
                              error=f"NVML error on GPU {index}: {error.message}")

    def _attribute(self, process: ProcessMemory) -> GpuProcess:
        cgroup = self._read_cgroup(process.pid)
        return GpuProcess(pid=process.pid, used_memory_bytes=process.used_bytes,
                          attributed=cgroup is not None,
                          pod_uid=pod_uid_from_cgroup(cgroup) if cgroup else None,
                          name=self._read_name(process.pid))
