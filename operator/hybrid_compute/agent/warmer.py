"""Keeps the model files of Standby slots warm in the node's page cache.

The operator says which files it wants (``PUT /warm``: paths under the model
folder with a priority); every round the warmer reads the node's memory
pressure, plans with :func:`~hybrid_compute.agent.page_cache.plan_warming`,
reads (or locks) what the budget holds, evicts what it lets go, and measures the
residency of every wanted file for ``/snapshot`` and ``/metrics``.

Rounds run in a worker thread: reading a model from disk takes minutes, and the
HTTP endpoints must keep answering meanwhile. A read stops between blocks as soon
as memory runs short, so the next round can give the memory back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from hybrid_compute.agent.models import ModelFileRefused, ModelHeaders
from hybrid_compute.agent.page_cache import (
    NO_PRESSURE,
    LockedFile,
    LockRefused,
    MemoryPressure,
    ReleaseReason,
    WantedFile,
    cgroup_memory_limit,
    evict_file,
    measure_residency,
    plan_warming,
    proc_memory_pressure,
    warm_file,
)
from hybrid_compute.agent.snapshot import CachedFile, CacheState, PageCacheReport

logger = logging.getLogger("hybrid_compute.agent")

PRESSURE_COOLDOWN_SECONDS = 120.0
"""How long after the last high reading the warmer holds off reading again: the
stall average decays over tens of seconds, and refilling at once would flap."""
AGENT_OWN_MEMORY_BYTES = 192 * 1024 * 1024
"""What the agent itself needs besides the cache it holds (Python, NVML, buffers)."""


class _RequestModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="forbid")


class WarmFileRequest(_RequestModel):
    path: str
    """Relative to the node's model folder, as in ``spec.model.path``."""
    priority: float = 0
    host_path: str | None = None
    """The slot's ``spec.model.hostPath``; must be the folder this agent reads."""


class WarmRequest(_RequestModel):
    files: list[WarmFileRequest]
    budget_bytes: int | None = Field(default=None, ge=0)
    """Lowers the agent's own budget (``--page-cache-budget``), never raises it."""


@dataclasses.dataclass(frozen=True)
class _Wanted:
    name: str
    """The path as the operator gave it."""
    target: Path
    priority: float


