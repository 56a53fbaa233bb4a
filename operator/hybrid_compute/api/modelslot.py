"""ModelSlot: one local model endpoint, a llama-server on the GPU node or on CPU."""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from hybrid_compute.api.common import (
    AGE_COLUMN,
    DURATION_PATTERN,
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
    parse_duration,
    validations,
)
from hybrid_compute.api.gpuworkload import Schedule

Device = Literal["gpu", "cpu"]
Activation = Literal["Always", "OnDemand"]
DrainTimeoutAction = Literal["Defer", "Cut"]
SlotPhase = Literal[
    "Pending", "Standby", "Loading", "Evaluating", "Ready", "Draining", "Unloading",
    "Unschedulable", "Failed"
]
SLOT_CONDITION_TYPES = ("Accepted", "Fits", "Resident", "Swapping", "Ready", "Evaluated")
VramSource = Literal["Spec", "Measured", "Estimated"]
Readiness = Literal["Kubelet", "Operator"]
LoadMode = Literal["auto", "mmap", "none", "dio", "mlock", "mmap+mlock"]
"""llama-server's --load-mode values, spelled as it spells them."""

ArgString = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
AUTO_IDLE = "Auto"
"""spec.idleTimeout that the operator picks from the slot's swaps and requests."""
IdleTimeout = Annotated[str, StringConstraints(
    pattern=rf"^({AUTO_IDLE}|{DURATION_PATTERN[1:-1]})$", max_length=32)]
RECENT_REQUEST_GAPS = 20
"""Idle periods remembered per slot with idleTimeout: Auto."""
OPERATOR_PREFIX = "hybridcompute.io/"
"""Labels and annotations under this prefix are the operator's own."""

OWNED_FLAGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("--port",), "use spec.server.port (the probes and the Service follow it)"),
    (("--host",), "the operator listens on 0.0.0.0 for the probes and the Service"),
    (("-m", "--model", "-mu", "--model-url", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file"),
     "use spec.model.path and spec.model.source (the VRAM plan is for that model)"),
    (("-a", "--alias"), "use spec.model.servedName"),
    (("-ngl", "--n-gpu-layers", "--gpu-layers"), "use spec.server.nGpuLayers"),
    (("-c", "--ctx-size"), "use spec.server.ctxSize"),
    (("-np", "--parallel"), "use spec.server.parallel"),
    (("--embedding", "--embeddings"), "use spec.embedding"),
    (("--metrics",), "the operator always passes --metrics"),
    (("--slot-save-path",), "use spec.server.promptCache (the model folder is mounted "
                            "read-only)"),
)
"""llama-server flags the spec owns or the operator accounts for, and what to do
instead; ``extraArgs`` may not set them (as ``--flag value`` or ``--flag=value``)."""


def owned_flag(arg: str) -> tuple[str, str] | None:
    """(flag, what to use instead) when ``arg`` sets an owned flag."""
    for flags, instead in OWNED_FLAGS:
        for flag in flags:
            if arg == flag or arg.startswith(flag + "="):
                return flag, instead
    return None


def _owned_flag_rule(flags: tuple[str, ...], instead: str) -> dict[str, str]:
    listed = ", ".join(f"'{flag}'" for flag in flags)
    return cel(f"!has(self.extraArgs) || self.extraArgs.all(a, !(a in [{listed}]) && "
               f"![{listed}].exists(f, a.startsWith(f + '=')))",
               f"extraArgs may not set {'/'.join(flags)}: {instead}",
               field_path=".extraArgs")


def has_parent_segment(path: str) -> bool:
    return ".." in path.split("/")


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
            cel("!self.path.matches('(^|/)[.][.](/|$)')",
                "path may not contain '..' segments: the model file stays inside the "
                "model folder", field_path=".path"),
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
        if has_parent_segment(self.path):
            raise ValueError("path: may not contain '..' segments: the model file stays "
                             "inside the model folder")
        return self


PROMPT_CACHE_HOST_PATH = "/var/lib/hybrid-compute/prompt-cache"


