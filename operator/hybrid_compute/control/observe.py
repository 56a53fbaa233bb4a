"""Builds the :class:`~hybrid_compute.plan.view.View`, the one snapshot a plan reads.

Every plan starts from fresh lists of slots, pods, Deployments and GPU nodes, so
the loop is level-based: after a restart it sees exactly what exists, Terminating
pods included. The rest of the View comes from what the operator hears besides
the API server (:class:`Signals`): demands and spend from routers, the GPU agents'
figures, the draining servers' answers, evaluations no status holds yet. The
parsing functions are pure and tested on their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from hybrid_compute.api.common import GROUP, VERSION
from hybrid_compute.api.gpuworkload import GpuWorkloadSpec, GpuWorkloadStatus
from hybrid_compute.api.labels import (
    CONFIG_HASH_ANNOTATION,
    GPUS_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    REQUESTED_AT_ANNOTATION,
    SLOT_LABEL,
    TEMPLATE_HASH_ANNOTATION,
    VRAM_ANNOTATION,
    WORKLOAD_LABEL,
)
from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus
from hybrid_compute.api.routepolicy import RoutePolicySpec, RoutePolicyStatus
from hybrid_compute.api.units import MIB
from hybrid_compute.api.validation import describe_validation_error
from hybrid_compute.control import drain_probe
from hybrid_compute.control.telemetry import GpuTelemetry
from hybrid_compute.fetch.download import parse_progress
from hybrid_compute.plan.evaluation import EvaluationResult
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import (
    DeploymentInfo,
    FetchProgress,
    GpuNode,
    LiteLLMDeployment,
    PodInfo,
    PolicyInfo,
    SlotActivity,
    SlotInfo,
    View,
    WorkloadChild,
    WorkloadInfo,
)
from hybrid_compute.render.children import FETCH_CONTAINER

GPU_RESOURCE = "nvidia.com/gpu"


def parse_time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


SpecT = TypeVar("SpecT", bound=BaseModel)
StatusT = TypeVar("StatusT", bound=BaseModel)


def _parse(body: Mapping[str, Any], spec_model: type[SpecT], status_model: type[StatusT]
           ) -> tuple[SpecT | None, str | None, StatusT]:
    """The spec (None and a reason naming the fields when it is invalid) and the
    stored status (empty when unreadable: the plan writes a fresh one)."""
    spec: SpecT | None = None
    invalid = None
    try:
        spec = spec_model.model_validate(body.get("spec") or {})
    except ValidationError as error:
        invalid = describe_validation_error(error)
    try:
        status = status_model.model_validate(body.get("status") or {})
    except ValidationError:
        status = status_model()
    return spec, invalid, status


def _identity(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {"namespace": metadata.get("namespace", "default"), "name": metadata["name"],
            "uid": metadata.get("uid", ""), "generation": int(metadata.get("generation", 1))}


def slot_from_object(body: Mapping[str, Any]) -> SlotInfo:
    """A ModelSlot object as the plan sees it; a bad spec becomes ``invalid_reason``."""
    metadata = body.get("metadata", {})
    spec, invalid, status = _parse(body, ModelSlotSpec, ModelSlotStatus)
    annotations = metadata.get("annotations") or {}
    return SlotInfo(
        **_identity(metadata),
        spec=spec,
        status=status,
        invalid_reason=invalid,
        requested_at=parse_time(annotations.get(REQUESTED_AT_ANNOTATION)),
    )


def policy_from_object(body: Mapping[str, Any]) -> PolicyInfo:
    spec, invalid, status = _parse(body, RoutePolicySpec, RoutePolicyStatus)
    return PolicyInfo(**_identity(body.get("metadata", {})), spec=spec, status=status,
                      invalid_reason=invalid)


LITELLM_CONTAINER = "litellm"
SECRET_ENV_PREFIX = "HC_"


def litellm_from_object(body: Mapping[str, Any]) -> LiteLLMDeployment | None:
    """A LiteLLM Deployment: which rendering it runs and whether it has rolled out."""
    metadata = body.get("metadata", {})
    spec = body.get("spec") or {}
    template = spec.get("template") or {}
    containers = (template.get("spec") or {}).get("containers") or []
    if not containers:
        return None
    container = next((c for c in containers if c.get("name") == LITELLM_CONTAINER),
                     containers[0])
    status = body.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    rolled_out = (int(status.get("observedGeneration", 0)) >= int(metadata.get("generation", 1))
                  and int(status.get("updatedReplicas", 0)) >= replicas
                  and int(status.get("readyReplicas", 0)) >= replicas
                  and int(status.get("replicas", 0)) <= replicas)
    return LiteLLMDeployment(
        namespace=metadata.get("namespace", "default"),
        name=metadata["name"],
        container=container["name"],
        config_hash=(template.get("metadata") or {}).get("annotations", {}).get(
            CONFIG_HASH_ANNOTATION, ""),
        env_names=frozenset(e["name"] for e in container.get("env") or []
                            if e.get("name", "").startswith(SECRET_ENV_PREFIX)),
        replicas=replicas,
        updated_ready=rolled_out,
    )


def fetch_from_pod(body: Mapping[str, Any]) -> FetchProgress | None:
    """The fetch-model init container's state: Fetching while it starts or runs,
    Failed when its last run failed (with the error record its last log line held,
    which the kubelet keeps as the termination message); None once it succeeded or
    when the pod has none."""
    statuses = (body.get("status") or {}).get("initContainerStatuses") or []
    container = next((c for c in statuses if c.get("name") == FETCH_CONTAINER), None)
    if container is None:
        has_fetcher = any(c.get("name") == FETCH_CONTAINER
                          for c in (body.get("spec") or {}).get("initContainers") or [])
        return FetchProgress("Fetching", message="starting") if has_fetcher else None
    state = container.get("state") or {}
    terminated = state.get("terminated")
    if terminated is not None and terminated.get("exitCode") == 0:
        return None
    if "running" in state:
        return FetchProgress("Fetching")
    failed = terminated or (container.get("lastState") or {}).get("terminated")
    if failed is not None:
        return _failed_fetch(failed)
    waiting = state.get("waiting") or {}
    return FetchProgress("Fetching", message=waiting.get("reason") or "starting")


def _failed_fetch(terminated: Mapping[str, Any]) -> FetchProgress:
    lines = [line for line in str(terminated.get("message") or "").splitlines()
             if line.strip()]
    record = parse_progress(lines[-1]) if lines else None
    if record is not None:
        return FetchProgress("Failed", record.bytes, record.total_bytes, record.message)
    detail = lines[-1] if lines else terminated.get("reason") or "no message"
    return FetchProgress("Failed",
                         message=f"exit code {terminated.get('exitCode')}: {detail}")


def with_fetch_log(progress: FetchProgress, line: str) -> FetchProgress:
    """``progress`` with the bytes and message of the fetch step's last log line."""
    record = parse_progress(line.strip())
    if record is None:
        return progress
    return dataclasses.replace(progress, bytes=record.bytes, total_bytes=record.total_bytes,
                               message=record.message or progress.message)


