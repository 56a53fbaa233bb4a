"""The page cache as the warm-standby models need it: how much of a file is resident
(``mincore``), reading a file into the cache, locking it there (``mlock``), letting
it go (``POSIX_FADV_DONTNEED``), the node's memory pressure, and the pure plan of
which files to hold within a RAM budget.

A Standby slot's llama-server starts by mapping its GGUF file; when the file is
already in the page cache the load runs at memory speed instead of disk speed,
which is most of a swap's time for a model on a spinning or network disk.

Python has no ``mincore`` or ``mlock``: they are called through ``ctypes`` on a
read-only shared mapping made with libc's own ``mmap`` (a Python ``mmap`` object
only hands out its address when it is writable, and ``mlock`` on a private
writable mapping would copy every page instead of pinning the cached ones).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import enum
import errno
import os
import resource
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
WARM_BLOCK_BYTES = 16 * 1024 * 1024
"""Reads of this size keep the disk streaming without a large buffer."""
_MINCORE_CHUNK_PAGES = 256 * 1024
"""Pages asked about per ``mincore`` call (1 GiB of 4 KiB pages), so the answer
vector stays small whatever the file's size."""
_RESIDENT_BIT = bytes(value & 1 for value in range(256))
"""``mincore`` sets bit 0 of a page's byte when it is resident; the others are reserved."""

_PROT_READ = 0x1
_MAP_SHARED = 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value


def _load_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mmap.restype = ctypes.c_void_p
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.munmap.restype = ctypes.c_int
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                             ctypes.POINTER(ctypes.c_ubyte)]
    libc.mincore.restype = ctypes.c_int
    for name in ("mlock", "munlock"):
        function = getattr(libc, name)
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        function.restype = ctypes.c_int
    return libc


_libc = _load_libc()


def _os_error(call: str, path: str | os.PathLike[str]) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call}: {os.strerror(code)}", os.fspath(path))


@dataclasses.dataclass(frozen=True)
class Residency:
    size_bytes: int
    resident_bytes: int

    @property
    def ratio(self) -> float:
        """Share of the file in the page cache (1.0 for an empty file: nothing to read)."""
        return self.resident_bytes / self.size_bytes if self.size_bytes else 1.0