class PromptCacheSettings(ApiModel):
    """Keeps llama-server's prompt caches across swaps. When the slot is drained to be
    unloaded for another, llama-server saves the KV cache of each of its parallel
    sequences into a folder on the node; when the slot is loaded again, it restores
    them before the router sends it traffic, so a long prompt that shares a prefix
    with one answered before the swap is not prefilled again from scratch. A cache
    is restored only into the same model file and the same flags that shape it."""

    enabled: bool = False
    """Save and restore the prompt caches (off by default). Each save adds to the
    drain the time to write the caches; each restore delays Ready by the time to
    read them."""
    host_path: Annotated[str, StringConstraints(pattern=r"^/.*", max_length=1024)] = \
        PROMPT_CACHE_HOST_PATH
    """The folder on the node that holds the cache files, created when missing;
    llama-server (uid 1000) must be able to write it. Slots may share it: each
    slot's files carry its namespace and name."""
    max_size: PositiveQuantity = "4Gi"
    """The slot's files in the folder stay within this size; the oldest go first."""


class ServerSettings(ApiModel):
    """llama-server flags. Anything not covered goes into extraArgs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            *(_owned_flag_rule(flags, instead) for flags, instead in OWNED_FLAGS)))

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Container image; defaults to the operator's --gpu-image for GPU slots and
    --cpu-image for CPU slots: llama.cpp's server-cuda-b<N> and server-b<N> images of the
    build whose llama-server flags the operator is tested with. Another image must run
    llama-server and know the flags the operator passes (see the README)."""
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
    load_mode: LoadMode = "auto"
    """--load-mode: how llama-server reads the model file. auto passes no flag, and
    llama-server maps the file (mmap), which loaded fastest in bench/model_load.py on
    CPU, both from a cold page cache and from a warm one (2.8x faster warm than cold).
    none reads into llama-server's own buffers (a copy: 2.1x slower cold, 4.5x warm),
    dio reads past the page cache (O_DIRECT: 4.9x slower cold, and a warm-standby file
    does not help), mlock and mmap+mlock pin the weights in RAM (needs RLIMIT_MEMLOCK
    or CAP_IPC_LOCK; when refused, llama-server warns and goes on). Values other than
    auto need a llama-server that knows --load-mode."""
    warmup: bool = True
    """false passes --no-warmup: /health answers before llama-server's first empty
    decode, and the first request pays for what that decode prepares. On CPU the
    warmup took about 0.27 s and the first token came about 0.1 s sooner without it;
    it stays on, llama-server's own default, so a slot is Ready only once it has
    decoded."""
    extra_args: list[ArgString] = Field(default_factory=list, max_length=64)
    """Further llama-server arguments, passed as given; not the flags the spec sets
    (port, host, model, alias, GPU layers, context size, parallel, embedding,
    metrics, slot save path)."""
    prompt_cache: PromptCacheSettings = Field(default_factory=PromptCacheSettings,
                                              json_schema_extra={"default": {}})
    """Prompt caches kept across swaps."""
    readiness: Readiness = "Kubelet"
    """When a loaded slot starts to serve. Kubelet: once the kubelet's probes mark its
    pod Ready; they run every second, so a swap waits half a second on average
    after the model is loaded. Operator: once the operator sees llama-server answer /health,
    which it asks every 0.1 s while the pod runs but is not Ready yet; the slot's
    Service then publishes not-ready addresses, so the router's requests reach the
    pod before the kubelet calls it Ready (the slot's status may say Ready up to a
    probe period before its pod does)."""

    @model_validator(mode="after")
    def _no_owned_flags(self) -> ServerSettings:
        problems = [f"extraArgs: may not set {flag}: {instead}"
                    for flag, instead in filter(None, map(owned_flag, self.extra_args))]
        if problems:
            raise ValueError("; ".join(problems))
        return self


