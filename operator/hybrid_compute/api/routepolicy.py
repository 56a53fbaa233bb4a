"""RoutePolicy: cloud models, fallbacks, the routing matrix behind ``hybrid/auto``,
the cloud budget and the LiteLLM deployment they are rendered into."""

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
    SecretKeyRef,
    TimeZone,
    cel,
    column,
    validations,
)

BudgetPeriod = Literal["Day", "Week", "Month"]
BudgetAction = Literal["RouteLocal", "Refuse", "Allow"]
PrivacyAction = Literal["Hold", "Refuse"]
RoutingStrategy = Literal[
    "simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing",
    "usage-based-routing-v2", "cost-based-routing",
]
ROUTE_POLICY_CONDITION_TYPES = ("Accepted", "Rendered", "Ready")

TagName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=63)]
KeyName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
PricePerMillion = Annotated[float, Field(ge=0, le=10000)]
PythonCallable = Annotated[str, StringConstraints(
    pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$", max_length=256)]
ROUTER_MODULE = "hybrid_router"
"""The router hook's module, which the operator ships beside LiteLLM's config.yaml."""


class CloudModel(ApiModel):
    """One cloud deployment behind an alias. Several entries may share an alias;
    LiteLLM balances between them by the routing strategy."""

    alias: Alias
    """The alias clients ask for, for example cloud/frontier."""
    model: Annotated[
        str, StringConstraints(pattern=r"^[a-z0-9_-]+/[^\s]+$", max_length=256)
    ]
    """The LiteLLM provider model, provider/model, for example
    anthropic/claude-sonnet-4-5-20250514."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the provider API key; passed to LiteLLM as an environment
    variable, never written into its ConfigMap."""
    api_base: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=512)] \
        | None = None
    """Provider base URL, for OpenAI-compatible providers or a proxy."""
    input_cost_per_million: PricePerMillion | None = None
    """USD per million input tokens (LiteLLM's own price table applies when unset)."""
    output_cost_per_million: PricePerMillion | None = None
    """USD per million output tokens."""
    max_context_tokens: Annotated[int, Field(ge=1)] | None = None
    """Largest context the model accepts."""


class Fallback(ApiModel):
    """Where a request goes when its alias fails or is not available."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!(self.alias in self.to)", "a fallback cannot point to its own alias",
                field_path=".to"),
        )
    )

    alias: Alias
    """The alias that falls back, for example local/fast."""
    to: list[Alias] = Field(min_length=1, max_length=8)
    """Aliases tried in order, for example [cloud/fast]."""

    @model_validator(mode="after")
    def _not_itself(self) -> Fallback:
        if self.alias in self.to:
            raise ValueError("to: a fallback cannot point to its own alias")
        return self


class Routes(ApiModel):
    """The seed's routing matrix: which alias ``hybrid/auto`` resolves to."""

    embedding: Alias = "local/embed"
    """Embedding requests."""
    simple: Alias = "local/fast"
    """Simple tasks: classification, extraction, short summaries, RAG query synthesis."""
    medium: Alias = "local/quality"
    """Medium tasks whose context is below longContextTokens."""
    long_context: Alias = "cloud/mid"
    """Medium tasks whose context reaches longContextTokens."""
    complex: Alias = "cloud/frontier"
    """Complex reasoning, novel architecture, creative work, while the budget lasts."""
    budget_exhausted: Alias = "local/quality"
    """Where complex tasks go when the cloud budget is spent."""
    gpu_busy: Alias = "cloud/mid"
    """Where local-bound work overflows while the GPU is busier than gpuBusyThreshold."""


