"""Pure builders of a ModelSlot's children: the llama-server Deployment and Service."""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import TYPE_CHECKING, Any

from hybrid_compute.api.common import API_VERSION, parse_bytes, parse_duration
from hybrid_compute.api.gpuworkload import GpuWorkloadSpec
from hybrid_compute.api.labels import (
    GPUS_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SLOT_LABEL,
    TEMPLATE_HASH_ANNOTATION,
    VRAM_ANNOTATION,
    WORKLOAD_LABEL,
)
from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.fetch.download import TOKEN_ENV as FETCH_TOKEN_ENV

if TYPE_CHECKING:
    from hybrid_compute.plan.settings import PlanSettings

GPU_RESOURCE = "nvidia.com/gpu"
SERVER_CONTAINER = "llama-server"
MODEL_VOLUME = "models"
PROMPT_CACHE_VOLUME = "prompt-cache"
PROMPT_CACHE_MOUNT = "/prompt-cache"
"""Where a slot with spec.server.promptCache finds its node's cache folder; llama-server
saves and restores the files there (--slot-save-path)."""
FETCH_CONTAINER = "fetch-model"
DEFAULT_HOST_PATH = "/models"
# Loading a 20 GB model from a slow disk can take minutes; /health answers 503
# until it is done, so liveness only starts once the startup probe has passed.
STARTUP_PROBE_SECONDS = 900
RUN_AS_USER = 1000
DEFAULT_ENDPOINT_TEMPLATE = "http://{service}.{namespace}.svc:{port}/v1"
"""How LiteLLM reaches a slot's llama-server by default: its Service in the cluster."""


def served_name(spec: ModelSlotSpec) -> str:
    if spec.model.served_name:
        return spec.model.served_name
    return posixpath.basename(spec.model.path).removesuffix(".gguf")


def model_file(spec: ModelSlotSpec, settings: PlanSettings) -> str:
    path = spec.model.path
    if path.startswith(settings.model_root + "/"):
        return path
    return posixpath.join(settings.model_root, path.lstrip("/"))


def server_args(spec: ModelSlotSpec, settings: PlanSettings) -> list[str]:
    """llama-server's command line from the spec (flags in the seed's order)."""
    server = spec.server
    layers = server.n_gpu_layers
    if layers is None:
        layers = 99 if spec.device == "gpu" else 0
    args = [
        "--model", model_file(spec, settings),
        "--alias", served_name(spec),
        "--host", "0.0.0.0",
        "--port", str(server.port),
        "--n-gpu-layers", str(layers),
        "--ctx-size", str(server.ctx_size),
        "--parallel", str(server.parallel),
    ]
    if server.flash_attn:
        args += ["--flash-attn", "on"]
    if server.threads is not None:
        args += ["--threads", str(server.threads)]
    # auto is llama-server's own default: no flag keeps the pod template, and so the
    # running pods, of slots written before these fields unchanged.
    if server.load_mode != "auto":
        args += ["--load-mode", server.load_mode]
    if not server.warmup:
        args.append("--no-warmup")
    if server.cont_batching:
        args.append("--cont-batching")
    if spec.embedding:
        args.append("--embedding")
    if spec.gpus > 1:
        args += ["--split-mode", "layer"]
    args.append("--metrics")
    return [*args, *server.extra_args]


def fetch_container(spec: ModelSlotSpec, settings: PlanSettings) -> dict[str, Any] | None:
    """The init container that downloads the model into the model folder before
    llama-server starts; None when the spec names no source (the file is already on
    the node). It alone mounts the folder writable."""
    source = spec.model.source
    if source is None:
        return None
    args = ["fetch"]
    env: list[dict[str, Any]] = []
    if source.hugging_face is not None:
        repository = source.hugging_face
        args += ["--hf-repo", repository.repo, "--hf-file", repository.file,
                 "--hf-revision", repository.revision]
        if repository.token_secret_ref is not None:
            env.append({"name": FETCH_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
                "name": repository.token_secret_ref.name,
                "key": repository.token_secret_ref.key}}})
    else:
        args += ["--url", str(source.url)]
    args += ["--dest", model_file(spec, settings)]
    if source.sha256:
        args += ["--sha256", source.sha256.lower()]
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": settings.fetch_image,
        "args": args,
        "volumeMounts": [{"name": MODEL_VOLUME, "mountPath": settings.model_root}],
        # A failed fetch's last log line (its JSON error record) becomes the
        # termination message the operator shows in the slot's status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if env:
        container["env"] = env
    return container