class IdleTimeoutBounds(ApiModel):
    """The range idleTimeout: Auto chooses from."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("duration(self.min) > duration('0s')", "min must be above 0s",
                field_path=".min"),
            cel("duration(self.min) <= duration(self.max)", "min must not exceed max",
                field_path=".min"),
        )
    )

    min: Duration
    """The shortest idle time it picks, for example 1m."""
    max: Duration
    """The longest idle time it picks, for example 30m."""

    @model_validator(mode="after")
    def _ordered(self) -> IdleTimeoutBounds:
        low, high = parse_duration(self.min), parse_duration(self.max)
        if low <= datetime.timedelta(0):
            raise ValueError("min: must be above 0s")
        if low > high:
            raise ValueError("min: must not exceed max")
        return self


class DrainSettings(ApiModel):
    """How a loaded slot lets its in-flight requests finish before it is unloaded."""

    timeout: Duration = "60s"
    """Longest wait for llama-server to report no busy slot (its /slots endpoint) once
    the router has stopped sending new requests; 0s unloads without waiting."""
    on_timeout: DrainTimeoutAction = "Defer"
    """Defer: the slot keeps serving and the swap is tried again after another timeout,
    so no request is cut. Cut: unload anyway, ending the requests still running."""


ChatRole = Literal["system", "user", "assistant"]
EvaluationOutcome = Literal["Evaluating", "Passed", "Failed", "NotEvaluated"]
Verdict = Literal["Passed", "Failed"]
PromptText = Annotated[str, StringConstraints(min_length=1, max_length=16384)]
TokensPerSecond = Annotated[float, Field(gt=0, le=100000)]
MAX_EVALUATION_LATENCY = "10m"
HISTORY_LENGTH = 5


def _latency_rule(field: str) -> dict[str, str]:
    return cel(f"!has(self.{field}) || (duration(self.{field}) > duration('0s') && "
               f"duration(self.{field}) <= duration('{MAX_EVALUATION_LATENCY}'))",
               f"{field} must be above 0s and at most {MAX_EVALUATION_LATENCY}",
               field_path=f".{field}")


def _check_latency(value: str | None, field: str) -> None:
    if value is not None and not (datetime.timedelta(0) < parse_duration(value)
                                  <= parse_duration(MAX_EVALUATION_LATENCY)):
        raise ValueError(f"{field}: must be above 0s and at most {MAX_EVALUATION_LATENCY}")


class ChatMessage(ApiModel):
    """One message of an evaluation prompt, as the OpenAI chat API takes it."""

    role: ChatRole = "user"
    """system, user or assistant."""
    content: PromptText
    """The message text."""


class EvaluationPrompt(ApiModel):
    """One request sent to a new model before the router sends it traffic, and what
    its answer must show."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.prompt) != has(self.messages)",
                "set exactly one of prompt or messages", field_path=".prompt"),
            _latency_rule("maxLatency"),
        )
    )

    name: Annotated[str, StringConstraints(
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", max_length=63)] | None = None
    """A short label for reports and conditions; prompt N (from 1) when unset."""
    prompt: PromptText | None = None
    """A single user message."""
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=32)] | None = None
    """A whole conversation, instead of prompt."""
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 32
    """max_tokens of the request: keep it small, the checks do not need long answers."""
    expect_json: bool = False
    """Ask for a JSON object (response_format json_object) and check the answer parses
    as JSON."""
    max_latency: Duration | None = None
    """This prompt's bound on the time to the whole answer, instead of the
    evaluation's maxLatency."""
    min_tokens_per_second: TokensPerSecond | None = None
    """This prompt's generation speed floor, instead of the evaluation's."""

    @model_validator(mode="after")
    def _one_input(self) -> EvaluationPrompt:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: set exactly one of prompt or messages")
        _check_latency(self.max_latency, "maxLatency")
        return self


class ModelEvaluation(ApiModel):
    """Prompts a new model must answer well enough before it is routed to; a model
    that fails is rolled back to the previous one."""

    model_config = ConfigDict(
        json_schema_extra=validations(_latency_rule("maxLatency"))
    )

    prompts: Annotated[list[EvaluationPrompt], Field(min_length=1, max_length=16)]
    """Sent one after the other to the slot's endpoint once the new model's pod is
    Ready. Each answer is checked for a server error, its latency, its generation speed
    (with a floor) and valid JSON (with expectJson)."""
    max_latency: Duration = "30s"
    """Each answer must arrive within this, for example 5s."""
    min_tokens_per_second: TokensPerSecond | None = None
    """Generation speed floor in tokens per second (llama-server's own timing, else
    completion tokens over the request's time); unset: not checked."""
    pass_ratio: Annotated[float, Field(gt=0, le=1)] = 1.0
    """Share of the prompts that must pass all their checks; 1 means every prompt."""

    @model_validator(mode="after")
    def _bounds(self) -> ModelEvaluation:
        _check_latency(self.max_latency, "maxLatency")
        return self


