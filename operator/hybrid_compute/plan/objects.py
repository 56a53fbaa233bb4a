"""The View's records from API objects as the API server returns them (plain dicts):
slots, policies, pods, Deployments, workloads and their children, GPU nodes.

Pure: :mod:`hybrid_compute.control.observe` feeds it what it lists, ``hybrid-compute
plan -f DIR`` what it reads from files, and the admission webhook the nodes it sees.
A spec that does not validate becomes a record with ``spec=None`` and the reason,
never an exception."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hybrid_compute.api.gpuworkload import GpuWorkloadSpec, GpuWorkloadStatus
from hybrid_compute.api.labels import (
    CONFIG_HASH_ANNOTATION,
    GPUS_ANNOTATION,
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
from hybrid_compute.fetch.download import parse_progress
from hybrid_compute.plan.view import (
    DeploymentInfo,
    FetchProgress,
    GpuNode,
    LiteLLMDeployment,
    PodInfo,
    PolicyInfo,
    SlotInfo,
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
        created=parse_time(metadata.get("creationTimestamp")),
    )


def policy_from_object(body: Mapping[str, Any]) -> PolicyInfo:
    metadata = body.get("metadata", {})
    spec, invalid, status = _parse(body, RoutePolicySpec, RoutePolicyStatus)
    return PolicyInfo(**_identity(metadata), spec=spec, status=status,
                      invalid_reason=invalid,
                      created=parse_time(metadata.get("creationTimestamp")))


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