def child_name(slot_name: str) -> str:
    """Deployment and Service name: the slot's name, so `kubectl get deploy` reads well."""
    return slot_name


def labels(slot_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "llama-server",
        "app.kubernetes.io/instance": slot_name,
        "app.kubernetes.io/component": "model-slot",
        MANAGED_BY_LABEL: MANAGED_BY,
        SLOT_LABEL: slot_name,
    }


def owner_reference(name: str, uid: str, kind: str = "ModelSlot") -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def pod_template(slot_name: str, spec: ModelSlotSpec, vram_bytes: int,
                 settings: PlanSettings) -> dict[str, Any]:
    """The pod template without node placement; its hash identifies a model version."""
    server = spec.server
    image = server.image or (settings.gpu_image if spec.device == "gpu" else settings.cpu_image)
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": image,
        "args": server_args(spec, settings),
        "ports": [{"name": "http", "containerPort": server.port, "protocol": "TCP"}],
        # Every second, the least Kubernetes allows: a loaded model waits for the next
        # probe before its slot serves.
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"},
                           "periodSeconds": 1, "failureThreshold": 3},
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"},
                         "periodSeconds": 1, "failureThreshold": STARTUP_PROBE_SECONDS},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"},
                          "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": MODEL_VOLUME, "mountPath": settings.model_root,
                          "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    volumes: list[dict[str, Any]] = []
    if server.prompt_cache.enabled:
        container["args"] += ["--slot-save-path", PROMPT_CACHE_MOUNT]
        container["volumeMounts"].append({"name": PROMPT_CACHE_VOLUME,
                                          "mountPath": PROMPT_CACHE_MOUNT})
        volumes.append({"name": PROMPT_CACHE_VOLUME, "hostPath": {
            "path": server.prompt_cache.host_path, "type": "DirectoryOrCreate"}})
    runtime_class = None
    if spec.device == "gpu":
        container["resources"] = {"limits": {GPU_RESOURCE: str(spec.gpus)}}
        runtime_class = settings.gpu_runtime_class
    fetcher = fetch_container(spec, settings)
    if spec.model.persistent_volume_claim:
        # The claim is mounted read-only unless the fetch step writes to it; even
        # then llama-server's own mount stays read-only.
        volume: dict[str, Any] = {"name": MODEL_VOLUME, "persistentVolumeClaim": {
            "claimName": spec.model.persistent_volume_claim, "readOnly": fetcher is None}}
    else:
        volume = {"name": MODEL_VOLUME, "hostPath": {
            "path": spec.model.host_path or DEFAULT_HOST_PATH, "type": "Directory"}}
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [volume, *volumes],
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                            "runAsGroup": RUN_AS_USER,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "enableServiceLinks": False,
    }
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    if fetcher is not None:
        pod_spec["initContainers"] = [fetcher]
        if spec.model.persistent_volume_claim:
            # Lets the fetch step write into the claim; OnRootMismatch skips the
            # recursive chown of a folder of multi-gigabyte files on every start.
            pod_spec["securityContext"].update(fsGroup=RUN_AS_USER,
                                               fsGroupChangePolicy="OnRootMismatch")
    template = {
        "metadata": {
            "labels": labels(slot_name),
            "annotations": {**spec.pod_annotations, VRAM_ANNOTATION: str(vram_bytes),
                            GPUS_ANNOTATION: str(spec.gpus if spec.device == "gpu" else 0)},
        },
        "spec": pod_spec,
    }
    return _stamp_hash(template)