class ModelSlotSpec(ApiModel):
    """A local model endpoint: which model, on which device, when it holds the GPU."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.activation != 'OnDemand' || has(self.idleTimeout)",
                "an OnDemand slot needs spec.idleTimeout: the GPU goes back to the default "
                "slot after that long without a request", reason="FieldValueRequired",
                field_path=".idleTimeout"),
            cel(f"!has(self.idleTimeout) || self.idleTimeout != '{AUTO_IDLE}' || "
                "has(self.idleTimeoutBounds)",
                f"idleTimeout: {AUTO_IDLE} needs spec.idleTimeoutBounds (min and max)",
                reason="FieldValueRequired", field_path=".idleTimeoutBounds"),
            cel(f"!has(self.idleTimeoutBounds) || (has(self.idleTimeout) && "
                f"self.idleTimeout == '{AUTO_IDLE}')",
                f"spec.idleTimeoutBounds applies to idleTimeout: {AUTO_IDLE} only",
                field_path=".idleTimeoutBounds"),
            cel("self.default || !has(self.sleepSchedule)",
                "spec.sleepSchedule applies to the default slot only",
                field_path=".sleepSchedule"),
            cel("self.default || !has(self.sleepAfter)",
                "spec.sleepAfter applies to the default slot only", field_path=".sleepAfter"),
            cel("!has(self.sleepAfter) || duration(self.sleepAfter) > duration('0s')",
                "spec.sleepAfter must be above 0s", field_path=".sleepAfter"),
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
            cel("!self.embedding || !has(self.evaluation)",
                "spec.evaluation sends chat prompts; an embedding slot cannot be evaluated",
                field_path=".evaluation"),
            cel(f"!has(self.podAnnotations) || "
                f"self.podAnnotations.all(k, !k.startsWith('{OPERATOR_PREFIX}'))",
                f"podAnnotations under {OPERATOR_PREFIX} are the operator's own",
                field_path=".podAnnotations"),
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
    idle_timeout: IdleTimeout | None = None
    """For OnDemand slots: how long without a request before the GPU goes back to the
    default slot, for example 5m. It counts from the last request or, when the slot
    was swapped in for it, from the moment the slot became Ready. Auto picks it within
    idleTimeoutBounds from the slot's swap times and the gaps between its requests
    (status.idleTimeout says what it chose and why)."""
    idle_timeout_bounds: IdleTimeoutBounds | None = None
    """With idleTimeout: Auto, the range it chooses from."""
    sleep_schedule: Schedule | None = None
    """For the default slot: daily windows (in a time zone) during which it is not
    loaded unless a request asks for it, for example the night; it loads on a request
    and sleeps again once its requests stop (sleepAfter, else its idle time)."""
    sleep_after: Duration | None = None
    """For the default slot: unload it after this long without a request, at any
    time, so an unused card holds nothing (about 9 W instead of about 50 W with a
    model in VRAM); the next request loads it again. Unset: it stays loaded."""
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
    drain: DrainSettings = Field(default_factory=DrainSettings,
                                 json_schema_extra={"default": {}})
    """What happens to requests in flight when the slot is unloaded for another."""
    evaluation: ModelEvaluation | None = None
    """Prompts a new spec.model must pass once loaded before the router sends it
    traffic; one that fails is rolled back to the previous model. Unset: a new model is
    routed to as soon as it is Ready."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelSlotSpec:
        """The CEL rules of the CRD, for objects checked without an API server."""
        problems = []
        if self.activation == "OnDemand" and not self.idle_timeout:
            problems.append("idleTimeout: an OnDemand slot needs spec.idleTimeout")
        if self.idle_timeout == AUTO_IDLE and self.idle_timeout_bounds is None:
            problems.append(f"idleTimeoutBounds: idleTimeout: {AUTO_IDLE} needs "
                            "spec.idleTimeoutBounds (min and max)")
        if self.idle_timeout_bounds is not None and self.idle_timeout != AUTO_IDLE:
            problems.append(f"idleTimeoutBounds: applies to idleTimeout: {AUTO_IDLE} only")
        if not self.default and self.sleep_schedule is not None:
            problems.append("sleepSchedule: applies to the default slot only")
        if not self.default and self.sleep_after is not None:
            problems.append("sleepAfter: applies to the default slot only")
        if self.sleep_after is not None and parse_duration(self.sleep_after) <= \
                datetime.timedelta(0):
            problems.append("sleepAfter: must be above 0s")
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
        if self.embedding and self.evaluation is not None:
            problems.append("evaluation: an embedding slot cannot be evaluated")
        if any(key.startswith(OPERATOR_PREFIX) for key in self.pod_annotations):
            problems.append(f"podAnnotations: keys under {OPERATOR_PREFIX} are the "
                            "operator's own")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SwapPhases(ApiModel):
    """Seconds each phase of a swap took; a phase that did not happen is absent."""

    drain: float | None = None
    """Waiting for the outgoing slot's in-flight requests to finish."""
    unload: float | None = None
    """From scaling the outgoing slot to 0 until its pods were gone."""
    schedule: float | None = None
    """From deciding to load until the pod was bound to a node."""
    container_start: float | None = None
    """From binding until llama-server's container was running."""
    model_load: float | None = None
    """From the container running until llama-server answered /health (pod Ready)."""
    route_restored: float | None = None
    """From Ready until the router fetched a state that routes the alias locally."""


