"""The custom resources of group hybridcompute.io, version v1alpha1."""

from hybrid_compute.api.common import API_VERSION, GROUP, VERSION, CustomObject
from hybrid_compute.api.gpuworkload import GpuWorkload, GpuWorkloadSpec, GpuWorkloadStatus
from hybrid_compute.api.modelslot import ModelSlot, ModelSlotSpec, ModelSlotStatus
from hybrid_compute.api.routepolicy import RoutePolicy, RoutePolicySpec, RoutePolicyStatus

KINDS: tuple[type[CustomObject], ...] = (ModelSlot, RoutePolicy, GpuWorkload)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "GpuWorkload",
    "GpuWorkloadSpec",
    "GpuWorkloadStatus",
    "ModelSlot",
    "ModelSlotSpec",
    "ModelSlotStatus",
    "RoutePolicy",
    "RoutePolicySpec",
    "RoutePolicyStatus",
]