def _stamp_hash(template: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    template["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] = digest
    return template


def template_hash(template: dict[str, Any]) -> str:
    return str(template["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION])


def _placed(template: dict[str, Any], node: str | None) -> dict[str, Any]:
    """A copy of the template pinned to ``node`` (and tolerating GPU taints)."""
    placed: dict[str, Any] = json.loads(json.dumps(template))
    if node is not None:
        placed["spec"]["nodeSelector"] = {**placed["spec"].get("nodeSelector", {}),
                                          "kubernetes.io/hostname": node}
        placed["spec"]["tolerations"] = [*placed["spec"].get("tolerations", []),
                                         {"key": GPU_RESOURCE, "operator": "Exists",
                                          "effect": "NoSchedule"}]
    return placed


def deployment(namespace: str, slot_name: str, uid: str, template: dict[str, Any],
               replicas: int, node: str | None) -> dict[str, Any]:
    """The slot's Deployment. ``Recreate`` keeps a model change break-before-make."""
    placed = _placed(template, node)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": child_name(slot_name), "namespace": namespace,
                     "labels": labels(slot_name),
                     "ownerReferences": [owner_reference(slot_name, uid)]},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {SLOT_LABEL: slot_name}},
            "template": placed,
        },
    }


def service(namespace: str, slot_name: str, uid: str, port: int,
            reaches_loading: bool = False) -> dict[str, Any]:
    """A stable name for the slot: swaps never change LiteLLM's config.
    ``reaches_loading`` (``spec.server.readiness: Operator``) publishes pods that are
    not Ready yet: the operator, not the kubelet, says when the slot serves, and
    only routers it tells send requests."""
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": child_name(slot_name), "namespace": namespace,
                     "labels": labels(slot_name),
                     "ownerReferences": [owner_reference(slot_name, uid)]},
        "spec": {
            "selector": {SLOT_LABEL: slot_name},
            "ports": [{"name": "http", "port": port, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }
    if reaches_loading:
        manifest["spec"]["publishNotReadyAddresses"] = True
    return manifest


def endpoint(namespace: str, slot_name: str, port: int,
             template: str = DEFAULT_ENDPOINT_TEMPLATE) -> str:
    """The OpenAI-compatible base URL of a slot's llama-server."""
    return template.format(service=child_name(slot_name), namespace=namespace, port=port,
                           slot=slot_name)


# ------------------------------------------------------------------ workloads


def workload_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "gpu-workload",
        MANAGED_BY_LABEL: MANAGED_BY,
        WORKLOAD_LABEL: name,
    }


def workload_template(name: str, spec: GpuWorkloadSpec,
                      gpu_runtime_class: str | None = None) -> dict[str, Any]:
    """The user's pod template with the GPU share, the VRAM record and our labels
    (and the GPU runtime class, unless the template names one). Not for a
    Reservation, which has no pod."""
    assert spec.template is not None
    template: dict[str, Any] = spec.template.model_dump(by_alias=True, exclude_none=True)
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **workload_labels(name)}
    uses_gpu = spec.workload_class != "Embedding"
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        VRAM_ANNOTATION: str(parse_bytes(spec.vram) if uses_gpu and spec.vram else 0),
        GPUS_ANNOTATION: "1" if uses_gpu else "0",
    }
    pod_spec = template["spec"]
    if spec.kind == "Job":
        pod_spec.setdefault("restartPolicy", "Never")
    if uses_gpu:
        first = pod_spec["containers"][0]
        resources = first.setdefault("resources", {})
        resources["limits"] = {**(resources.get("limits") or {}), GPU_RESOURCE: "1"}
        if gpu_runtime_class:
            pod_spec.setdefault("runtimeClassName", gpu_runtime_class)
    return _stamp_hash(template)


def workload_child(namespace: str, name: str, uid: str, spec: GpuWorkloadSpec,
                   template: dict[str, Any], active: bool, node: str | None
                   ) -> dict[str, Any]:
    """The workload's Job (suspended until admitted) or Deployment (0 replicas until
    admitted), as Kueue does."""
    metadata = {"name": name, "namespace": namespace, "labels": workload_labels(name),
                "ownerReferences": [owner_reference(name, uid, "GpuWorkload")]}
    placed = _placed(template, node)
    if spec.kind == "Job":
        job_spec: dict[str, Any] = {"suspend": not active, "template": placed}
        if spec.backoff_limit is not None:
            job_spec["backoffLimit"] = spec.backoff_limit
        if spec.max_duration:
            job_spec["activeDeadlineSeconds"] = max(
                1, int(parse_duration(spec.max_duration).total_seconds()))
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
                "spec": job_spec}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {"replicas": (spec.replicas or 1) if active else 0,
                 "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": {WORKLOAD_LABEL: name}},
                 "template": placed},
    }
