"""Which VRAM figure the plan reserves for a GPU slot, and where it comes from.

In order of trust:

* **Spec**: ``spec.model.vram``. The user's word wins, even over a measurement:
  it may deliberately leave room for a longer context later, or cap a model
  whose measured figure includes memory it does not need.
* **Measured**: what the GPU agent saw the slot's pod hold (per-process memory of
  the processes in the pod's cgroup) once it was Ready, stored in the status
  with a fingerprint of the llama-server command line it was measured with; a
  changed context, parallelism, image or model makes it stale.
* **Estimated**: :func:`hybrid_compute.plan.vram.estimate` over the model file's header,
  which the GPU agent on the node reads (the file never leaves the node).

A loaded slot keeps the figure its pods were started with while the spec does
not change: replacing it by a fresher one would roll the Deployment and reload
the model for nothing. The new figure applies at the next load.

Everything here is pure; the header and the measurement arrive through the View.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from hybrid_compute.api.common import parse_bytes
from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus, VramSource
from hybrid_compute.api.units import MIB, gib
from hybrid_compute.plan import vram
from hybrid_compute.plan.outputs import ConditionUpdate
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.render import children

if TYPE_CHECKING:
    from hybrid_compute.plan.memo import PlanMemo
    from hybrid_compute.plan.view import DeploymentInfo, SlotInfo, View

ModelFileKey = tuple[str, str]
"""(node folder, file path relative to it): what the GPU agent is asked about."""

_FLAG_VALUES = {
    "--cache-type-k": "cache_type_k", "-ctk": "cache_type_k",
    "--cache-type-v": "cache_type_v", "-ctv": "cache_type_v",
    "--ubatch-size": "ubatch_size", "-ub": "ubatch_size",
}
_FLASH_ATTN_FLAGS = ("--flash-attn", "-fa")


@dataclass(frozen=True)
class VramChoice:
    bytes: int | None
    """None: not known yet; ``detail`` says why."""
    source: VramSource | None
    detail: str
    """How the figure was found, or why there is none, for reasons."""


def model_file_key(spec: ModelSlotSpec, settings: PlanSettings) -> ModelFileKey | None:
    """The file a slot serves as its node folder and relative path; None for a model
    on a PersistentVolumeClaim, which the GPU agent does not mount."""
    if spec.model.persistent_volume_claim:
        return None
    path = spec.model.path
    if path.startswith(settings.model_root + "/"):
        path = path[len(settings.model_root) + 1:]
    return (spec.model.host_path or children.DEFAULT_HOST_PATH, path.lstrip("/"))


def server_settings(spec: ModelSlotSpec) -> vram.ServerSettings:
    """The flags that size llama-server's memory, from the spec and its extraArgs
    (cache types and micro-batch size have no field of their own)."""
    found: dict[str, str] = {}
    flash_attn = spec.server.flash_attn
    args = spec.server.extra_args
    for index, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        if name in _FLASH_ATTN_FLAGS:
            value = inline or (args[index + 1] if index + 1 < len(args) else "")
            flash_attn = value not in ("off", "0", "false") if value else True
        elif name in _FLAG_VALUES:
            value = inline or (args[index + 1] if index + 1 < len(args) else "")
            if value:
                found[_FLAG_VALUES[name]] = value
    ubatch = found.get("ubatch_size", "")
    return vram.ServerSettings(
        ctx_size=spec.server.ctx_size,
        parallel=spec.server.parallel,
        flash_attn=flash_attn,
        cache_type_k=_cache_type(found.get("cache_type_k", "f16")),
        cache_type_v=_cache_type(found.get("cache_type_v", "f16")),
        gpu_layers=spec.server.n_gpu_layers,
        ubatch_size=int(ubatch) if ubatch.isdigit() and int(ubatch) > 0 else 512,
    )


def _cache_type(value: str) -> vram.CacheType:
    """A cache type llama-server would refuse is llama-server's error to report; the
    estimate counts it as the default f16."""
    return cast(vram.CacheType, value) if value in vram.CACHE_TYPES else "f16"


def server_fingerprint(spec: ModelSlotSpec, settings: PlanSettings) -> str:
    """Identifies the llama-server a measurement belongs to: image, model and flags."""
    image = spec.server.image or settings.gpu_image
    text = json.dumps([image, spec.gpus, children.server_args(spec, settings)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def quantity(value: int) -> str:
    """Bytes as a Kubernetes quantity in whole MiB, rounded up."""
    return f"{math.ceil(value / MIB)}Mi"


def choose(spec: ModelSlotSpec, status: ModelSlotStatus, settings: PlanSettings,
           header: vram.ModelShape | str | None, running: int | None = None
           ) -> VramChoice:
    """The figure to plan a GPU slot with. ``header`` is the model file's shape from
    the GPU agent, or why it could not be read; ``running`` the figure the slot's
    current pods were started with, when they still match the spec."""
    if spec.model.vram:
        return VramChoice(parse_bytes(spec.model.vram), "Spec", "from spec.model.vram")
    measured = measured_bytes(spec, status, settings)
    if running is not None:
        source: VramSource = status.vram_source or ("Measured" if measured else "Estimated")
        return VramChoice(running, source, f"{_described(source)}, kept while loaded")
    if measured is not None:
        return VramChoice(measured, "Measured", _described("Measured"))
    unknown = "spec.model.vram is not set"
    if isinstance(header, str):
        return VramChoice(None, None, f"{unknown}, and the model file cannot be estimated: "
                                      f"{header}")
    if header is None:
        if spec.model.persistent_volume_claim:
            return VramChoice(None, None, f"{unknown}, and a model on a PersistentVolumeClaim "
                                          "cannot be estimated: set spec.model.vram")
        return VramChoice(None, None, f"{unknown}; waiting for the GPU agent to read the "
                                      "model file's header for an estimate")
    try:
        estimate = vram.estimate(header, server_settings(spec))
    except ValueError as error:
        return VramChoice(None, None, f"{unknown}, and the estimate failed: {error}")
    return VramChoice(estimate.total, "Estimated", _described("Estimated"))


def measured_bytes(spec: ModelSlotSpec, status: ModelSlotStatus, settings: PlanSettings
                   ) -> int | None:
    """The stored measurement, when it was taken with the llama-server the spec runs."""
    if not status.measured_vram or status.measured_vram_for != server_fingerprint(
            spec, settings):
        return None
    try:
        return parse_bytes(status.measured_vram)
    except ValueError:
        return None


def _described(source: VramSource) -> str:
    return {"Spec": "from spec.model.vram", "Measured": "as measured by the GPU agent",
            "Estimated": "estimated from the model file's header"}[source]


def describe(choice: VramChoice) -> str:
    """``7.1 GiB estimated from the model file's header``, for reasons."""
    assert choice.bytes is not None
    return f"{gib(choice.bytes)} {choice.detail}"


def fits_condition(choice: VramChoice) -> ConditionUpdate:
    """The Fits condition of a GPU slot that fits some GPU of the cluster."""
    return ConditionUpdate("Fits", True, "Fits", f"needs {describe(choice)}")


def vram_choice(slot: SlotInfo, spec: ModelSlotSpec, view: View,
                deployment: DeploymentInfo | None, memo: PlanMemo) -> VramChoice:
    """The VRAM a GPU slot is planned with: :func:`choose` over what the View knows,
    with the figure its running pods were started with while their template is
    the one the spec renders."""
    running = None
    if (not spec.model.vram and deployment is not None and deployment.replicas > 0
            and deployment.vram_bytes > 0):
        started_with = memo.slot_template(slot.name, spec, deployment.vram_bytes,
                                          view.settings)
        if children.template_hash(started_with) == deployment.template_hash:
            running = deployment.vram_bytes
    header = None
    if view.model_headers:
        key = memo.model_file_key(spec, view.settings)
        header = view.model_headers.get(key) if key is not None else None
    return memo.vram_choice(slot, spec, view.settings, header, running)