class IdleTimeoutChoice(ApiModel):
    """The idle time idleTimeout: Auto chose, and why."""

    seconds: Annotated[float, Field(ge=0)]
    """The idle time in force, in seconds."""
    reason: str
    """How it was chosen: the swap time, the idle periods it covers, the bounds."""


class SwapProgress(ApiModel):
    """Moments of the load in progress, as the operator saw them."""

    drained_at: datetime.datetime | None = None
    """The slots it replaces had finished their in-flight requests."""
    started_at: datetime.datetime | None = None
    """Nothing held its memory any more: its Deployment was scaled to 1."""
    scheduled_at: datetime.datetime | None = None
    running_at: datetime.datetime | None = None


class PromptCacheFile(ApiModel):
    """A prompt cache llama-server saved for the slot into its node's folder."""

    name: Annotated[str, StringConstraints(max_length=255)]
    """The file's name in the folder."""
    sequence: Annotated[int, Field(ge=0)]
    """The llama-server slot (parallel sequence) it was saved from and restores to."""
    key: Annotated[str, StringConstraints(max_length=64)]
    """Fingerprint of the model file and the flags that shape the cache (image,
    context size, parallel, flash attention, extraArgs): only a slot with the same
    key restores it."""
    model: Annotated[str, StringConstraints(max_length=64)]
    """Fingerprint of the model as llama-server described it when saving (size,
    parameters, vocabulary, context): a file changed in place is not restored."""
    tokens: Annotated[int, Field(ge=0)]
    """Tokens of the prompt it holds."""
    bytes: Annotated[int, Field(ge=0)]
    """Size of the file."""
    saved_at: datetime.datetime
    """When it was saved."""


class PromptCacheSave(ApiModel):
    """The last save of the slot's prompt caches, before it was unloaded."""

    at: datetime.datetime
    """When it ended."""
    seconds: float
    """How long the save took (it delays the unload)."""
    files: Annotated[int, Field(ge=0)]
    """Caches saved."""
    bytes: Annotated[int, Field(ge=0)]
    """Bytes written."""
    evicted: Annotated[int, Field(ge=0)] = 0
    """Files given up to stay within maxSize, the oldest first."""
    failed: Annotated[list[str], Field(max_length=16)] | None = None
    """The saves that failed, and why."""


class PromptCacheRestore(ApiModel):
    """The last restore of the slot's prompt caches, after it was loaded."""

    at: datetime.datetime
    """When it ended."""
    seconds: float
    """How long the restore took (it delays Ready)."""
    files: Annotated[int, Field(ge=0)]
    """Caches restored."""
    tokens: Annotated[int, Field(ge=0)]
    """Prompt tokens restored, which requests that share them need not prefill."""
    failed: Annotated[list[str], Field(max_length=16)] | None = None
    """The restores that failed or were refused, and why; those caches are dropped."""


class PromptCacheStatus(ApiModel):
    """The slot's prompt caches in its node's folder (spec.server.promptCache)."""

    node: str | None = None
    """The node whose folder holds the files."""
    files: Annotated[list[PromptCacheFile], Field(max_length=64)] = Field(default_factory=list)
    """The caches saved, oldest first."""
    last_save: PromptCacheSave | None = None
    last_restore: PromptCacheRestore | None = None


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


class ModelPageCache(ApiModel):
    """How much of the slot's model file a node's page cache holds while the slot is
    not loaded, as the GPU agent there measured it; a load from the cache reads
    memory instead of disk."""

    node: str
    """The node whose page cache this is: where the slot runs or its Deployment
    points, else the node holding most of the file."""
    resident_percent: Annotated[int, Field(ge=0, le=100)]
    """Share of the file in the page cache, in whole percent rounded down."""
    state: Annotated[str, StringConstraints(max_length=32)]
    """The agent's word for the file: Held or Locked (within its budget), OverBudget,
    Paused (memory is short), Pending (not reached yet) or Missing."""
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    """Size of the model file; absent when the agent cannot read it."""