def pod_from_object(body: Mapping[str, Any]) -> PodInfo | None:
    """A pod of a slot or a workload; finished pods hold no GPU memory any more."""
    metadata = body.get("metadata", {})
    labels = metadata.get("labels") or {}
    kind = "ModelSlot" if labels.get(SLOT_LABEL) else "GpuWorkload"
    slot = labels.get(SLOT_LABEL) or labels.get(WORKLOAD_LABEL)
    if not slot:
        return None
    annotations = metadata.get("annotations") or {}
    status = body.get("status") or {}
    ready_condition: dict[str, Any] = next((c for c in status.get("conditions") or []
                            if c.get("type") == "Ready"), {})
    phase = status.get("phase", "Pending")
    return PodInfo(
        name=metadata["name"],
        namespace=metadata.get("namespace", "default"),
        owner=slot,
        node=(body.get("spec") or {}).get("nodeName"),
        vram_bytes=int(annotations.get(VRAM_ANNOTATION, 0) or 0),
        gpus=int(annotations.get(GPUS_ANNOTATION, 0) or 0),
        template_hash=annotations.get(TEMPLATE_HASH_ANNOTATION, ""),
        ready=ready_condition.get("status") == "True",
        terminating=bool(metadata.get("deletionTimestamp")),
        phase=phase,
        kind=kind,
        uid=metadata.get("uid", ""),
        fetch=fetch_from_pod(body) if kind == "ModelSlot" else None,
    ) if phase not in ("Succeeded", "Failed") else None