class Privacy(ApiModel):
    """Requests carrying a privacy tag never leave the box."""

    tags: list[TagName] = Field(default_factory=lambda: ["private", "privacy", "sensitive"],
                                min_length=1, max_length=16)
    """Request tags that mark a request as privacy-sensitive, on any channel LiteLLM
    carries: metadata.tags, the top-level tags, the x-litellm-tags header, or the
    metadata of the virtual key or its team."""
    action: PrivacyAction = "Hold"
    """What to do when the local model is not Ready: Hold the request until it is (up to
    holdTimeout, then refuse) or Refuse at once. Privacy requests are never bridged to
    cloud."""
    hold_timeout: Duration = "60s"
    """Longest a privacy request is held waiting for a local model."""
    local_only_aliases: list[Alias] = Field(default_factory=list, max_length=64)
    """Aliases whose every request is a privacy request: held or refused while the
    local model is not Ready, never bridged to cloud."""
    local_only_keys: list[KeyName] = Field(default_factory=list, max_length=64)
    """LiteLLM virtual keys (by key alias or name) or teams (by team alias or id)
    whose every request is a privacy request."""


class Routing(ApiModel):
    """How ``hybrid/auto`` is resolved."""

    auto_model: Alias = "hybrid/auto"
    """The meta-model name that asks the router to decide."""
    routes: Routes = Field(default_factory=Routes, json_schema_extra={"default": {}})
    """Target alias per decision."""
    tasks: dict[TagName, Alias] = Field(default_factory=dict, max_length=64)
    """Explicit task → alias rules checked first, for example classification: local/fast,
    code-completion: local/quality, multi-turn-agent: cloud/frontier."""
    long_context_tokens: Annotated[int, Field(ge=256, le=10_000_000)] = 16000
    """Context length from which medium tasks go to routes.longContext."""
    gpu_busy_threshold: Annotated[int, Field(ge=1, le=100)] = 80
    """GPU utilisation percentage above which the GPU counts as busy."""
    privacy: Privacy = Field(default_factory=Privacy, json_schema_extra={"default": {}})
    """Privacy guarantee for tagged requests."""
    patience: Duration = "0s"
    """How long a request for a local alias whose slot is not Ready may wait for it
    instead of going to its fallback: it waits when the operator predicts the slot
    Ready within this time (from the slot's recent swaps), and goes to the fallback
    once the time is up. A request may ask for its own with the header
    x-hybrid-patience or metadata.patience. 0s bridges at once, as the seed does
    during a swap."""
    max_patience: Duration = "60s"
    """The longest patience a request may ask for, so that clients cannot hold the
    proxy's connections open for long."""


class Budget(ApiModel):
    """A cap on cloud spend per period."""

    amount: Annotated[float, Field(gt=0, le=1_000_000)]
    """USD per period."""
    period: BudgetPeriod = "Month"
    """Day, Week or Month (calendar periods in timeZone)."""
    time_zone: TimeZone = "UTC"
    """IANA time zone in which periods start, for example Pacific/Auckland."""
    when_exhausted: BudgetAction = "RouteLocal"
    """RouteLocal sends cloud-bound requests to local models, Refuse answers 429, Allow
    only reports."""


class RouterSettings(ApiModel):
    """LiteLLM router_settings."""

    routing_strategy: RoutingStrategy = "simple-shuffle"
    """How LiteLLM picks among deployments sharing an alias."""
    num_retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries per request before falling back."""
    timeout: Duration = "120s"
    """Request timeout."""


class LiteLLMTarget(ApiModel):
    """The LiteLLM deployment this policy drives."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(f"!has(self.customAuth) || !self.customAuth.startsWith('{ROUTER_MODULE}.')",
                f"customAuth cannot name the router hook's module {ROUTER_MODULE}",
                field_path=".customAuth"),
        )
    )

    config_map_name: DnsLabel = "litellm-config"
    """ConfigMap the rendered config.yaml and router hook are written to."""
    deployment_name: DnsLabel = "litellm"
    """Deployment rolled (checksum annotation) when the rendering changes."""
    master_key_secret_ref: SecretKeyRef | None = None
    """Secret key with LiteLLM's master key."""
    database_url_secret_ref: SecretKeyRef | None = None
    """Secret key with a PostgreSQL URL for LiteLLM's spend tracking."""
    custom_auth: PythonCallable | None = None
    """LiteLLM's general_settings.custom_auth: the function (module.function) that
    authenticates every request instead of LiteLLM's key database, the master key
    included. It returns LiteLLM's UserAPIKeyAuth, whose key alias, team and
    metadata the router hook reads for privacy (routing.privacy.localOnlyKeys, a
    privacy tag in the key's or team's metadata). The module must be importable in
    LiteLLM's container: mount it (a ConfigMap) and add its folder to PYTHONPATH
    with the chart's litellm.extraVolumes, extraVolumeMounts and extraEnv."""

    @model_validator(mode="after")
    def _not_the_router_module(self) -> LiteLLMTarget:
        if self.custom_auth and self.custom_auth.startswith(f"{ROUTER_MODULE}."):
            raise ValueError(
                f"customAuth: cannot name the router hook's module {ROUTER_MODULE}")
        return self