class ModelHistoryEntry(ApiModel):
    """One model the slot ran, from when it first answered until another replaced it."""

    model: ModelSource
    """spec.model as it was (the operator renders it again to roll back)."""
    served_name: str
    """The name llama-server served it under."""
    fingerprint: str
    """Identifies the model file and name (spec.model without vram and quantization)."""
    since: datetime.datetime
    """When its pod first answered."""
    until: datetime.datetime | None = None
    """When another model replaced it; absent while it is the slot's model."""
    evaluation: EvaluationOutcome
    """Evaluating, Passed, Failed, or NotEvaluated (the slot had no spec.evaluation, or
    the model was rolled back to)."""
    failed_checks: Annotated[list[str], Field(max_length=16)] | None = None
    """The checks it failed, for example "prompt 1: latency 2.31s > 1s"."""


class EvaluationRecord(ApiModel):
    """The verdict of the last evaluation the operator ran."""

    model: str
    """Fingerprint of the model evaluated."""
    served_name: str
    """Its served name."""
    criteria: str
    """Fingerprint of spec.evaluation at the time: changed criteria evaluate again."""
    result: Verdict
    """Passed or Failed."""
    passed_prompts: Annotated[int, Field(ge=0)]
    """Prompts that passed every check."""
    prompts: Annotated[int, Field(ge=0)]
    """Prompts sent."""
    failed_checks: Annotated[list[str], Field(max_length=16)] | None = None
    """The checks that failed."""
    finished: datetime.datetime
    """When the evaluation ended."""


class ModelSlotStatus(ApiModel):
    """What the operator observed and decided for this slot."""

    phase: SlotPhase | None = None
    """Pending, Standby, Loading, Evaluating, Ready, Draining, Unloading, Unschedulable
    or Failed."""
    reason: str | None = None
    """Why the slot is in this phase, in a few words."""
    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: Conditions = Field(default_factory=list)
    """Accepted, Fits, Resident, Swapping, Ready and Evaluated."""
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
    recent_swap_seconds: list[float] | None = Field(default=None, max_length=10)
    """The durations of the last few loads, oldest first; the router's wait estimate
    comes from them."""
    last_swap_phases: SwapPhases | None = None
    """Where the time of the last swap went, phase by phase."""
    recent_request_gaps: list[float] | None = Field(default=None,
                                                    max_length=RECENT_REQUEST_GAPS)
    """With idleTimeout: Auto, the last idle periods between two requests (seconds,
    oldest first), those at least idleTimeoutBounds.min long."""
    idle_timeout: IdleTimeoutChoice | None = None
    """With idleTimeout: Auto, the idle time chosen and the reason."""
    swap_progress: SwapProgress | None = None
    """When each step of the current load was seen; becomes lastSwapPhases at Ready."""
    draining_since: datetime.datetime | None = None
    """When the slot stopped taking new requests to be unloaded."""
    drain_deferred_until: datetime.datetime | None = None
    """A drain that timed out with requests in flight keeps the slot loaded until then."""
    ready_since: datetime.datetime | None = None
    """When the slot last became Ready (the minimum residency counts from here)."""
    served_until: datetime.datetime | None = None
    """When the slot last stopped being Ready (to drain, unload or reload): a request
    from readySince to then was the slot's to answer, so it does not bring the slot
    back once its idle time has run out."""
    loading_since: datetime.datetime | None = None
    """When the current load was decided."""
    evicting: list[str] | None = None
    """Aliases unloaded to make room for the current load."""
    evaluation: EvaluationRecord | None = None
    """The last evaluation of a new model (spec.evaluation)."""
    rejected_model: str | None = None
    """Fingerprint of spec.model while it is rejected: it failed evaluation, so the pod
    runs the previous model until spec.model (or spec.evaluation) changes."""
    history: Annotated[list[ModelHistoryEntry], Field(max_length=HISTORY_LENGTH)] | None = None
    """The last models the slot ran, oldest first."""
    fetch: ModelFetchProgress | None = None
    """Progress of the model download while the fetch step runs or after it failed;
    absent once the file is on the node. Refreshed at each pass of the operator."""
    page_cache: ModelPageCache | None = None
    """The model file in the node's page cache, where the node's GPU agent keeps the
    files of slots that are not loaded warm (hybrid-compute agent --page-cache-budget)."""
    prompt_cache: PromptCacheStatus | None = None
    """The prompt caches kept across swaps (spec.server.promptCache)."""


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
