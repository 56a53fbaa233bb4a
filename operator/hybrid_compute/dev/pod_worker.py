"""One pod on the process node, played as the kubelet plays it.

A :class:`PodWorker` runs the pod's containers (see :mod:`containers` for which
program plays which image), probes them, restarts them per ``restartPolicy``
with a short backoff, reports the pod's status (phase, conditions, container
states with ``restartCount`` and the last termination, the pod's address) and,
once the pod is being deleted, stops them (SIGTERM, the grace period, SIGKILL)
and removes the pod object.

Init containers are reported as completed without running: their one use here
is the model fetch step, and the local cluster writes its models itself (the
fetch would reach the network, which the local cluster never needs).

Images without a local program are simulated with kwok's stages and delay
annotations (see ``kwok-stages.yaml``): created after ``pod-create``, Running and
Ready after ``pod-ready``, a Job's container completes after ``pod-complete``
(1 s by default), deletion waits ``pod-delete``. Such a pod carries the
condition ``dev.hybridcompute.io/Simulated`` that says so. A real program's pod
honours ``pod-ready`` too: its probes start that long after the container did, as
if its model took that long to load (a test's tiny model loads in moments).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from hybrid_compute.dev import containers
from hybrid_compute.dev.containers import ContainerConfigError, Program
from hybrid_compute.dev.kube_rest import STRATEGIC_MERGE_PATCH, KubeError, KubeRest
from hybrid_compute.dev.probes import ProbeSpec, ProbeTracker, run_probe

SIMULATED_CONDITION = "dev.hybridcompute.io/Simulated"
CREATE_DELAY = "pod-create.stage.kwok.x-k8s.io/delay"
READY_DELAY = "pod-ready.stage.kwok.x-k8s.io/delay"
COMPLETE_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
DELETE_DELAY = "pod-delete.stage.kwok.x-k8s.io/delay"
DEFAULT_JOB_SECONDS = 1.0
TICK_SECONDS = 0.2
MIN_TICK_SECONDS = 0.005
# Restarts wait 1 s, 2 s, 4 s, then 8 s (the kubelet's 10 s to 5 min would make a
# local crash loop tedious to watch); a run of a minute resets the backoff.
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 8.0
BACKOFF_RESET_SECONDS = 60.0
CONFIG_RETRY_SECONDS = 1.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str | None) -> float | None:
    """Seconds in a Go duration such as ``1.5s`` or ``1m30s``; None when absent or
    unreadable."""
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def now_text() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Programs:
    """The local programs that play images; None where one is not built."""

    llama_server: Path | None
    litellm: Path | None


class NodeContext(Protocol):
    """What a pod worker needs from its node agent."""

    kube: KubeRest
    node: str
    models: Path
    host_folder: Path
    """Plays the node's root for the hostPath folders it creates."""
    http: aiohttp.ClientSession

    @property
    def programs(self) -> Programs: ...

    def record(self, event: str, **fields: Any) -> None: ...


@dataclass
class ContainerRun:
    """One container of the pod and the process (or simulation) that plays it."""

    spec: dict[str, Any]
    program: Program
    restart_count: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    started: bool = False
    ready: bool = False
    waiting: tuple[str, str] = ("ContainerCreating", "")
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    restart_at: float = 0.0
    backoff: float = 0.0
    probes: dict[str, ProbeTracker] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.terminated is None

    def status(self) -> dict[str, Any]:
        if self.terminated is not None:
            state: dict[str, Any] = {"terminated": self.terminated}
        elif self.started_at is not None:
            state = {"running": {"startedAt": self.started_at}}
        else:
            reason, message = self.waiting
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status: dict[str, Any] = {
            "name": self.name, "image": self.spec.get("image", ""), "imageID": "",
            "ready": self.ready, "started": self.started, "restartCount": self.restart_count,
            "state": state, "lastState": ({"terminated": self.last_terminated}
                                          if self.last_terminated else {}),
        }
        if self.process is not None:
            status["containerID"] = f"process://{self.process.pid}"
        return status


def _exit_record(code: int, started_at: str | None, pid: int | None) -> dict[str, Any]:
    """A terminated state; a signal death reads as the shell reports it (128 + n)."""
    exit_code = 128 - code if code < 0 else code
    record: dict[str, Any] = {"exitCode": exit_code,
                              "reason": "Completed" if exit_code == 0 else "Error",
                              "startedAt": started_at or now_text(), "finishedAt": now_text()}
    if code < 0:
        record["signal"] = -code
    if pid is not None:
        record["containerID"] = f"process://{pid}"
    return record


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


