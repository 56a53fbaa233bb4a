"""The operator's picture of the cluster: plain, immutable data that ``plan`` reads.

Nothing here talks to the API server; :mod:`hybrid_compute.control.observe` builds a
:class:`View` from API objects, and tests build them by hand.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from hybrid_compute.api.gpuworkload import GpuWorkloadSpec, GpuWorkloadStatus
from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus
from hybrid_compute.api.routepolicy import RoutePolicySpec, RoutePolicyStatus
from hybrid_compute.plan.settings import PlanSettings

if TYPE_CHECKING:
    from hybrid_compute.plan.evaluation import EvaluationResult
    from hybrid_compute.plan.prompt_cache import PromptCacheOutcomes
    from hybrid_compute.plan.vram import ModelShape

@dataclass(frozen=True)
class GpuNode:
    """A node that advertises NVIDIA GPUs (device plugin + GPU Feature Discovery)."""

    name: str
    gpu_count: int
    gpu_memory_bytes: int
    """Memory of each device (label nvidia.com/gpu.memory, MiB)."""
    replicas: int
    """Time-slicing replicas per device; 1 means whole devices."""
    allocatable: int
    """nvidia.com/gpu allocatable (devices x replicas)."""
    ready: bool = True
    product: str = ""

    @property
    def time_sliced(self) -> bool:
        return self.replicas > 1

    def gpu_ids(self) -> list[str]:
        return [f"{self.name}/{index}" for index in range(self.gpu_count)]


@dataclass(frozen=True)
class FetchProgress:
    """The fetch-model init container of a slot's pod, while it runs or after it failed."""

    state: Literal["Fetching", "Failed"]
    bytes: int | None = None
    total_bytes: int | None = None
    message: str = ""

    @property
    def percent(self) -> float | None:
        if self.bytes is None or not self.total_bytes:
            return None
        return round(min(100.0, 100.0 * self.bytes / self.total_bytes), 1)


@dataclass(frozen=True)
class PodInfo:
    """A pod of a slot's Deployment, Terminating ones included: they still hold VRAM."""

    name: str
    namespace: str
    owner: str
    """Name of the ModelSlot or GpuWorkload the pod belongs to."""
    node: str | None
    vram_bytes: int
    gpus: int
    template_hash: str
    ready: bool
    terminating: bool
    phase: str = "Pending"
    kind: str = "ModelSlot"
    """ModelSlot or GpuWorkload."""
    uid: str = ""
    """The pod's UID, which the GPU agent finds in a process's cgroup."""
    fetch: FetchProgress | None = None
    """The model download, while the fetch step runs or after it failed."""
    ready_early: bool = False
    """Ready because the operator saw its llama-server answer /health before the
    kubelet's probes said so (``spec.server.readiness: Operator``); ``ready`` is
    then True too."""


@dataclass(frozen=True)
class RouterFetch:
    """The latest ``/v1/state`` one router fetched: when, and which slots it showed
    as not Ready, so not to be routed to."""

    at: datetime.datetime
    not_ready: frozenset[tuple[str, str]] = frozenset()
    """(namespace, slot) of the slots the document it got showed as not Ready."""


@dataclass(frozen=True)
class ForeignProcess:
    """GPU memory held by a process that is not a pod of this cluster (a desktop, a
    game), as the GPU agent saw it; without per-process figures, all such memory of
    a GPU as one entry with no pid."""

    bytes: int
    pid: int | None = None
    name: str | None = None

    @property
    def key(self) -> str:
        """Tells one process from another on a GPU, from one reading to the next."""
        return str(self.pid) if self.pid is not None else "unattributed"

    @property
    def label(self) -> str:
        """How reasons and Events name it: ``steam (pid 4242)``, or ``processes``."""
        if self.pid is None:
            return self.name or "processes"
        return f"{self.name or 'a process'} (pid {self.pid})"


@dataclass(frozen=True)
class SlotActivity:
    """What a draining slot's llama-server says about its requests (``GET /slots``)."""

    busy: int
    """Server slots still processing a request."""
    error: str | None = None
    """Why /slots could not be read; such a server is taken as idle: it answers no
    request either."""


