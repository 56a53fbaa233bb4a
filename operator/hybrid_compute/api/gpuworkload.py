"""GpuWorkload: a non-LLM GPU consumer (TTS, image generation, fine-tuning) that
the operator admits by priority, VRAM budget and time window."""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

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
    parse_duration,
    validations,
)

WorkloadClass = Literal["TTS", "Embedding", "ImageGeneration", "FineTuning", "Other"]
WorkloadKind = Literal["Job", "Deployment", "Reservation"]
ReservationClass = Literal["Household", "Workload"]
RESERVATION: Final = "Reservation"
WorkloadPhase = Literal["Queued", "Admitted", "Running", "Preempted", "Succeeded", "Failed"]
WORKLOAD_CONDITION_TYPES = ("Accepted", "Fits", "Admitted", "Preempted", "Finished")
NodeName = Annotated[str, StringConstraints(
    pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    max_length=253)]

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


def _only_for_reservations(field: str, reason: str) -> dict[str, str]:
    return cel(f"self.kind == '{RESERVATION}' || !has(self.{field})",
               f"{field} applies to kind {RESERVATION} only{reason}", field_path=f".{field}")


class GpuWorkloadSpec(ApiModel):
    """A GPU consumer other than LLM inference, and the rules for letting it run; or,
    with kind Reservation, GPU memory held for something that is not a pod."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.kind == 'Job' || !has(self.backoffLimit)",
                "backoffLimit applies to kind Job only", field_path=".backoffLimit"),
            cel("self.kind == 'Deployment' || !has(self.replicas)",
                "replicas applies to kind Deployment only", field_path=".replicas"),
            cel("self.kind == 'Job' || !has(self.maxDuration)",
                "maxDuration applies to kind Job only; a Deployment runs until preempted",
                field_path=".maxDuration"),
            cel(f"self.kind == '{RESERVATION}' || has(self.template)",
                "a Job or Deployment needs spec.template", reason="FieldValueRequired",
                field_path=".template"),
            cel(f"self.kind != '{RESERVATION}' || !has(self.template)",
                "a Reservation runs nothing: leave spec.template out",
                field_path=".template"),
            cel(f"self.kind == '{RESERVATION}' || has(self.class)",
                "a Job or Deployment needs spec.class", reason="FieldValueRequired",
                field_path=".class"),
            cel("has(self.vram) != (has(self.wholeGpu) && self.wholeGpu)",
                "set exactly one of vram or wholeGpu: true", field_path=".vram"),
            _only_for_reservations("wholeGpu", ""),
            _only_for_reservations("duration", "; a Job's limit is maxDuration"),
            _only_for_reservations("priorityClass", ""),
            cel("!has(self.duration) || !has(self.schedule)",
                "a Reservation with a schedule holds inside its windows: leave duration out",
                field_path=".duration"),
            cel("!has(self.duration) || duration(self.duration) > duration('0s')",
                "duration must be above 0s", field_path=".duration"),
            cel(f"self.kind != '{RESERVATION}' || !has(self.class) || "
                "self.class != 'Embedding'",
                "an Embedding workload runs on CPU; a Reservation holds GPU memory",
                field_path=".class"),
        )
    )

    workload_class: WorkloadClass | None = Field(default=None, alias="class")
    """TTS, Embedding, ImageGeneration, FineTuning or Other; sets the default priority
    (the seed's order: TTS > embeddings > image generation > fine-tuning). Required for
    a Job or Deployment; a Reservation ranks as Other unless it says."""
    priority: Annotated[int, Field(ge=0, le=999)] | None = None
    """Overrides the class priority; LLM inference always ranks higher (but for a
    Reservation of priorityClass Household)."""
    vram: PositiveQuantity | None = None
    """GPU memory the workload needs at its peak, for example 10Gi."""
    whole_gpu: bool | None = None
    """A Reservation of a whole GPU, whatever its size: nothing else runs on it."""
    preemptible: bool = True
    """Whether the operator may suspend it when LLM inference needs the card."""
    only_when_gpu_idle: bool = False
    """Run only while no OnDemand model is asking for the GPU (the seed's rule for local
    TTS, a fallback to the cloud service)."""
    kind: WorkloadKind = "Job"
    """Job: runs to completion (created suspended, unsuspended when admitted).
    Deployment: runs while admitted (0 replicas otherwise). Reservation: runs
    nothing; holds GPU memory for something that is not a pod of this cluster (a
    game, a desktop, a transcode) while it is admitted."""
    template: PodTemplate | None = None
    """The pod template (metadata and spec) of the Job or Deployment. The operator adds
    the GPU request and node placement. A Reservation has none."""
    replicas: Annotated[int, Field(ge=1, le=16)] | None = None
    """Replicas of a Deployment while admitted (default 1)."""
    backoff_limit: Annotated[int, Field(ge=0, le=100)] | None = None
    """Retries of a Job's pod before the Job fails."""
    schedule: Schedule | None = None
    """Time windows; without one the workload may run at any time."""
    max_duration: Duration | None = None
    """A Job running longer than this is stopped and marked Failed."""
    duration: Duration | None = None
    """How long a Reservation holds once it holds (status.endsAt); without one it holds
    until it is deleted."""
    priority_class: ReservationClass | None = None
    """How a Reservation ranks. Household (the default): above LLM inference and every
    workload, which drain and give way by their own rules (a slot within its minimum
    residency and a running non-preemptible workload keep their place first).
    Workload: among the GPU workloads by priority, after the slots that serve requests."""
    node: NodeName | None = None
    """The GPU node to place it on; any GPU node when unset."""

    @model_validator(mode="after")
    def _kind_fields(self) -> GpuWorkloadSpec:
        problems = []
        reservation = self.kind == RESERVATION
        if self.kind != "Job" and self.backoff_limit is not None:
            problems.append("backoffLimit applies to kind Job only")
        if self.kind != "Deployment" and self.replicas is not None:
            problems.append("replicas applies to kind Deployment only")
        if self.kind != "Job" and self.max_duration is not None:
            problems.append("maxDuration applies to kind Job only")
        if not reservation and self.template is None:
            problems.append("template: a Job or Deployment needs spec.template")
        if reservation and self.template is not None:
            problems.append("template: a Reservation runs nothing: leave spec.template out")
        if not reservation and self.workload_class is None:
            problems.append("class: a Job or Deployment needs spec.class")
        if (self.vram is not None) == bool(self.whole_gpu):
            problems.append("vram: set exactly one of vram or wholeGpu: true")
        problems += [f"{name} applies to kind {RESERVATION} only"
                     for name, value in (("wholeGpu", self.whole_gpu),
                                         ("duration", self.duration),
                                         ("priorityClass", self.priority_class))
                     if value is not None and not reservation]
        if self.duration is not None and self.schedule is not None:
            problems.append("duration: a Reservation with a schedule holds inside its "
                            "windows: leave duration out")
        if self.duration is not None and parse_duration(self.duration) <= datetime.timedelta():
            problems.append("duration: must be above 0s")
        if reservation and self.workload_class == "Embedding":
            problems.append("class: an Embedding workload runs on CPU; a Reservation holds "
                            "GPU memory")
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
    held_vram: str | None = None
    """The GPU memory a Reservation holds (or will hold once admitted)."""
    ends_at: datetime.datetime | None = None
    """When a Reservation with a duration stops holding."""
    evicted: list[str] | None = Field(default=None, max_length=32)
    """What gave way to a Reservation: the slots (by alias) and workloads that left its
    GPU for it."""


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
            column("Ends", ".status.endsAt", priority=1),
            AGE_COLUMN,
        ),
        spec_model=GpuWorkloadSpec,
        status_model=GpuWorkloadStatus,
    )