class PodWorker:
    """Plays one pod from its first sight until its object is deleted."""

    def __init__(self, context: NodeContext, pod: dict[str, Any], ip: str, folder: Path,
                 release: Callable[[PodWorker], None]) -> None:
        self.context = context
        self.pod = pod
        self.ip = ip
        self.folder = folder
        self._release = release
        metadata = pod["metadata"]
        self.uid: str = metadata["uid"]
        self.namespace: str = metadata["namespace"]
        self.name: str = metadata["name"]
        self.annotations: dict[str, str] = metadata.get("annotations") or {}
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.is_job = any(o.get("kind") == "Job" for o in metadata.get("ownerReferences") or [])
        self.containers = [ContainerRun(c, containers.program_for(c.get("image", "")))
                           for c in spec["containers"]]
        self.init_containers: list[dict[str, Any]] = spec.get("initContainers") or []
        self.simulated = [c.name for c in self.containers if c.program is Program.SIMULATED]
        self.first_seen = time.monotonic()
        self.start_time = now_text()
        self.initialized = False
        self.vanished = False
        # A pod that finished before this agent started keeps the status it has.
        self.finished_before = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        self.finished = self.finished_before
        self._transitions: dict[str, tuple[str, str]] = {}
        self._reported: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        """Set when the pod object changed or went away: the next tick comes at once."""

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.pod["metadata"].get("labels") or {})

    @property
    def ready(self) -> bool:
        return (self.initialized and not self.finished and self.pod["metadata"].get(
            "deletionTimestamp") is None and all(c.ready for c in self.containers))

    @property
    def running(self) -> bool:
        """A container runs, whether or not it is Ready."""
        return not self.finished and any(c.running for c in self.containers)

    def update(self, pod: dict[str, Any]) -> None:
        """The pod's newer version, from the node's watch."""
        self.pod = pod
        self._changed.set()

    def vanish(self) -> None:
        """The pod object is gone: its containers stop without their grace."""
        self.vanished = True
        self._changed.set()

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.containers
                if c.process is not None and c.process.poll() is None]

    def _delay(self, annotation: str, default: float = 0.0) -> float:
        seconds = go_duration(self.annotations.get(annotation))
        return default if seconds is None else seconds

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                if self.vanished:
                    await self.stop_all(grace_cap=0)
                    return
                if self.pod["metadata"].get("deletionTimestamp"):
                    await self._delete()
                    return
                await self._tick(time.monotonic())
                await self._report()
                await self._pause()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.context.record("worker-error", pod=self.name, namespace=self.namespace,
                                error=f"{type(error).__name__}: {error}")
            await self.stop_all(grace_cap=5)
        finally:
            self._release(self)

    async def _pause(self) -> None:
        """Until the next tick: a probe falling due, the tick period, or a change of
        the pod, whichever comes first."""
        now = time.monotonic()
        due = [tracker.next_at - now for run in self.containers
               for kind, tracker in run.probes.items()
               if kind == "startupProbe" or run.started]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(),
                                   max(MIN_TICK_SECONDS, min([TICK_SECONDS, *due])))
        self._changed.clear()

    async def _tick(self, now: float) -> None:
        if self.finished:
            return
        if not self.initialized:
            if self.simulated and now - self.first_seen < self._delay(CREATE_DELAY):
                return
            self.initialized = True
        for run in self.containers:
            if run.program is Program.SIMULATED:
                self._simulate(run, now)
            else:
                await self._drive(run, now)
        if self.restart_policy != "Always" and all(c.terminated for c in self.containers):
            self.finished = True

    # ------------------------------------------------------------- simulation

    def _simulate(self, run: ContainerRun, now: float) -> None:
        since = now - self.first_seen - self._delay(CREATE_DELAY)
        if run.started_at is None and since >= self._delay(READY_DELAY):
            run.started_at, run.started_mono = now_text(), now
            run.started = run.ready = True
        if (self.is_job and run.running
                and now - run.started_mono >= self._delay(COMPLETE_DELAY, DEFAULT_JOB_SECONDS)):
            run.terminated = _exit_record(0, run.started_at, None)
            run.started = run.ready = False

    # --------------------------------------------------------------- processes

    async def _drive(self, run: ContainerRun, now: float) -> None:
        if run.process is not None and run.terminated is None:
            code = run.process.poll()
            if code is not None:
                self._exited(run, code, now)
        if run.terminated is not None:
            if self._restarts(run) and now >= run.restart_at:
                await self._start(run, now)
            return
        if run.process is None:
            if now >= run.restart_at:
                await self._start(run, now)
            return
        await self._probe(run, now)

    def _restarts(self, run: ContainerRun) -> bool:
        assert run.terminated is not None
        return (self.restart_policy == "Always"
                or (self.restart_policy == "OnFailure" and run.terminated["exitCode"] != 0))

    def _exited(self, run: ContainerRun, code: int, now: float) -> None:
        pid = run.process.pid if run.process else None
        run.terminated = _exit_record(code, run.started_at, pid)
        run.started = run.ready = False
        self.context.record("exited", pid=pid, namespace=self.namespace, pod=self.name,
                            container=run.name, exitCode=run.terminated["exitCode"])
        if self._restarts(run):
            ran = now - run.started_mono
            run.backoff = (FIRST_BACKOFF_SECONDS if run.backoff == 0 or ran > BACKOFF_RESET_SECONDS
                           else min(run.backoff * 2, MAX_BACKOFF_SECONDS))
            run.restart_at = now + run.backoff

    async def _start(self, run: ContainerRun, now: float) -> None:
        if run.terminated is not None:
            run.last_terminated = run.terminated
            run.terminated = None
            run.restart_count += 1
        run.started_at = None
        run.process = None
        run.restart_at = now + CONFIG_RETRY_SECONDS
        try:
            argv, env = await self._command(run)
        except ContainerConfigError as error:
            run.waiting = (error.reason, str(error))
            return
        except KubeError as error:
            run.waiting = ("CreateContainerConfigError", str(error))
            return
        if argv is None:
            return
        log_path = self.folder / f"{run.name}.log"
        with log_path.open("ab") as log:
            log.write(f"\n=== start {run.restart_count} at {now_text()} ===\n".encode())
            log.flush()
            run.process = subprocess.Popen(argv, env=env, cwd=self.folder, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
        run.started_at, run.started_mono = now_text(), now
        run.started = "startupProbe" not in run.spec
        run.ready = False
        # The ready delay holds the probes back, as a model that long to load would.
        probing_from = now + self._delay(READY_DELAY)
        run.probes = {kind: ProbeTracker(ProbeSpec.from_spec(run.spec[kind], run.spec),
                                         probing_from)
                      for kind in ("startupProbe", "readinessProbe", "livenessProbe")
                      if kind in run.spec}
        self.context.record("started", pid=run.process.pid, namespace=self.namespace,
                            pod=self.name, container=run.name, ip=self.ip, argv=argv)

    async def _objects(self) -> dict[tuple[str, str], dict[str, str] | None]:
        found: dict[tuple[str, str], dict[str, str] | None] = {}
        for kind, name in containers.referenced_objects(self.pod):
            plural = "secrets" if kind == "Secret" else "configmaps"
            try:
                body = await self.context.kube.get(
                    f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
            except KubeError as error:
                if error.status != 404:
                    raise
                found[(kind, name)] = None
            else:
                found[(kind, name)] = containers.object_data(kind, body)
        return found

    async def _command(self, run: ContainerRun) -> tuple[list[str] | None, dict[str, str]]:
        programs = self.context.programs
        binary = (programs.llama_server if run.program is Program.LLAMA_SERVER
                  else programs.litellm)
        if binary is None:
            run.waiting = ("ProgramNotBuilt", f"no local {run.program.value} to play "
                           f"{run.spec.get('image')}: run `make serving`")
            return None, {}
        objects = await self._objects()
        volumes = containers.pod_volumes(self.pod, self.folder, self.context.models, objects,
                                         host_folder=self.context.host_folder)
        for volume in volumes.values():
            if volume.path != self.context.models:
                volume.path.mkdir(parents=True, exist_ok=True)
            for key, text in volume.files.items():
                (volume.path / key).write_text(text)
        mounts = containers.mount_paths(run.spec, volumes)
        env = containers.environment(run.spec, self.pod, self.ip, objects, os.environ,
                                     mounts)
        if run.program is Program.LLAMA_SERVER:
            argv = containers.llama_server_command(binary, run.spec, self.ip, mounts,
                                                   containers.thread_cap())
        else:
            argv = containers.litellm_command(binary, run.spec, self.ip, mounts)
        return argv, env

    async def _probe(self, run: ContainerRun, now: float) -> None:
        due = [(kind, tracker) for kind, tracker in run.probes.items() if tracker.due(now)
               and (kind == "startupProbe" or run.started)]
        if not due:
            if "readinessProbe" not in run.probes:
                run.ready = run.started
            return
        results = await asyncio.gather(*(run_probe(t.spec, self.ip, self.context.http)
                                          for _, t in due))
        for (kind, tracker), passed in zip(due, results, strict=True):
            tracker.record(passed, time.monotonic())
            if kind == "startupProbe" and tracker.passing is not None:
                if tracker.passing:
                    run.started = True
                    del run.probes[kind]
                else:
                    await self._restart_unhealthy(run, "startup probe failed")
                    return
            elif kind == "readinessProbe" and tracker.passing is not None:
                run.ready = tracker.passing
            elif kind == "livenessProbe" and tracker.passing is False:
                await self._restart_unhealthy(run, "liveness probe failed")
                return
        if "readinessProbe" not in run.probes:
            run.ready = run.started

    async def _restart_unhealthy(self, run: ContainerRun, why: str) -> None:
        self.context.record("unhealthy", namespace=self.namespace, pod=self.name,
                            container=run.name, why=why)
        await self._stop(run, self._grace())

    # ---------------------------------------------------------------- stopping

    def _grace(self) -> float:
        metadata = self.pod["metadata"]
        seconds = metadata.get("deletionGracePeriodSeconds")
        if seconds is None:
            seconds = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(seconds)

    async def _stop(self, run: ContainerRun, grace: float) -> None:
        process = run.process
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            _signal_group(process, signal.SIGKILL)
            while process.poll() is None:
                await asyncio.sleep(0.02)
        # The whole group goes: a program's own children must not outlive it.
        _signal_group(process, signal.SIGKILL)
        code = process.poll()
        assert code is not None
        self._exited(run, code, time.monotonic())

    async def stop_all(self, grace_cap: float | None = None) -> None:
        grace = self._grace() if grace_cap is None else min(self._grace(), grace_cap)
        await asyncio.gather(*(self._stop(run, grace) for run in self.containers))

    async def _delete(self) -> None:
        if self.simulated:
            deletion_seen = time.monotonic()
            while time.monotonic() - deletion_seen < self._delay(DELETE_DELAY):
                await asyncio.sleep(TICK_SECONDS)
        await self.stop_all()
        for run in self.containers:
            run.ready = False
        with contextlib.suppress(KubeError):
            await self._report()
        with contextlib.suppress(KubeError):
            await self.context.kube.delete(self.path, {
                "gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})

    # ------------------------------------------------------------------ status

    def _condition(self, kind: str, status: bool, reason: str = "",
                   message: str = "") -> dict[str, Any]:
        value = "True" if status else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != value:
            self._transitions[kind] = (value, now_text())
        condition: dict[str, Any] = {"type": kind, "status": value,
                                     "lastProbeTime": None,
                                     "lastTransitionTime": self._transitions[kind][1]}
        # None removes what an earlier status said (the patch is a strategic merge).
        condition["reason"] = reason or None
        condition["message"] = message or None
        return condition

    def _phase(self) -> str:
        if self.finished or (self.restart_policy != "Always"
                             and all(c.terminated for c in self.containers)):
            codes = [c.terminated["exitCode"] for c in self.containers if c.terminated]
            return "Succeeded" if codes and all(code == 0 for code in codes) else "Failed"
        if all(c.started_at is not None or c.last_terminated for c in self.containers):
            return "Running"
        return "Pending"

    def status(self) -> dict[str, Any]:
        phase = self._phase()
        ready = self.ready and phase == "Running"
        not_ready_reason = "PodCompleted" if phase in ("Succeeded", "Failed") else (
            "" if ready else "ContainersNotReady")
        conditions = [
            self._condition("PodReadyToStartContainers", self.initialized),
            self._condition("Initialized", self.initialized),
            self._condition("ContainersReady", ready, not_ready_reason),
            self._condition("Ready", ready, not_ready_reason),
        ]
        if self.simulated:
            images = ", ".join(sorted({c.spec.get("image", "") for c in self.containers
                                       if c.program is Program.SIMULATED}))
            conditions.append(self._condition(
                SIMULATED_CONDITION, True, "NoLocalProgram",
                f"the process node runs no program for {images}: containers "
                f"{', '.join(self.simulated)} are simulated with kwok's stages"))
        status: dict[str, Any] = {
            "phase": phase, "conditions": conditions,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [{
                "name": init["name"], "image": init.get("image", ""), "imageID": "",
                "ready": self.initialized, "started": False, "restartCount": 0,
                "state": ({"terminated": {
                    "exitCode": 0, "reason": "Completed", "startedAt": self.start_time,
                    "finishedAt": self.start_time,
                    "message": "not run: the local cluster writes its models itself"}}
                    if self.initialized else {"waiting": {"reason": "PodInitializing"}}),
            } for init in self.init_containers]
        return status

    async def _report(self) -> None:
        if self.finished_before:
            return
        status = self.status()
        text = json.dumps(status, sort_keys=True)
        if text == self._reported:
            return
        await self.context.kube.patch(f"{self.path}/status", {"status": status},
                                      STRATEGIC_MERGE_PATCH)
        self._reported = text