class _Mapping:
    """A read-only shared mapping of a whole file, unmapped on exit."""

    def __init__(self, fd: int, length: int, path: str | os.PathLike[str]) -> None:
        address = _libc.mmap(None, length, _PROT_READ, _MAP_SHARED, fd, 0)
        if address is None or address == _MAP_FAILED:
            raise _os_error("mmap", path)
        self.address: int = address
        self.length = length

    def close(self) -> None:
        if self.length:
            _libc.munmap(self.address, self.length)
            self.length = 0

    def __enter__(self) -> _Mapping:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _resident_pages(mapping: _Mapping, path: str | os.PathLike[str]) -> bytes:
    """One byte per page of the mapping: 1 when the page is resident, else 0 (a byte
    rather than a bool object keeps a 32 GiB file's answer at 8 MiB)."""
    pages = -(-mapping.length // PAGE_SIZE)
    found = bytearray()
    vector = (ctypes.c_ubyte * min(pages, _MINCORE_CHUNK_PAGES))()
    for first in range(0, pages, _MINCORE_CHUNK_PAGES):
        count = min(_MINCORE_CHUNK_PAGES, pages - first)
        length = min(count * PAGE_SIZE, mapping.length - first * PAGE_SIZE)
        if _libc.mincore(mapping.address + first * PAGE_SIZE, length, vector) != 0:
            raise _os_error("mincore", path)
        found += bytes(vector)[:count].translate(_RESIDENT_BIT)
    return bytes(found)


def _resident_bytes(pages: bytes, size: int) -> int:
    resident = pages.count(1) * PAGE_SIZE
    tail = size % PAGE_SIZE
    if tail and pages and pages[-1]:
        resident -= PAGE_SIZE - tail
    return resident


def measure_residency(path: str | os.PathLike[str]) -> Residency:
    """How much of the file the page cache holds now."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return Residency(0, 0)
        with _Mapping(fd, size, path) as mapping:
            return Residency(size, _resident_bytes(_resident_pages(mapping, path), size))
    finally:
        os.close(fd)


def warm_file(path: str | os.PathLike[str], stop: Callable[[], bool] | None = None,
              block_bytes: int = WARM_BLOCK_BYTES) -> int:
    """Reads the parts of the file that are not resident; returns the bytes read.

    ``stop`` is asked between blocks, so memory pressure can interrupt a long read.
    While one block is read, WILLNEED has the kernel fetch the next, so the disk
    never waits on Python; it is asked one block ahead only, because read-ahead
    of the whole file could not be stopped. When ``stop`` ends the read, the block
    already asked for is waited for: pages still under I/O are locked, and an
    eviction that came before they land would leave them resident.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0
        # Our WILLNEED is the read-ahead; the kernel's own would run on past a stop.
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_RANDOM)
        with _Mapping(fd, size, path) as mapping:
            resident = _resident_pages(mapping, path)
        pages_per_block = max(1, block_bytes // PAGE_SIZE)
        block = pages_per_block * PAGE_SIZE
        cold_blocks = [first_page * PAGE_SIZE
                       for first_page in range(0, len(resident), pages_per_block)
                       if 0 in resident[first_page:first_page + pages_per_block]]
        buffer = bytearray(block)
        read = 0
        for index, offset in enumerate(cold_blocks):
            if stop is not None and stop():
                if index > 0:
                    os.preadv(fd, [buffer], offset)
                break
            if index + 1 < len(cold_blocks):
                os.posix_fadvise(fd, cold_blocks[index + 1], block, os.POSIX_FADV_WILLNEED)
            read += os.preadv(fd, [buffer], offset)
        return read
    finally:
        os.close(fd)


def evict_file(path: str | os.PathLike[str]) -> None:
    """Asks the kernel to drop the file's clean, unmapped pages from the cache.

    Pages another process maps (a running llama-server) stay: the kernel only
    drops what nobody uses, which is why releasing never hurts a loaded model.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class LockRefused(Exception):
    """``mlock`` failed; the message says why and what would allow it."""


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes; None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


class LockedFile:
    """A file mapped and locked into memory until :meth:`release`.

    ``mlock`` reads every page it does not find in the cache, so locking also warms.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.size_bytes = os.fstat(fd).st_size
            self._mapping = _Mapping(fd, self.size_bytes, path) if self.size_bytes else None
        finally:
            # The mapping keeps the file open in the kernel's eyes.
            os.close(fd)
        if self._mapping is not None and _libc.mlock(self._mapping.address,
                                                     self._mapping.length) != 0:
            code = ctypes.get_errno()
            self._mapping.close()
            limit = memlock_limit()
            allowance = ("no limit" if limit is None
                         else f"RLIMIT_MEMLOCK is {limit} bytes")
            hint = (" (give the agent CAP_IPC_LOCK or raise RLIMIT_MEMLOCK)"
                    if code in (errno.ENOMEM, errno.EPERM, errno.EAGAIN) else "")
            raise LockRefused(f"cannot lock {self.size_bytes} bytes: {os.strerror(code)}; "
                              f"{allowance}{hint}")

    def release(self) -> None:
        if self._mapping is not None:
            _libc.munlock(self._mapping.address, self._mapping.length)
            self._mapping.close()
            self._mapping = None


# Memory pressure


@dataclasses.dataclass(frozen=True)
class MemoryPressure:
    high: bool
    reason: str
    """What was read and against which threshold, for logs and the snapshot."""
    shortfall_bytes: int | None = None
    """How much must be given back to get above the MemAvailable floor; None when
    only stall time says memory is short (the amount is then unknown)."""


NO_PRESSURE = MemoryPressure(high=False, reason="not read")


def _psi_some_avg10(text: str) -> float | None:
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "some":
            for field in fields[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    return float(value)
    return None


def _mem_available_bytes(text: str) -> int | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable":
            return int(value.split()[0]) * 1024
    return None


def memory_pressure(psi_text: str | None, meminfo_text: str | None,
                    psi_threshold_percent: float, available_floor_bytes: int) -> MemoryPressure:
    """Reads the pressure from ``/proc/pressure/memory`` (share of the last 10 s some
    task stalled on memory) and ``/proc/meminfo``'s MemAvailable.

    Both count when both exist: stall time shows a squeeze once it hurts, the floor
    shows it coming (and is the only signal on kernels without PSI).
    """
    stalled = _psi_some_avg10(psi_text) if psi_text else None
    available = _mem_available_bytes(meminfo_text) if meminfo_text else None
    if available is not None and available < available_floor_bytes:
        return MemoryPressure(True, f"MemAvailable {available} bytes is below the floor of "
                                    f"{available_floor_bytes}",
                              shortfall_bytes=available_floor_bytes - available)
    if stalled is not None and stalled >= psi_threshold_percent:
        return MemoryPressure(True, f"tasks stalled on memory {stalled:.1f}% of the last 10 s "
                                    f"(threshold {psi_threshold_percent:g}%)")
    readings = [f"memory stall {stalled:.1f}%" if stalled is not None else "",
                f"MemAvailable {available} bytes" if available is not None else ""]
    return MemoryPressure(False, ", ".join(r for r in readings if r) or "nothing to read")


def _read_optional(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def proc_memory_pressure(psi_threshold_percent: float, available_floor_bytes: int,
                         proc_root: Path = Path("/proc")) -> Callable[[], MemoryPressure]:
    """The node's pressure, read afresh at each call (``/proc`` is the host's in a pod)."""
    def read() -> MemoryPressure:
        return memory_pressure(_read_optional(proc_root / "pressure" / "memory"),
                               _read_optional(proc_root / "meminfo"),
                               psi_threshold_percent, available_floor_bytes)
    return read


def cgroup_memory_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of the agent's own cgroup (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``); None when there is none.

    Page cache the agent reads is charged to its cgroup: a budget above the limit
    would be reclaimed as fast as it is read, or, locked, get the agent killed.
    """
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        text = _read_optional(cgroup_root / name)
        if text is None:
            continue
        value = text.strip()
        if value == "max" or not value.isdigit() or int(value) >= 1 << 60:
            return None
        return int(value)
    return None


# The plan


@dataclasses.dataclass(frozen=True)
class WantedFile:
    path: str
    size_bytes: int
    priority: float
    """Higher first; among equals, the earlier in the list first."""


class ReleaseReason(enum.StrEnum):
    BUDGET = "budget"
    """Higher-priority files took its room."""
    PRESSURE = "pressure"
    """Given back to the node because memory ran short."""


@dataclasses.dataclass(frozen=True)
class WarmingPlan:
    warm: tuple[str, ...] = ()
    """Files to make, or keep, fully resident this round, highest priority first."""
    keep: tuple[str, ...] = ()
    """Held files left as they are: no reading while memory is short or recovering."""
    release: dict[str, ReleaseReason] = dataclasses.field(default_factory=dict)
    """Held files to unlock and evict."""
    forget: tuple[str, ...] = ()
    """Held files no longer wanted: unlocked but not evicted, because a slot that
    leaves Standby is about to read its file."""
    over_budget: tuple[str, ...] = ()
    """Wanted files that do not fit the budget beside higher-priority ones."""

    @property
    def held(self) -> tuple[str, ...]:
        return self.warm + self.keep


def by_priority(wanted: Sequence[WantedFile]) -> list[WantedFile]:
    order = {id(entry): index for index, entry in enumerate(wanted)}
    return sorted(wanted, key=lambda entry: (-entry.priority, order[id(entry)]))


def plan_warming(wanted: Sequence[WantedFile], budget_bytes: int, pressure: MemoryPressure,
                 held: Collection[str], warming_paused: bool = False) -> WarmingPlan:
    """Which files to hold in the page cache and which to let go.

    Whole files only, never more than ``budget_bytes`` together: in priority order,
    each file that fits beside those before it (a large file that does not fit
    leaves the room to smaller, lower-priority ones). Under pressure nothing is
    read and held files are released lowest priority first, enough to cover the
    shortfall when it is known, else one per round until the pressure is gone.
    ``warming_paused`` (the pressure has just ended) holds what is left without
    reading more, so the agent does not refill the memory the node just needed.
    """
    wanted_paths = {entry.path for entry in wanted}
    fitting: list[WantedFile] = []
    over_budget: list[str] = []
    room = budget_bytes
    for entry in by_priority(wanted):
        if entry.size_bytes <= room:
            fitting.append(entry)
            room -= entry.size_bytes
        else:
            over_budget.append(entry.path)
    release = {path: ReleaseReason.BUDGET for path in over_budget if path in held}
    forget = tuple(path for path in held if path not in wanted_paths)
    if not pressure.high and not warming_paused:
        return WarmingPlan(warm=tuple(entry.path for entry in fitting), release=release,
                           forget=forget, over_budget=tuple(over_budget))
    kept = [entry for entry in fitting if entry.path in held]
    if pressure.high:
        to_cover = pressure.shortfall_bytes
        while kept:
            lowest = kept.pop()
            release[lowest.path] = ReleaseReason.PRESSURE
            if to_cover is None:
                break
            to_cover -= lowest.size_bytes
            if to_cover <= 0:
                break
    return WarmingPlan(keep=tuple(entry.path for entry in kept), release=release,
                       forget=forget, over_budget=tuple(over_budget))