def deployment_from_object(body: Mapping[str, Any]) -> DeploymentInfo | None:
    metadata = body.get("metadata", {})
    slot = (metadata.get("labels") or {}).get(SLOT_LABEL)
    if not slot:
        return None
    spec = body.get("spec") or {}
    template = spec.get("template") or {}
    annotations = template.get("metadata", {}).get("annotations") or {}
    node_selector = (template.get("spec") or {}).get("nodeSelector") or {}
    return DeploymentInfo(
        namespace=metadata.get("namespace", "default"),
        owner=slot,
        replicas=int(spec.get("replicas", 1)),
        template_hash=annotations.get(TEMPLATE_HASH_ANNOTATION, ""),
        vram_bytes=int(annotations.get(VRAM_ANNOTATION, 0) or 0),
        node=node_selector.get("kubernetes.io/hostname"),
        resource_version=metadata.get("resourceVersion", ""),
    )


def workload_from_object(body: Mapping[str, Any]) -> WorkloadInfo:
    metadata = body.get("metadata", {})
    spec, invalid, status = _parse(body, GpuWorkloadSpec, GpuWorkloadStatus)
    return WorkloadInfo(
        **_identity(metadata),
        spec=spec,
        status=status,
        invalid_reason=invalid,
        created=parse_time(metadata.get("creationTimestamp")),
    )


_JOB_FAILURES = {
    "DeadlineExceeded": "ran longer than its maxDuration",
    "BackoffLimitExceeded": "its pod failed more often than backoffLimit allows",
}


def workload_child_from_object(body: Mapping[str, Any]) -> WorkloadChild | None:
    """A workload's Job or Deployment."""
    metadata = body.get("metadata", {})
    owner = (metadata.get("labels") or {}).get(WORKLOAD_LABEL)
    if not owner:
        return None
    kind = body.get("kind") or ("Job" if "suspend" in (body.get("spec") or {}) else
                                "Deployment")
    spec = body.get("spec") or {}
    template = spec.get("template") or {}
    annotations = template.get("metadata", {}).get("annotations") or {}
    node = ((template.get("spec") or {}).get("nodeSelector") or {}).get(
        "kubernetes.io/hostname")
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []
                  if c.get("status") == "True"}
    succeeded = "Complete" in conditions
    failed_condition = conditions.get("Failed")
    failure = None
    if failed_condition:
        reason = failed_condition.get("reason", "")
        failure = _JOB_FAILURES.get(reason) or (
            f"{reason}: {failed_condition.get('message', '')}".strip(": "))
    if kind == "Job":
        active = not spec.get("suspend", False) and not succeeded and not failed_condition
    else:
        active = int(spec.get("replicas", 1)) > 0
    return WorkloadChild(
        namespace=metadata.get("namespace", "default"),
        owner=owner,
        kind=kind,
        template_hash=annotations.get(TEMPLATE_HASH_ANNOTATION, ""),
        vram_bytes=int(annotations.get(VRAM_ANNOTATION, 0) or 0),
        active=active,
        node=node,
        succeeded=succeeded,
        failed=failed_condition is not None,
        failure=failure,
    )


def node_from_object(body: Mapping[str, Any]) -> GpuNode | None:
    """A GPU node from device-plugin capacity and GPU Feature Discovery labels."""
    metadata = body.get("metadata", {})
    labels = metadata.get("labels") or {}
    status = body.get("status") or {}
    allocatable = int(str((status.get("allocatable") or {}).get(GPU_RESOURCE, "0")) or 0)
    memory = labels.get("nvidia.com/gpu.memory")
    if allocatable <= 0 or not memory:
        return None
    count = int(labels.get("nvidia.com/gpu.count", "1") or 1)
    replicas = int(labels.get("nvidia.com/gpu.replicas", "1") or 1)
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    unschedulable = bool((body.get("spec") or {}).get("unschedulable"))
    return GpuNode(
        name=metadata["name"],
        gpu_count=count,
        gpu_memory_bytes=int(memory) * MIB,
        replicas=replicas,
        allocatable=allocatable,
        ready=ready and not unschedulable,
        product=labels.get("nvidia.com/gpu.product", ""),
    )


