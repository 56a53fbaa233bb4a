"""GpuWorkload: a non-LLM GPU consumer (TTS, image generation, fine-tuning) that
the operator admits by priority, VRAM budget and time window."""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from hybrid_compute.api.common import (
    AGE_COLUMN,
    ApiModel,
    ClockTime,
    Conditions,
    CrdInfo,
    CustomObject,
    Duration,
    PositiveQuantity,
    TimeZone,
    cel,
    column,
    validations,
)

WorkloadClass = Literal["TTS", "Embedding", "ImageGeneration", "FineTuning", "Other"]
WorkloadKind = Literal["Job", "Deployment"]
WorkloadPhase = Literal["Queued", "Admitted", "Running", "Preempted", "Succeeded", "Failed"]
WORKLOAD_CONDITION_TYPES = ("Accepted", "Fits", "Admitted", "Preempted", "Finished")

# The seed's priority table; LLM inference (ModelSlots) ranks above all of these.
CLASS_PRIORITY: dict[str, int] = {
    "TTS": 80,
    "Embedding": 60,
    "ImageGeneration": 40,
    "FineTuning": 20,
    "Other": 10,
}

class TimeWindow(ApiModel):
    """A daily window [start, end) in the schedule's time zone; it may cross midnight
    (22:00-06:00)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.start != self.end", "a window needs different start and end times",
                field_path=".end"),
        )
    )

    start: ClockTime
    """Opening time, HH:MM."""
    end: ClockTime
    """Closing time, HH:MM (before start means the window ends the next day)."""

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start == self.end:
            raise ValueError("end: a window needs different start and end times")
        return self


class Schedule(ApiModel):
    """When the workload may run."""

    windows: list[TimeWindow] = Field(min_length=1, max_length=16)
    """Daily windows; outside them the workload waits (Queued)."""
    time_zone: TimeZone = "UTC"
    """IANA time zone of the windows, for example Pacific/Auckland."""


class PodSpecFragment(ApiModel):
    """A core/v1 PodSpec; only containers is checked here, the rest is passed on."""

    model_config = ConfigDict(extra="allow")

    containers: list[dict[str, Any]] = Field(min_length=1, max_length=32)
    """The workload's containers (core/v1 Container)."""


class PodTemplate(ApiModel):
    """A core/v1 PodTemplateSpec."""

    model_config = ConfigDict(extra="allow")

    metadata: dict[str, Any] | None = None
    """Labels and annotations for the pods."""
    spec: PodSpecFragment
    """The pod spec."""


class GpuWorkloadSpec(ApiModel):
    """A GPU consumer other than LLM inference, and the rules for letting it run."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.kind == 'Job' || !has(self.backoffLimit)",
                "backoffLimit applies to kind Job only", field_path=".backoffLimit"),
            cel("self.kind == 'Deployment' || !has(self.replicas)",
                "replicas applies to kind Deployment only", field_path=".replicas"),
            cel("self.kind == 'Job' || !has(self.maxDuration)",
                "maxDuration applies to kind Job only; a Deployment runs until preempted",
                field_path=".maxDuration"),
        )
    )

    workload_class: WorkloadClass = Field(alias="class")
    """TTS, Embedding, ImageGeneration, FineTuning or Other; sets the default priority
    (the seed's order: TTS > embeddings > image generation > fine-tuning)."""
    priority: Annotated[int, Field(ge=0, le=999)] | None = None
    """Overrides the class priority; LLM inference always ranks higher."""
    vram: PositiveQuantity
    """GPU memory the workload needs at its peak, for example 10Gi."""
    preemptible: bool = True
    """Whether the operator may suspend it when LLM inference needs the card."""
    only_when_gpu_idle: bool = False
    """Run only while no OnDemand model is asking for the GPU (the seed's rule for local
    TTS, a fallback to the cloud service)."""
    kind: WorkloadKind = "Job"
    """Job: runs to completion (created suspended, unsuspended when admitted).
    Deployment: runs while admitted (0 replicas otherwise)."""
    template: PodTemplate
    """The pod template (metadata and spec) of the Job or Deployment. The operator adds
    the GPU request and node placement."""
    replicas: Annotated[int, Field(ge=1, le=16)] | None = None
    """Replicas of a Deployment while admitted (default 1)."""
    backoff_limit: Annotated[int, Field(ge=0, le=100)] | None = None
    """Retries of a Job's pod before the Job fails."""
    schedule: Schedule | None = None
    """Time windows; without one the workload may run at any time."""
    max_duration: Duration | None = None
    """A Job running longer than this is stopped and marked Failed."""

    @model_validator(mode="after")
    def _kind_fields(self) -> GpuWorkloadSpec:
        problems = []
        if self.kind != "Job" and self.backoff_limit is not None:
            problems.append("backoffLimit applies to kind Job only")
        if self.kind != "Deployment" and self.replicas is not None:
            problems.append("replicas applies to kind Deployment only")
        if self.kind != "Job" and self.max_duration is not None:
            problems.append("maxDuration applies to kind Job only")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class GpuWorkloadStatus(ApiModel):
    """The admission decision and its reason."""

    phase: WorkloadPhase | None = None
    """Queued, Admitted, Running, Preempted, Succeeded or Failed."""
    reason: str | None = None
    """Why the workload is in this phase."""
    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: Conditions = Field(default_factory=list)
    """Accepted, Fits, Admitted, Preempted and Finished."""
    window: str | None = None
    """The schedule, for display, e.g. 02:00-08:00 Pacific/Auckland."""
    node: str | None = None
    """The GPU node it runs on."""
    gpu: str | None = None
    """The GPU it was admitted to, e.g. dreamteam/0."""
    admitted_at: datetime.datetime | None = None
    """When it was last admitted."""
    preemptions: Annotated[int, Field(ge=0)] | None = None
    """How often it was preempted."""


class GpuWorkload(CustomObject):
    crd = CrdInfo(
        kind="GpuWorkload",
        plural="gpuworkloads",
        singular="gpuworkload",
        short_names=("gw", "gpuw"),
        printer_columns=(
            column("Class", ".spec.class"),
            column("Phase", ".status.phase"),
            column("VRAM", ".spec.vram"),
            column("Window", ".status.window"),
            column("Reason", ".status.reason"),
            column("Kind", ".spec.kind", priority=1),
            AGE_COLUMN,
        ),
        spec_model=GpuWorkloadSpec,
        status_model=GpuWorkloadStatus,
    )
