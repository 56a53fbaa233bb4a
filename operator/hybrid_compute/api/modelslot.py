"""ModelSlot: one local model endpoint, a llama-server on the GPU node or on CPU."""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from hybrid_compute.api.common import (
    AGE_COLUMN,
    Alias,
    ApiModel,
    Conditions,
    CrdInfo,
    CustomObject,
    DnsLabel,
    Duration,
    PositiveQuantity,
    SecretKeyRef,
    cel,
    column,
    validations,
)

Device = Literal["gpu", "cpu"]
Activation = Literal["Always", "OnDemand"]
SlotPhase = Literal[
    "Pending", "Standby", "Loading", "Ready", "Unloading", "Unschedulable", "Failed"
]
SLOT_CONDITION_TYPES = ("Accepted", "Fits", "Resident", "Swapping", "Ready")
VramSource = Literal["Spec", "Measured", "Estimated"]

ArgString = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class HuggingFaceFile(ApiModel):
    """A file in a Hugging Face repository, fetched from its resolve URL."""

    repo: Annotated[str, StringConstraints(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)]
    """The repository, owner/name, for example bartowski/Meta-Llama-3.1-8B-Instruct-GGUF."""
    file: Annotated[str, StringConstraints(pattern=r"^[^/\x00][^\x00]*$", max_length=1024)]
    """The file's path in the repository, for example Meta-Llama-3.1-8B-Instruct-Q6_K.gguf."""
    revision: Annotated[str, StringConstraints(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", max_length=255)] = "main"
    """Branch, tag or commit to fetch; a commit pins the exact file."""
    token_secret_ref: SecretKeyRef | None = None
    """A Secret key holding a Hugging Face token, for gated or private repositories.
    Only the fetch container gets it, as an environment variable."""


class ModelFetchSource(ApiModel):
    """Where the fetch step downloads the model file from, when it is not on the node."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.huggingFace) != has(self.url)",
                "set exactly one of huggingFace or url", field_path=".url"),
        )
    )

    hugging_face: HuggingFaceFile | None = None
    """A file in a Hugging Face repository."""
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)
                   ] | None = None
    """A plain http(s) URL of the file."""
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    """The file's SHA-256. With it, a file on the node that differs is fetched again
    and a download that differs is refused; without it, any file already at the path
    is used as it is."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelFetchSource:
        if (self.hugging_face is None) == (self.url is None):
            raise ValueError("url: set exactly one of huggingFace or url")
        return self


class ModelSource(ApiModel):
    """Which GGUF file the slot serves and where it lives on the node."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!(has(self.hostPath) && has(self.persistentVolumeClaim))",
                "set either hostPath or persistentVolumeClaim, not both",
                field_path=".persistentVolumeClaim"),
        )
    )

    path: Annotated[str, StringConstraints(pattern=r"^[^\x00]+\.gguf$", max_length=1024)]
    """The GGUF file, relative to the model folder (or absolute inside the container's
    /models mount), for example llama-3.1-8b-instruct-q6_k.gguf."""
    served_name: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", max_length=128)
    ] | None = None
    """The model name llama-server reports and LiteLLM asks for; defaults to the file name
    without its extension."""
    quantization: Annotated[str, StringConstraints(max_length=32)] | None = None
    """The quantisation of the file, for example Q6_K or Q4_K_M (informational)."""
    vram: PositiveQuantity | None = None
    """GPU memory the loaded model needs (weights, KV cache and buffers), for example
    7Gi. The operator plans the card with it."""
    host_path: Annotated[str, StringConstraints(pattern=r"^/.*", max_length=1024)] | None = None
    """Folder on the node that holds the model files; the default is /models."""
    persistent_volume_claim: DnsLabel | None = None
    """Name of a PersistentVolumeClaim holding the model files, instead of hostPath."""
    source: ModelFetchSource | None = None
    """Where to download the file from when it is missing from the model folder (or
    differs from sha256); unset means the file is already there."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if self.host_path and self.persistent_volume_claim:
            raise ValueError("persistentVolumeClaim: set either hostPath or "
                             "persistentVolumeClaim, not both")
        return self


class ServerSettings(ApiModel):
    """llama-server flags. Anything not covered goes into extraArgs."""

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Container image; defaults to ghcr.io/ggml-org/llama.cpp:server-cuda for GPU slots
    and ghcr.io/ggml-org/llama.cpp:server for CPU slots."""
    port: Annotated[int, Field(ge=1024, le=65535)] = 8080
    """Port llama-server listens on inside the pod (always passed as --port)."""
    ctx_size: Annotated[int, Field(ge=128, le=1048576)] = 8192
    """--ctx-size: the context window in tokens, shared by all parallel sequences."""
    parallel: Annotated[int, Field(ge=1, le=64)] = 1
    """--parallel: how many requests are decoded at once."""
    flash_attn: bool = False
    """--flash-attn: use flash attention (GPU slots)."""
    cont_batching: bool = True
    """--cont-batching: continuous batching of parallel requests."""
    threads: Annotated[int, Field(ge=1, le=512)] | None = None
    """--threads: CPU threads for generation; llama-server picks a default when unset."""
    n_gpu_layers: Annotated[int, Field(ge=0, le=1000)] | None = None
    """--n-gpu-layers: layers offloaded to the GPU; all of them (99) for GPU slots and 0
    for CPU slots when unset."""
    extra_args: list[ArgString] = Field(default_factory=list, max_length=64)
    """Further llama-server arguments, passed as given."""


class ModelSlotSpec(ApiModel):
    """A local model endpoint: which model, on which device, when it holds the GPU."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.activation != 'OnDemand' || has(self.idleTimeout)",
                "an OnDemand slot needs spec.idleTimeout: the GPU goes back to the default "
                "slot after that long without a request", reason="FieldValueRequired",
                field_path=".idleTimeout"),
            cel("!self.default || self.device == 'gpu'",
                "a default slot must be a GPU slot: it is the one that holds the GPU when "
                "nothing else asks", field_path=".default"),
            cel("!self.default || self.activation == 'Always'",
                "a default slot must use activation Always: it is where the GPU returns "
                "after an OnDemand slot goes idle", field_path=".activation"),
            cel("!has(self.fallback) || self.fallback != self.alias",
                "spec.fallback must name another alias than the slot's own",
                field_path=".fallback"),
            cel("self.alias != 'hybrid/auto'",
                "hybrid/auto is the router's meta-model and cannot be a slot alias",
                field_path=".alias"),
            cel("self.device != 'cpu' || !has(self.server) || !has(self.server.nGpuLayers) "
                "|| self.server.nGpuLayers == 0",
                "a CPU slot cannot offload layers: leave spec.server.nGpuLayers unset or 0",
                field_path=".server.nGpuLayers"),
            cel("self.device != 'cpu' || self.gpus == 1",
                "spec.gpus applies to GPU slots only", field_path=".gpus"),
            cel("self.device != 'gpu' || !has(self.model.source) || has(self.model.vram)",
                "a GPU slot that downloads its model needs spec.model.vram: the estimate "
                "reads the file's header on the node, which is not there before the "
                "download", reason="FieldValueRequired", field_path=".model.vram"),
        )
    )

    alias: Alias
    """The model name clients ask LiteLLM for, for example local/fast."""
    model: ModelSource
    """The model file and its size on the GPU."""
    device: Device = "gpu"
    """gpu runs on a GPU node through the NVIDIA device plugin; cpu runs anywhere."""
    gpus: Annotated[int, Field(ge=1, le=8)] = 1
    """Whole GPUs the model is split over (tensor split); more than 1 needs a node whose
    GPUs are not time-sliced."""
    activation: Activation = "Always"
    """Always: resident whenever it fits. OnDemand: loaded when a request asks for the
    alias, unloaded after idleTimeout without requests."""
    default: bool = False
    """The slot that holds the GPU when no OnDemand slot asks for it (at most one per GPU
    node)."""
    priority: Annotated[int, Field(ge=0, le=1000)] = 100
    """Higher wins when slots compete for the GPU."""
    idle_timeout: Duration | None = None
    """For OnDemand slots: how long without a request before the GPU goes back to the
    default slot, for example 5m."""
    min_residency: Duration | None = None
    """Shortest time a slot stays loaded once it is Ready, so swaps cannot thrash;
    the operator's default applies when unset."""
    fallback: Alias | None = None
    """Alias the router sends requests to while this slot is not Ready, for example
    cloud/mid."""
    embedding: bool = False
    """Serve embeddings (--embedding) instead of chat completions."""
    pod_annotations: dict[
        Annotated[str, StringConstraints(max_length=253)],
        Annotated[str, StringConstraints(max_length=4096)],
    ] = Field(default_factory=dict, max_length=64)
    """Extra annotations for the llama-server pod (changing them reloads the model)."""
    server: ServerSettings = Field(default_factory=ServerSettings,
                                   json_schema_extra={"default": {}})
    """llama-server settings."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelSlotSpec:
        """The CEL rules of the CRD, for objects checked without an API server."""
        problems = []
        if self.activation == "OnDemand" and not self.idle_timeout:
            problems.append("idleTimeout: an OnDemand slot needs spec.idleTimeout")
        if self.default and self.device != "gpu":
            problems.append("default: a default slot must be a GPU slot")
        if self.default and self.activation != "Always":
            problems.append("activation: a default slot must use activation Always")
        if self.fallback is not None and self.fallback == self.alias:
            problems.append("fallback: must name another alias than the slot's own")
        if self.alias == "hybrid/auto":
            problems.append("alias: hybrid/auto is the router's meta-model")
        if self.device == "cpu" and self.server.n_gpu_layers:
            problems.append("server.nGpuLayers: a CPU slot cannot offload layers")
        if self.device == "cpu" and self.gpus != 1:
            problems.append("gpus: applies to GPU slots only")
        if self.device == "gpu" and self.model.source and not self.model.vram:
            problems.append("model.vram: a GPU slot that downloads its model needs "
                            "spec.model.vram")
        if problems:
            raise ValueError("; ".join(problems))
        return self


FetchPhase = Literal["Fetching", "Failed"]


class ModelFetchProgress(ApiModel):
    """The download of spec.model.source by the pod's fetch-model init container."""

    state: FetchPhase
    """Fetching while the init container runs; Failed when its last run failed."""
    bytes: Annotated[int, Field(ge=0)] | None = None
    """Bytes of the file on the node so far (the partial file included)."""
    total_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the file, when the server says."""
    percent: Annotated[float, Field(ge=0, le=100)] | None = None
    """bytes as a share of totalBytes."""
    message: str | None = None
    """What the fetch step last said: why it waits, resumes or failed."""


class ModelSlotStatus(ApiModel):
    """What the operator observed and decided for this slot."""

    phase: SlotPhase | None = None
    """Pending, Standby, Loading, Ready, Unloading, Unschedulable or Failed."""
    reason: str | None = None
    """Why the slot is in this phase, in a few words."""
    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: Conditions = Field(default_factory=list)
    """Accepted, Fits, Resident, Swapping and Ready."""
    node: str | None = None
    """The node the slot is (or will be) loaded on."""
    gpu: str | None = None
    """The GPU(s) on that node the plan assigned, e.g. dreamteam/0."""
    endpoint: str | None = None
    """The in-cluster URL of the slot's OpenAI-compatible API."""
    vram: str | None = None
    """The VRAM the plan reserves for the slot."""
    vram_source: VramSource | None = None
    """Where the slot's VRAM figure comes from: Spec (spec.model.vram, which always
    wins), Measured (measuredVram) or Estimated (from the model file's header)."""
    measured_vram: str | None = None
    """The VRAM the GPU agent measured while the model was loaded; preferred over the
    estimate at the next load when spec.model.vram is not set."""
    measured_vram_for: str | None = None
    """Fingerprint of the llama-server (image, model, flags) measuredVram was taken
    with; a different one makes the measurement stale."""
    last_request_time: datetime.datetime | None = None
    """When the router last saw a request for this alias."""
    swaps: Annotated[int, Field(ge=0)] | None = None
    """How many times the slot has been loaded."""
    last_swap_seconds: float | None = None
    """How long the last load took, from the decision to load it to Ready."""
    ready_since: datetime.datetime | None = None
    """When the slot last became Ready (the minimum residency counts from here)."""
    loading_since: datetime.datetime | None = None
    """When the current load was decided."""
    evicting: list[str] | None = None
    """Aliases unloaded to make room for the current load."""
    fetch: ModelFetchProgress | None = None
    """Progress of the model download while the fetch step runs or after it failed;
    absent once the file is on the node. Refreshed at each pass of the operator."""


class ModelSlot(CustomObject):
    crd = CrdInfo(
        kind="ModelSlot",
        plural="modelslots",
        singular="modelslot",
        short_names=("ms", "slot"),
        printer_columns=(
            column("Alias", ".spec.alias"),
            column("Model", ".spec.model.path"),
            column("Device", ".spec.device"),
            column("Phase", ".status.phase"),
            column("VRAM", ".spec.model.vram"),
            column("Node", ".status.node"),
            column("Activation", ".spec.activation", priority=1),
            column("Reason", ".status.reason", priority=1),
            AGE_COLUMN,
        ),
        spec_model=ModelSlotSpec,
        status_model=ModelSlotStatus,
    )