class Warmer:
    def __init__(self, models: ModelHeaders, budget_bytes: int,
                 pressure: Callable[[], MemoryPressure], lock: bool = False,
                 cooldown_seconds: float = PRESSURE_COOLDOWN_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.models = models
        self.budget_bytes = budget_bytes
        self.lock = lock
        self._pressure = pressure
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._guard = threading.Lock()
        self._wanted: list[_Wanted] = []
        self._requested_budget: int | None = None
        self._held: dict[str, LockedFile | None] = {}
        """Files the warmer holds, by container path; the lock when there is one."""
        self._lock_refusals: dict[str, str] = {}
        self._paused_until = -math.inf
        self._released: collections.Counter[str] = collections.Counter()
        self._report = PageCacheReport(budget_bytes=budget_bytes, held_bytes=0, lock=lock,
                                       memory_pressure=False,
                                       pressure_reason=NO_PRESSURE.reason,
                                       host_path=models.host_path)
        self.wake = asyncio.Event()
        """Set by ``want`` so a new list is acted on without waiting for the interval."""

    def want(self, request: WarmRequest) -> None:
        """Replaces the wanted files. Raises :class:`ModelFileRefused` for a path
        outside the model folder, before anything changes."""
        wanted: list[_Wanted] = []
        seen: set[Path] = set()
        for entry in request.files:
            target = self.models.resolve(entry.path, entry.host_path)
            if target not in seen:
                seen.add(target)
                wanted.append(_Wanted(entry.path, target, entry.priority))
        with self._guard:
            self._wanted = wanted
            self._requested_budget = request.budget_bytes
            self._report = self._report.model_copy(update={
                "files": [CachedFile(path=w.name, priority=w.priority, state=CacheState.PENDING)
                          for w in wanted]})
        self.wake.set()

    def report(self) -> PageCacheReport:
        return self._report

    @property
    def effective_budget(self) -> int:
        requested = self._requested_budget
        return self.budget_bytes if requested is None else min(requested, self.budget_bytes)

    def step(self) -> PageCacheReport:
        """One round: plan, release, warm, measure. Blocking; runs in a thread."""
        with self._guard:
            wanted = list(self._wanted)
        budget = self.effective_budget
        pressure = self._pressure()
        now = self._clock()
        if pressure.high:
            self._paused_until = now + self._cooldown
        sizes: dict[str, int] = {}
        missing: dict[str, str] = {}
        for entry in wanted:
            try:
                sizes[str(entry.target)] = entry.target.stat().st_size
            except OSError as error:
                missing[str(entry.target)] = f"cannot read {entry.name}: {error.strerror}"
        plan = plan_warming(
            [WantedFile(str(w.target), sizes[str(w.target)], w.priority)
             for w in wanted if str(w.target) in sizes],
            budget, pressure, set(self._held),
            warming_paused=not pressure.high and now < self._paused_until)
        for path in plan.forget:
            self._let_go(path, evict=False)
        for path, reason in plan.release.items():
            self._let_go(path, evict=True)
            self._released[reason.value] += 1
            if reason is ReleaseReason.PRESSURE:
                logger.warning("released %s from the page cache: %s", path, pressure.reason)
        for path in plan.warm:
            if not self._hold(path):
                break
        report = self._measure(wanted, sizes, missing, plan.over_budget, budget, pressure)
        with self._guard:
            if self._wanted == wanted:
                self._report = report
        return report

    def _let_go(self, path: str, evict: bool) -> None:
        locked = self._held.pop(path, None)
        if locked is not None:
            locked.release()
        self._lock_refusals.pop(path, None)
        if evict:
            with contextlib.suppress(OSError):
                evict_file(path)

    def _hold(self, path: str) -> bool:
        """Makes the file resident (and locked if asked); False when memory ran
        short meanwhile and the round must stop reading."""
        if self._held.get(path) is not None:
            return True
        if self.lock and path not in self._lock_refusals:
            try:
                self._held[path] = LockedFile(path)
                return True
            except LockRefused as refused:
                logger.warning("holding %s without locking it: %s", path, refused)
                self._lock_refusals[path] = str(refused)
            except OSError as error:
                logger.warning("cannot lock %s: %s", path, error)
                return True
        interrupted = False

        def memory_short() -> bool:
            nonlocal interrupted
            interrupted = self._pressure().high
            return interrupted

        try:
            warm_file(path, stop=memory_short)
        except OSError as error:
            logger.warning("cannot read %s into the page cache: %s", path, error)
            return True
        # Held even when interrupted: what was read counts against the budget, and
        # the next round, under pressure, releases it.
        self._held[path] = None
        return not interrupted

    def _measure(self, wanted: list[_Wanted], sizes: dict[str, int], missing: dict[str, str],
                 over_budget: tuple[str, ...], budget: int,
                 pressure: MemoryPressure) -> PageCacheReport:
        files: list[CachedFile] = []
        held_bytes = 0
        for entry in wanted:
            path = str(entry.target)
            if path in missing:
                files.append(CachedFile(path=entry.name, priority=entry.priority,
                                        state=CacheState.MISSING, message=missing[path]))
                continue
            try:
                resident: int | None = measure_residency(path).resident_bytes
            except OSError:
                resident = None
            message: str | None = None
            if path in self._held:
                held_bytes += sizes[path]
                state = CacheState.LOCKED if self._held[path] else CacheState.HELD
                message = self._lock_refusals.get(path)
            elif path in over_budget:
                state = CacheState.OVER_BUDGET
                message = f"{sizes[path]} bytes do not fit the budget of {budget} beside " \
                          "higher-priority files"
            else:
                state = CacheState.PAUSED
                message = pressure.reason if pressure.high else "memory was short recently"
            files.append(CachedFile(path=entry.name, priority=entry.priority, state=state,
                                    size_bytes=sizes[path], resident_bytes=resident,
                                    message=message))
        return PageCacheReport(budget_bytes=budget, held_bytes=held_bytes, lock=self.lock,
                               memory_pressure=pressure.high, pressure_reason=pressure.reason,
                               released=dict(self._released), files=files,
                               host_path=self.models.host_path)

    async def run(self, interval: float) -> None:
        while True:
            self.wake.clear()
            try:
                await asyncio.to_thread(self.step)
            except Exception:
                logger.exception("page-cache round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), interval)


def parse_warm_request(body: object) -> WarmRequest:
    """The ``PUT /warm`` body; :class:`ModelFileRefused` (400) when it is malformed."""
    try:
        return WarmRequest.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in error.errors())
        raise ModelFileRefused(400, f"invalid warm request: {problems}") from None


def node_warmer(models: ModelHeaders, budget_bytes: int, lock: bool,
                psi_threshold_percent: float, available_floor_bytes: int,
                proc_root: Path = Path("/proc"),
                cgroup_root: Path = Path("/sys/fs/cgroup")) -> Warmer:
    """The warmer of ``hybrid-compute agent``, its budget kept inside the agent's
    own memory limit (the cache it reads is charged to its cgroup)."""
    limit = cgroup_memory_limit(cgroup_root)
    if limit is not None and budget_bytes > limit - AGENT_OWN_MEMORY_BYTES:
        fitted = max(0, limit - AGENT_OWN_MEMORY_BYTES)
        logger.warning("page-cache budget of %d bytes lowered to %d: the agent's memory limit "
                       "is %d bytes and the cache it reads counts against it; raise the "
                       "limit to hold more", budget_bytes, fitted, limit)
        budget_bytes = fitted
    return Warmer(models, budget_bytes,
                  proc_memory_pressure(psi_threshold_percent, available_floor_bytes, proc_root),
                  lock=lock)