@dataclass(frozen=True)
class FileResidency:
    """A model file in a node's page cache, as the GPU agent measured it (``mincore``)."""

    state: str
    """The agent's word for it: Pending, Held, Locked, OverBudget, Paused or Missing."""
    size_bytes: int | None = None
    resident_bytes: int | None = None

    @property
    def resident_percent(self) -> int:
        """Whole percent, rounded down: 100 only once every byte is resident, and a
        slowly changing figure rewrites a status at most once per percent."""
        if not self.size_bytes:
            return 0 if self.size_bytes is None else 100
        return min(100, (self.resident_bytes or 0) * 100 // self.size_bytes)


@dataclass(frozen=True)
class DeploymentInfo:
    """What a slot's Deployment currently asks for."""

    namespace: str
    owner: str
    replicas: int
    template_hash: str
    vram_bytes: int
    node: str | None = None
    """The node its pod template is pinned to."""
    resource_version: str = field(default="", compare=False)
    """Changes with every status update of the Deployment, which the plan does not read:
    not part of what makes two records the same."""


@dataclass(frozen=True)
class SlotInfo:
    """A ModelSlot as stored: its validated spec (None when invalid) and last status."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: ModelSlotSpec | None
    status: ModelSlotStatus = field(default_factory=ModelSlotStatus)
    invalid_reason: str | None = None
    requested_at: datetime.datetime | None = None
    """The hybridcompute.io/requested-at annotation: a demand made by hand."""
    created: datetime.datetime | None = None
    """metadata.creationTimestamp: of two conflicting objects the later is refused."""
    key: tuple[str, str] = field(init=False, repr=False, compare=False)
    """(namespace, name), kept as a field: the plan reads it very often."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.namespace, self.name))


@dataclass(frozen=True)
class WorkloadInfo:
    """A GpuWorkload as stored."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: GpuWorkloadSpec | None
    status: GpuWorkloadStatus = field(default_factory=GpuWorkloadStatus)
    invalid_reason: str | None = None
    created: datetime.datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class WorkloadChild:
    """A GpuWorkload's Job or Deployment as it is now."""

    namespace: str
    owner: str
    kind: str
    template_hash: str
    vram_bytes: int
    active: bool
    """The Job is not suspended (and not finished), or the Deployment has replicas."""
    node: str | None = None
    succeeded: bool = False
    failed: bool = False
    failure: str | None = None
    """Reason and message of a failed Job."""


@dataclass(frozen=True)
class PolicyInfo:
    """A RoutePolicy as stored."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: RoutePolicySpec | None
    status: RoutePolicyStatus = field(default_factory=RoutePolicyStatus)
    invalid_reason: str | None = None
    created: datetime.datetime | None = None
    """metadata.creationTimestamp: of two conflicting objects the later is refused."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class LiteLLMDeployment:
    """The LiteLLM Deployment a RoutePolicy drives, as it is now."""

    namespace: str
    name: str
    container: str
    """The container the operator adds secret env to: the one named litellm, else
    the first."""
    config_hash: str
    """The pod template's config-hash annotation: the rendering it runs."""
    env_names: frozenset[str]
    """Env names the operator manages on that container (HC_*)."""
    replicas: int
    updated_ready: bool
    """Every replica runs the current template and is ready."""


@dataclass(frozen=True)
class View:
    """Everything ``plan`` may look at."""

    nodes: tuple[GpuNode, ...] = ()
    slots: tuple[SlotInfo, ...] = ()
    pods: tuple[PodInfo, ...] = ()
    deployments: tuple[DeploymentInfo, ...] = ()
    services: Mapping[tuple[str, str], bool] = field(default_factory=dict)
    """(namespace, slot) of the Services that exist -> whether they reach pods that
    are not Ready yet (``publishNotReadyAddresses``)."""
    workloads: tuple[WorkloadInfo, ...] = ()
    workload_children: tuple[WorkloadChild, ...] = ()
    demands: Mapping[str, datetime.datetime] = field(default_factory=dict)
    """Last request time per alias, as signalled by the router."""
    foreign_vram: Mapping[str, int] = field(default_factory=dict)
    """Bytes held per GPU id by processes that are not the operator's pods."""
    foreign_processes: Mapping[str, tuple[ForeignProcess, ...]] = field(default_factory=dict)
    """GPU id -> the processes that hold ``foreign_vram`` there, largest first."""
    foreign_announced: frozenset[tuple[str, str, str]] = frozenset()
    """(GPU id, process key, label) of the foreign processes an earlier plan of this
    operator posted an Event for, so each gets one when it comes and one when it goes."""
    gpu_utilisation: Mapping[str, float] = field(default_factory=dict)
    """Utilisation percentage per GPU id, from the GPU agent (empty without one)."""
    model_headers: Mapping[tuple[str, str], ModelShape | str] = field(default_factory=dict)
    """(node folder, file) -> the model file's header shape as the GPU agent read it,
    or why it could not; for slots without spec.model.vram."""
    measured_vram: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(namespace, slot) -> bytes the GPU agent sees the slot's ready pods hold."""
    page_cache: Mapping[tuple[str, str], Mapping[str, FileResidency]] = field(
        default_factory=dict)
    """(node folder, file) -> node -> how much of the file its page cache holds, for the
    files the GPU agents keep warm (see :mod:`hybrid_compute.plan.warm_standby`)."""
    policies: tuple[PolicyInfo, ...] = ()
    config_maps: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """(namespace, name) of the LiteLLM ConfigMaps the operator wrote -> their hash."""
    litellm: Mapping[tuple[str, str], LiteLLMDeployment] = field(default_factory=dict)
    """(namespace, name) -> the LiteLLM Deployments the policies name that exist."""
    litellm_forbidden: Mapping[str, str] = field(default_factory=dict)
    """Namespace -> why the operator may not read its LiteLLM objects there."""
    slot_activity: Mapping[tuple[str, str], SlotActivity] = field(default_factory=dict)
    """(namespace, slot) -> requests in flight, read for the slots that are draining."""
    router_fetched_at: datetime.datetime | None = None
    """When a router last fetched ``/v1/state``; None when none has since the start."""
    router_fetches: Mapping[str, RouterFetch] = field(default_factory=dict)
    """Router id -> its latest fetch. A draining slot that every active router has
    seen as not Ready gets no new request, so its drain need not wait longer."""
    spend_reports: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """Cloud spend the router reported per policy that no status holds yet."""
    evaluations: Mapping[tuple[str, str], EvaluationResult] = field(default_factory=dict)
    """(namespace, slot) -> the last evaluation the operator ran of the slot's new model
    that no status holds yet."""
    prompt_caches: Mapping[tuple[str, str], PromptCacheOutcomes] = field(default_factory=dict)
    """(namespace, slot) -> the prompt cache saves and restores the operator made that
    no status holds yet."""
    settings: PlanSettings = field(default_factory=PlanSettings)
