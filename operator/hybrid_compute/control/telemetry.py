"""What the GPU agents tell the operator: memory held by processes that are not the
operator's pods (subtracted from each GPU's budget in ``plan``), utilisation
(:mod:`hybrid_compute.plan.routing` calls a GPU above the RoutePolicy's threshold busy),
the memory each slot's ready pods hold (its measured VRAM), the header of the
model file of each GPU slot without ``spec.model.vram`` (its estimated VRAM, see
:mod:`hybrid_compute.plan.model_vram`) and how much of each warm model file the page
cache holds. The other way, each agent with a page-cache budget is sent the plan's
warm list for its node (:mod:`hybrid_compute.plan.warm_standby`).

The agents are polled in the background, never inside a reconcile: a slow or
unreachable agent cannot stall the loop. Without an answer from a node the plan
proceeds as if nothing foreign held memory there, and the log says so once. A
warm list is sent only when it differs from what the agent reports holding (so
again after the agent restarts); an agent that cannot take it is logged once and
asked again at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from pydantic import TypeAdapter, ValidationError

from hybrid_compute.agent.metrics import gpu_id
from hybrid_compute.agent.models import ModelFileRefused
from hybrid_compute.agent.nvml import load_nvml
from hybrid_compute.agent.server import AgentService
from hybrid_compute.agent.snapshot import (
    GpuReader,
    GpuReading,
    NodeSnapshot,
    PageCacheReport,
    proc_cgroup_reader,
    proc_name_reader,
)
from hybrid_compute.agent.warmer import WarmFileRequest, WarmRequest
from hybrid_compute.plan.ledger import parse_gpu_ids
from hybrid_compute.plan.model_vram import ModelFileKey, model_file_key
from hybrid_compute.plan.view import FileResidency, ForeignProcess, PodInfo, View
from hybrid_compute.plan.vram import ModelShape
from hybrid_compute.plan.warm_standby import WarmFile
from hybrid_compute.render.children import DEFAULT_HOST_PATH
from hybrid_compute.server.metrics import OperatorMetrics

logger = logging.getLogger("hybrid_compute.control.telemetry")

POLL_SECONDS = 5.0
DEPARTED_GRACE = datetime.timedelta(seconds=20)
"""How long a pod that went away still counts as the operator's in a snapshot: the
agent's reading and the operator's poll (5 s each) may both predate its exit.
Without this, a model just unloaded would look like a stranger's memory and block
the model swapping in."""
FETCH_TIMEOUT_SECONDS = 2.0
HEADER_TIMEOUT_SECONDS = 10.0
"""Reading a header maps the file and walks its tensor table: slower than a snapshot
on a cold disk, once per file (the agent keeps the shape until the file changes)."""

HeaderAnswer = ModelShape | str | None
"""A model file's shape, the agent's reason it has none, or None: no agent answered."""
_SHAPE = TypeAdapter(ModelShape)


def _ours_on_gpu(gpu: str, node: str, node_gpus: int, pods: Iterable[PodInfo],
                 recorded: Mapping[tuple[str, str, str], str]) -> int:
    """VRAM the operator's pods hold on one device, by the plan's own figures."""
    total = 0
    for pod in pods:
        if pod.node != node or not pod.gpus or not pod.vram_bytes:
            continue
        where = parse_gpu_ids(recorded.get((pod.kind, pod.namespace, pod.owner)))
        if gpu in where or (node_gpus == 1 and not any(w.startswith(f"{node}/")
                                                        for w in where)):
            total += pod.vram_bytes // pod.gpus
    return total


def foreign_processes(reading: GpuReading, gpu: str, node: str, node_gpus: int,
                      pods: tuple[PodInfo, ...], recorded: Mapping[tuple[str, str, str], str]
                      ) -> tuple[ForeignProcess, ...]:
    """Memory on one GPU held by what the operator did not start, largest first.

    When the agent could match every process to its pod (it reads each process's
    cgroup, which needs the host's PID namespace), foreign memory is exactly the
    processes that are not the operator's pods, each named, so a model using more
    than its ``vram`` estimate is not mistaken for a stranger. Otherwise (no
    per-process accounting, no PID access, or an empty list, which is what a
    container without the host's PIDs sees) it is one unnamed entry: the memory
    used less what the plan counts for the operator's pods on that GPU, none when
    that is not above zero (a pod still loading uses less than planned, and nothing
    foreign hides behind that).
    """
    processes = reading.processes
    if processes and all(p.attributed and p.used_memory_bytes is not None for p in processes):
        ours = {p.uid for p in pods if p.node == node and p.uid}
        found = [ForeignProcess(p.used_memory_bytes or 0, p.pid, p.name)
                 for p in processes if p.pod_uid not in ours and p.used_memory_bytes]
        return tuple(sorted(found, key=lambda f: (-f.bytes, f.pid or 0)))
    used = reading.memory_used_bytes or 0
    beyond = used - _ours_on_gpu(gpu, node, node_gpus, pods, recorded)
    return (ForeignProcess(beyond),) if beyond > 0 else ()


def foreign_use(snapshots: Iterable[NodeSnapshot], view: View,
                departed: Iterable[PodInfo] = ()) -> dict[str, tuple[ForeignProcess, ...]]:
    """The foreign processes per GPU id, for every GPU an agent could read.
    ``departed`` are the operator's pods that went away so recently that a snapshot
    may predate their exit: their memory is still the operator's, not a stranger's."""
    nodes = {n.name: n for n in view.nodes}
    pods = (*view.pods, *departed)
    recorded: dict[tuple[str, str, str], str] = {}
    for slot in view.slots:
        recorded[("ModelSlot", slot.namespace, slot.name)] = slot.status.gpu or ""
    for workload in view.workloads:
        recorded[("GpuWorkload", workload.namespace, workload.name)] = (
            workload.status.gpu or "")
    result: dict[str, tuple[ForeignProcess, ...]] = {}
    for snapshot in snapshots:
        node = nodes.get(snapshot.node)
        if node is None or not snapshot.available:
            continue
        for reading in snapshot.gpus:
            if not reading.available or reading.memory_used_bytes is None:
                continue
            gpu = gpu_id(snapshot.node, reading.index)
            result[gpu] = foreign_processes(reading, gpu, snapshot.node, node.gpu_count, pods,
                                            recorded)
    return result


def foreign_vram(snapshots: Iterable[NodeSnapshot], view: View,
                 departed: Iterable[PodInfo] = ()) -> dict[str, int]:
    """Foreign bytes per GPU id for every GPU an agent could read."""
    return {gpu: sum(p.bytes for p in processes)
            for gpu, processes in foreign_use(snapshots, view, departed).items()}


def measured_vram(snapshots: Iterable[NodeSnapshot], view: View) -> dict[tuple[str, str], int]:
    """Bytes per slot held by the processes of its ready pods, where the agent matched
    processes to pods and accounts their memory. A pod still loading holds less than
    it will, so only ready ones are measured."""
    pods = {p.uid: (p.namespace, p.owner) for p in view.pods
            if p.kind == "ModelSlot" and p.uid and p.ready and not p.terminating}
    result: dict[tuple[str, str], int] = {}
    for snapshot in snapshots:
        for reading in snapshot.gpus:
            for process in reading.processes or ():
                owner = pods.get(process.pod_uid or "")
                if owner is not None and process.used_memory_bytes is not None:
                    result[owner] = result.get(owner, 0) + process.used_memory_bytes
    return result


def wanted_model_files(view: View) -> set[ModelFileKey]:
    """The model files whose header the plan needs: GPU slots without spec.model.vram."""
    wanted: set[ModelFileKey] = set()
    for slot in view.slots:
        spec = slot.spec
        if spec is None or spec.device != "gpu" or spec.model.vram:
            continue
        key = model_file_key(spec, view.settings)
        if key is not None:
            wanted.add(key)
    return wanted


def shape_from_answer(status: int, body: object) -> HeaderAnswer:
    """An agent's /gguf answer as a shape or the agent's reason; None when the answer
    is not one the agent gives (an old agent without /gguf, a proxy's error page)."""
    if status == 200:
        try:
            return _SHAPE.validate_python(body)
        except ValidationError:
            return None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and status in (
            400, 404, 422):
        return str(body["error"])
    return None


def page_cache_residency(snapshots: Iterable[NodeSnapshot]
                         ) -> dict[ModelFileKey, dict[str, FileResidency]]:
    """(node folder, file) -> node -> how much of it the page cache holds, for the
    files the agents keep warm."""
    result: dict[ModelFileKey, dict[str, FileResidency]] = {}
    for snapshot in snapshots:
        report = snapshot.page_cache
        if report is None:
            continue
        folder = report.host_path or DEFAULT_HOST_PATH
        for entry in report.files:
            result.setdefault((folder, entry.path), {})[snapshot.node] = FileResidency(
                entry.state.value, entry.size_bytes, entry.resident_bytes)
    return result


def _cache_figures(snapshots: Iterable[NodeSnapshot]) -> dict[ModelFileKey, dict[str, Any]]:
    """The residency as the slots' statuses show it: a change here is worth a plan."""
    return {file: {node: (found.state, found.size_bytes, found.resident_percent)
                   for node, found in nodes.items()}
            for file, nodes in page_cache_residency(snapshots).items()}


def warm_request(files: Sequence[WarmFile]) -> dict[str, Any]:
    """The ``PUT /warm`` body the agent takes (:class:`~hybrid_compute.agent.warmer.
    WarmRequest`); no ``budgetBytes``: the agent's own budget applies."""
    return WarmRequest(files=[
        WarmFileRequest(path=f.path, priority=f.priority, host_path=f.host_path)
        for f in files]).model_dump(mode="json", by_alias=True, exclude_none=True)


def _held(report: PageCacheReport) -> list[tuple[str, float]]:
    return [(entry.path, entry.priority) for entry in report.files]


def _listed(files: Sequence[WarmFile]) -> list[tuple[str, float]]:
    return [(f.path, f.priority) for f in files]


@dataclass(frozen=True)
class WarmProblem:
    """Why an agent did not take a warm list."""

    message: str
    retry: bool
    """The agent did not answer, or failed: ask again next round. False: it refused
    this list, which is sent again only once it changes."""


def gpu_utilisation(snapshots: Iterable[NodeSnapshot]) -> dict[str, float]:
    """Utilisation percent per GPU id, for GPUs that report it."""
    return {gpu_id(s.node, g.index): float(g.utilization_percent)
            for s in snapshots for g in s.gpus
            if g.available and g.utilization_percent is not None}


class SnapshotSource(Protocol):
    name: str

    async def fetch(self, nodes: list[str]) -> tuple[list[NodeSnapshot], list[str]]:
        """Snapshots that came back, and one line per agent that did not answer."""
        ...

    async def model_header(self, node: str, file: ModelFileKey) -> HeaderAnswer:
        """The header of ``file`` as the agent on ``node`` reads it."""
        ...

    async def warm(self, node: str, files: Sequence[WarmFile]) -> WarmProblem | None:
        """Asks the agent on ``node`` to keep ``files`` warm; None when it took them."""
        ...


class HttpAgents:
    """Agents reached over HTTP. A URL may contain ``{node}``, filled in with each
    GPU node's name (agents on the host network of nodes whose names resolve, as
    k3s's DNS does)."""

    name = "http"

    def __init__(self, urls: list[str], timeout: float = FETCH_TIMEOUT_SECONDS) -> None:
        self.urls = urls
        self.timeout = timeout
        self.node_urls: dict[str, str] = {}
        """The URL each node's snapshot last came from."""

    def base_url(self, node: str) -> str:
        """The agent that serves ``node``: the one whose snapshot names it, else the
        first URL naming nodes, else the first."""
        if node in self.node_urls:
            return self.node_urls[node]
        for url in self.urls:
            if "{node}" in url:
                return url.format(node=node).rstrip("/")
        return self.urls[0].rstrip("/")

    async def model_header(self, node: str, file: ModelFileKey) -> HeaderAnswer:
        host_path, path = file
        timeout = aiohttp.ClientTimeout(total=HEADER_TIMEOUT_SECONDS)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                    f"{self.base_url(node)}/gguf",
                    params={"path": path, "hostPath": host_path}) as response:
                body = await response.json(content_type=None)
                return shape_from_answer(response.status, body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            logger.debug("reading the header of %s from %s failed: %s", path, node, error)
            return None

    def targets(self, nodes: list[str]) -> list[str]:
        targets: list[str] = []
        for url in self.urls:
            expanded = [url.format(node=n) for n in nodes] if "{node}" in url else [url]
            targets += [f"{u.rstrip('/')}/snapshot" for u in expanded]
        return targets

    async def fetch(self, nodes: list[str]) -> tuple[list[NodeSnapshot], list[str]]:
        snapshots: list[NodeSnapshot] = []
        problems: list[str] = []
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(target: str) -> None:
                try:
                    async with session.get(target) as response:
                        response.raise_for_status()
                        snapshot = NodeSnapshot.model_validate(await response.json())
                    snapshots.append(snapshot)
                    self.node_urls[snapshot.node] = target.removesuffix("/snapshot")
                except (aiohttp.ClientError, TimeoutError, ValueError,
                        ValidationError) as error:
                    problems.append(f"{target}: {type(error).__name__}: {error}".rstrip(": "))
            await asyncio.gather(*(one(t) for t in self.targets(nodes)))
        return snapshots, problems

    async def warm(self, node: str, files: Sequence[WarmFile]) -> WarmProblem | None:
        url = f"{self.base_url(node)}/warm"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.put(
                    url, json=warm_request(files)) as response:
                if response.status == 200:
                    return None
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            return WarmProblem(f"{url}: {type(error).__name__}: {error}".rstrip(": "),
                               retry=True)
        reason = text.strip()[:200]
        with contextlib.suppress(ValueError, AttributeError):
            reason = str(json.loads(text).get("error") or reason)
        return WarmProblem(f"{url} answered {status}: {reason}", retry=status >= 500)


class LocalAgent:
    """The agent inside the operator process (single-node installs)."""

    name = "local"

    def __init__(self, service: AgentService) -> None:
        self.service = service

    async def fetch(self, nodes: list[str]) -> tuple[list[NodeSnapshot], list[str]]:
        return [await self.service.refresh()], []

    async def model_header(self, node: str, file: ModelFileKey) -> HeaderAnswer:
        models = self.service.models
        if models is None:
            return "the operator's local GPU agent has no model folder"
        try:
            return await asyncio.to_thread(models.shape, file[1], file[0])
        except ModelFileRefused as refused:
            return refused.message

    async def warm(self, node: str, files: Sequence[WarmFile]) -> WarmProblem | None:
        return WarmProblem("the operator's local GPU agent keeps no page cache; run "
                           "hybrid-compute agent --page-cache-budget on the node",
                           retry=False)


@dataclass
class GpuTelemetry:
    """Polls a source and keeps the latest snapshot per node."""

    source: SnapshotSource
    interval: float = POLL_SECONDS
    snapshots: dict[str, NodeSnapshot] = field(default_factory=dict)
    metrics: OperatorMetrics | None = None
    headers: dict[ModelFileKey, ModelShape | str] = field(default_factory=dict)
    """The model files' shapes (or why not) the agents gave, for the plan's estimates."""
    _wanted_headers: set[ModelFileKey] = field(default_factory=set)
    _problems: list[str] = field(default_factory=list)
    _pods: dict[tuple[str, str, str], PodInfo] = field(default_factory=dict)
    _departed: dict[tuple[str, str, str], tuple[PodInfo, datetime.datetime]] = field(
        default_factory=dict)
    _warm_wanted: dict[str, tuple[WarmFile, ...]] | None = None
    """The plan's warm list per node; None before the first plan (an agent keeps what
    it holds until then) and on a replica that does not lead."""
    _warm_sent: dict[str, tuple[WarmFile, ...]] = field(default_factory=dict)
    """The list each agent took."""
    _warm_refused: dict[str, tuple[WarmFile, ...]] = field(default_factory=dict)
    _warm_failing: dict[str, str] = field(default_factory=dict)
    """Nodes whose agent did not take its list, and why (logged once)."""
    _warm_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def annotate(self, view: View, now: datetime.datetime) -> View:
        """The view with the latest figures, counting pods that just went away."""
        current = {(p.namespace, p.name, p.uid): p for p in view.pods}
        for key, pod in self._pods.items():
            if key not in current:
                self._departed[key] = (pod, now)
        self._pods = current
        self._departed = {key: (pod, gone) for key, (pod, gone) in self._departed.items()
                          if now - gone < DEPARTED_GRACE and key not in current}
        self._wanted_headers = wanted_model_files(view)
        headers = {k: v for k, v in self.headers.items() if k in self._wanted_headers}
        return with_telemetry(view, self.snapshots.values(),
                              [pod for pod, _gone in self._departed.values()], headers)

    def want_warm(self, lists: Mapping[str, tuple[WarmFile, ...]] | None) -> None:
        """The plan's warm lists; the background task sends what changed at once.
        None (a replica that stopped leading) sends nothing more."""
        wanted = dict(lists) if lists is not None else None
        if wanted != self._warm_wanted:
            self._warm_wanted = wanted
            self._warm_changed.set()

    async def push_warm(self) -> list[str]:
        """Sends each agent with a page cache its node's warm list where it differs
        from what the agent took; returns the nodes sent to. Only files under the
        agent's own folder are sent: it refuses a list naming any other."""
        self._warm_changed.clear()
        if self._warm_wanted is None:
            return []
        sent: list[str] = []
        for node, snapshot in sorted(self.snapshots.items()):
            report, wanted = snapshot.page_cache, self._warm_wanted.get(node)
            if report is None or wanted is None:
                continue
            files = tuple(f for f in wanted if report.host_path in (None, f.host_path))
            if files in (self._warm_sent.get(node), self._warm_refused.get(node)):
                continue
            if node not in self._warm_sent and _held(report) == _listed(files):
                # Sent by this operator before it restarted: sending it again would
                # only reset the agent's report to Pending.
                self._warm_sent[node] = files
                continue
            problem = await self.source.warm(node, files)
            if problem is None:
                self._warm_sent[node] = files
                self._warm_refused.pop(node, None)
                self._warm_failing.pop(node, None)
                logger.info("the GPU agent on %s keeps warm: %s", node,
                            ", ".join(f.path for f in files) or "nothing")
                sent.append(node)
                continue
            if not problem.retry:
                self._warm_refused[node] = files
            if not problem.retry or node not in self._warm_failing:
                logger.warning("the GPU agent on %s did not take the warm list, going on "
                               "without it: %s", node, problem.message)
            self._warm_failing[node] = problem.message
        return sent

    def _forget_lost_warm_lists(self) -> None:
        """An agent that reports other files than it took (it restarted, or someone
        else sent it a list) is sent its list again."""
        for node, files in list(self._warm_sent.items()):
            snapshot = self.snapshots.get(node)
            if snapshot is None or snapshot.page_cache is None:
                continue
            if _held(snapshot.page_cache) != _listed(files):
                logger.info("the GPU agent on %s no longer holds its warm list (restarted?); "
                            "sending it again", node)
                del self._warm_sent[node]

    async def read_headers(self, nodes: list[str]) -> bool:
        """Asks for the headers the last view needs; True when one changed. The agent
        of the first GPU node that answers is asked: model folders are alike on the
        nodes of one install (and in the single-node box, there is one)."""
        wanted = sorted(self._wanted_headers)
        answering = sorted(self.snapshots) or sorted(nodes)
        self.headers = {k: v for k, v in self.headers.items() if k in self._wanted_headers}
        if not wanted or not answering:
            return False
        answers = await asyncio.gather(*(self.source.model_header(answering[0], file)
                                         for file in wanted))
        changed = False
        for file, answer in zip(wanted, answers, strict=True):
            # No answer keeps what an earlier one said: the file did not change for it.
            if answer is not None and self.headers.get(file) != answer:
                if isinstance(answer, str):
                    logger.warning("cannot estimate VRAM from %s: %s", file[1], answer)
                self.headers[file] = answer
                changed = True
        return changed

    async def poll(self, nodes: list[str]) -> bool:
        """One round; True when the figures the plan reads changed."""
        fetched, problems = await self.source.fetch(nodes)
        if self.metrics is not None:
            self.metrics.agent_reachable.labels(self.source.name).set(0 if problems else 1)
        if problems != self._problems:
            for line in problems:
                logger.warning("GPU agent unreachable, planning without its figures: %s",
                               line)
            if not problems and self._problems:
                logger.info("GPU agents answer again")
            self._problems = problems
        before = {n: (s.available, [(g.available, g.memory_used_bytes, g.utilization_percent)
                                    for g in s.gpus]) for n, s in self.snapshots.items()}
        cache_before = _cache_figures(self.snapshots.values())
        # A node whose agent did not answer drops out: its last figures may be stale.
        self.snapshots = {s.node: s for s in fetched}
        after = {n: (s.available, [(g.available, g.memory_used_bytes, g.utilization_percent)
                                   for g in s.gpus]) for n, s in self.snapshots.items()}
        self._forget_lost_warm_lists()
        headers_changed = await self.read_headers(nodes)
        return (before != after or headers_changed
                or cache_before != _cache_figures(self.snapshots.values()))

    @property
    def reachable(self) -> bool:
        return not self._problems

    async def run(self, nodes: Callable[[], list[str]], changed: Callable[[], None]) -> None:
        """Polls every ``interval`` and sends warm lists after each poll, and as soon
        as the plan changes one in between."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if await self.poll(nodes()):
                    changed()
                await self.push_warm()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reading the GPU agents failed; trying again")
            deadline = loop.time() + self.interval
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._warm_changed.wait(), left)
                if self._warm_changed.is_set():
                    try:
                        await self.push_warm()
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        logger.exception("sending the warm lists failed; trying again")


def with_telemetry(view: View, snapshots: Iterable[NodeSnapshot],
                   departed: Iterable[PodInfo] = (),
                   headers: Mapping[ModelFileKey, ModelShape | str] | None = None) -> View:
    """The view with the agents' foreign memory, utilisation, measured slot memory,
    model headers and page-cache residency filled in."""
    latest = list(snapshots)
    foreign = foreign_use(latest, view, departed)
    return replace(view, foreign_vram={gpu: sum(p.bytes for p in found)
                                       for gpu, found in foreign.items()},
                   foreign_processes={gpu: found for gpu, found in foreign.items() if found},
                   gpu_utilisation=gpu_utilisation(latest),
                   measured_vram=measured_vram(latest, view),
                   model_headers=dict(headers or {}),
                   page_cache=page_cache_residency(latest))


LOCAL_AGENT = "local"


def from_options(agents: Iterable[str], metrics: OperatorMetrics) -> GpuTelemetry | None:
    """``--gpu-agent`` values: ``local`` (read NVML in this process; the node is
    ``$NODE_NAME``, else the host name) or agent URLs; none plans without telemetry."""
    chosen = list(agents)
    if not chosen:
        return None
    if LOCAL_AGENT in chosen:
        node = os.environ.get("NODE_NAME") or socket.gethostname()
        reader = GpuReader(node, load_nvml, proc_cgroup_reader(Path("/proc")),
                           read_name=proc_name_reader(Path("/proc")))
        return GpuTelemetry(LocalAgent(AgentService(reader)), metrics=metrics)
    return GpuTelemetry(HttpAgents(chosen), metrics=metrics)