def _raw(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


@dataclass
class _LiteLLMObjects:
    config_maps: dict[tuple[str, str], str] = field(default_factory=dict)
    deployments: dict[tuple[str, str], LiteLLMDeployment] = field(default_factory=dict)
    forbidden: dict[str, str] = field(default_factory=dict)


def _litellm_objects(core: client.CoreV1Api, apps: client.AppsV1Api,
                     policies: list[PolicyInfo]) -> _LiteLLMObjects:
    """The ConfigMap and Deployment each policy names, read by name: the operator
    needs no right to list ConfigMaps, only to read and write the ones it renders.
    A namespace it may not read them in is reported, not raised."""
    found = _LiteLLMObjects()
    for policy in policies:
        if policy.spec is None or policy.namespace in found.forbidden:
            continue
        namespace, target = policy.namespace, policy.spec.litellm
        try:
            try:
                config_map = _raw(core.read_namespaced_config_map(
                    target.config_map_name, namespace, _preload_content=False))
                annotations = config_map["metadata"].get("annotations") or {}
                found.config_maps[(namespace, target.config_map_name)] = annotations.get(
                    CONFIG_HASH_ANNOTATION, "")
            except ApiException as error:
                if error.status != 404:
                    raise
            try:
                deployment = litellm_from_object(_raw(apps.read_namespaced_deployment(
                    target.deployment_name, namespace, _preload_content=False)))
                if deployment is not None:
                    found.deployments[(namespace, target.deployment_name)] = deployment
            except ApiException as error:
                if error.status != 404:
                    raise
        except ApiException as error:
            if error.status != 403:
                raise
            found.forbidden[namespace] = (
                f"the operator may not read ConfigMap {target.config_map_name} or "
                f"Deployment {target.deployment_name} in {namespace} (403); put the "
                "RoutePolicy in the namespace LiteLLM runs in, where its role applies")
    return found


def _read_fetch_logs(core: client.CoreV1Api, pods: tuple[PodInfo, ...]
                     ) -> tuple[PodInfo, ...]:
    """Pods whose fetch step runs, with the progress of its last log line. Kubernetes
    has no other channel from an init container to the operator; a pod whose log
    cannot be read (gone, not started, no right to pods/log) keeps its state without
    numbers."""
    read: list[PodInfo] = []
    for pod in pods:
        if pod.fetch is not None and pod.fetch.state == "Fetching" and not pod.terminating:
            try:
                line = core.read_namespaced_pod_log(pod.name, pod.namespace,
                                                    container=FETCH_CONTAINER, tail_lines=1,
                                                    _request_timeout=5)
                pod = dataclasses.replace(pod, fetch=with_fetch_log(pod.fetch, str(line)))
            except ApiException:
                pass
        read.append(pod)
    return tuple(read)


SlotKey = tuple[str, str]


@dataclass(frozen=True)
class Signals:
    """What the View holds besides the API server's objects. The runtime fills it at
    the start of a pass; what may change while the lists are read is read after
    them, through the callables and the live ``demands`` mapping."""

    demands: Mapping[str, datetime.datetime]
    """Last request time per alias, as routers signalled it; copied once the lists
    are read."""
    spend_reports: Mapping[tuple[str, str], float]
    """Cloud spend routers reported per policy that no status holds yet."""
    router_fetched_at: Callable[[], datetime.datetime | None]
    """When a router last fetched ``/v1/state``, read last."""
    unrecorded_evaluations: Callable[[tuple[SlotInfo, ...]], Mapping[SlotKey, EvaluationResult]]
    """The finished evaluations whose verdict none of these slots' statuses holds."""
    telemetry: GpuTelemetry | None = None
    """The GPU agents' figures; None plans without them."""
    probe: Callable[[Mapping[SlotKey, str]], Mapping[SlotKey, SlotActivity]] = \
        drain_probe.probe
    """Asks draining slots' servers for the requests they still run."""


async def observe(api: client.ApiClient, settings: PlanSettings, signals: Signals,
                  now: datetime.datetime) -> View:
    """The whole View: the cluster's objects, then the GPU agents' figures on its
    pods, then the activity of the slots it shows draining, then the signals."""
    listed = await asyncio.to_thread(list_cluster, api, settings, signals.demands,
                                     signals.spend_reports)
    if signals.telemetry is not None:
        listed = signals.telemetry.annotate(listed, now)
    activity = await asyncio.to_thread(
        signals.probe, drain_probe.draining_endpoints(listed.slots, settings))
    return dataclasses.replace(
        listed, slot_activity=activity, router_fetched_at=signals.router_fetched_at(),
        evaluations=signals.unrecorded_evaluations(listed.slots))


def list_cluster(api: client.ApiClient, settings: PlanSettings,
                 demands: Mapping[str, datetime.datetime],
                 spend_reports: Mapping[tuple[str, str], float]) -> View:
    """Lists what the plan needs, cluster-wide.

    Children are listed before their owners. The garbage collector removes a
    child only after its owner is gone, so an owner seen in the later list had
    its children when the earlier lists were taken; listing the other way round,
    a slot deleted in between would look like a slot whose Deployment is missing,
    and the operator would create it again beside pods still terminating.
    """
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    nodes = _raw(core.list_node(_preload_content=False))["items"]
    pods = [pod for label in (SLOT_LABEL, WORKLOAD_LABEL)
            for pod in _raw(core.list_pod_for_all_namespaces(
                label_selector=label, _preload_content=False))["items"]]
    owned = f"{MANAGED_BY_LABEL}={MANAGED_BY},{WORKLOAD_LABEL}"
    jobs = _raw(client.BatchV1Api(api).list_job_for_all_namespaces(
        label_selector=owned, _preload_content=False))["items"]
    workload_deployments = _raw(apps.list_deployment_for_all_namespaces(
        label_selector=owned, _preload_content=False))["items"]
    for item in jobs:
        item["kind"] = "Job"
    for item in workload_deployments:
        item["kind"] = "Deployment"
    deployments = _raw(apps.list_deployment_for_all_namespaces(
        label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY},{SLOT_LABEL}",
        _preload_content=False))["items"]
    services = _raw(core.list_service_for_all_namespaces(
        label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY},{SLOT_LABEL}",
        _preload_content=False))["items"]
    slots = custom.list_cluster_custom_object(GROUP, VERSION, "modelslots")["items"]
    workloads = custom.list_cluster_custom_object(GROUP, VERSION, "gpuworkloads")["items"]
    policies = [policy_from_object(p) for p in custom.list_cluster_custom_object(
        GROUP, VERSION, "routepolicies")["items"]
        if not p.get("metadata", {}).get("deletionTimestamp")]
    litellm = _litellm_objects(core, apps, policies)
    return View(
        nodes=tuple(n for n in map(node_from_object, nodes) if n),
        slots=tuple(slot_from_object(s) for s in slots
                    if not s.get("metadata", {}).get("deletionTimestamp")),
        pods=_read_fetch_logs(core, tuple(p for p in map(pod_from_object, pods) if p)),
        deployments=tuple(d for d in map(deployment_from_object, deployments) if d),
        services=frozenset((s["metadata"]["namespace"], s["metadata"]["labels"][SLOT_LABEL])
                           for s in services),
        demands=dict(demands),
        workloads=tuple(workload_from_object(w) for w in workloads
                        if not w.get("metadata", {}).get("deletionTimestamp")),
        workload_children=tuple(c for c in map(workload_child_from_object,
                                                [*jobs, *workload_deployments]) if c),
        policies=tuple(policies),
        config_maps=litellm.config_maps,
        litellm=litellm.deployments,
        litellm_forbidden=litellm.forbidden,
        spend_reports=dict(spend_reports),
        settings=settings,
    )