class RoutePolicySpec(ApiModel):
    """Routing rules and cloud models for the LiteLLM endpoint."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            # Lists left out of a manifest are absent, not empty, to CEL.
            cel("!has(self.cloudModels) || "
                "self.cloudModels.all(m, m.alias != self.routing.autoModel)",
                "a cloud model cannot use the meta-model alias", field_path=".cloudModels"),
            cel("!has(self.fallbacks) || "
                "self.fallbacks.all(f, self.fallbacks.exists_one(g, g.alias == f.alias))",
                "each alias may have only one fallbacks entry", field_path=".fallbacks"),
        )
    )

    cloud_models: list[CloudModel] = Field(default_factory=list, max_length=64)
    """Cloud deployments and their prices."""
    fallbacks: list[Fallback] = Field(default_factory=list, max_length=64)
    """Fallback chains, for example local/fast → cloud/fast."""
    routing: Routing = Field(default_factory=Routing, json_schema_extra={"default": {}})
    """How hybrid/auto is resolved."""
    budget: Budget | None = None
    """Cloud spend cap; no cap when unset."""
    router: RouterSettings = Field(default_factory=RouterSettings,
                                   json_schema_extra={"default": {}})
    """LiteLLM router settings."""
    litellm: LiteLLMTarget = Field(default_factory=LiteLLMTarget,
                                   json_schema_extra={"default": {}})
    """The LiteLLM ConfigMap and Deployment."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RoutePolicySpec:
        problems = []
        if any(m.alias == self.routing.auto_model for m in self.cloud_models):
            problems.append("cloudModels: a cloud model cannot use the meta-model alias")
        aliases = [f.alias for f in self.fallbacks]
        if len(aliases) != len(set(aliases)):
            problems.append("fallbacks: each alias may have only one fallbacks entry")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AliasState(ApiModel):
    """Where an alias routes right now."""

    alias: str
    """The alias."""
    state: Literal["Local", "Bridged", "Cloud", "Unavailable"]
    """Local: its slot is Ready; Bridged: sent to its fallback; Cloud: a cloud model;
    Unavailable: nowhere to send it."""
    target: str | None = None
    """The alias or model requests go to."""


class Spend(ApiModel):
    """Cloud spend in the current budget period."""

    amount: float = 0.0
    """USD spent so far."""
    period_start: datetime.datetime | None = None
    """When the current period started."""


class RoutePolicyStatus(ApiModel):
    """What the operator rendered and observed for this policy."""

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: Conditions = Field(default_factory=list)
    """Accepted, Rendered and Ready."""
    config_hash: str | None = None
    """SHA-256 of the rendered LiteLLM config."""
    aliases: list[AliasState] = Field(default_factory=list)
    """Live routing per alias."""
    spend: Spend | None = None
    """Cloud spend this period."""
    budget_remaining: float | None = None
    """USD left in this period."""
    gpu_busy: bool | None = None
    """Whether the GPU was busier than the threshold at the last look."""


class RoutePolicy(CustomObject):
    crd = CrdInfo(
        kind="RoutePolicy",
        plural="routepolicies",
        singular="routepolicy",
        short_names=("rp",),
        printer_columns=(
            column("Budget", ".spec.budget.amount", "number"),
            column("Period", ".spec.budget.period"),
            column("Spent", ".status.spend.amount", "number"),
            column("ConfigMap", ".spec.litellm.configMapName"),
            column("Hash", ".status.configHash", priority=1),
            AGE_COLUMN,
        ),
        spec_model=RoutePolicySpec,
        status_model=RoutePolicyStatus,
    )
