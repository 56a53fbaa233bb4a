"""Simulated GPU nodes for the local control plane.

Each profile is a Node object as the NVIDIA device plugin and GPU Feature
Discovery would publish it. kwok keeps a node Ready and simulates the pods scheduled
to it, or the project's process node agent plays its kubelet (see ``process_node``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeProfile:
    """A GPU box: how many cards, how much memory each, how they are shared."""

    name: str
    description: str
    product: str
    gpu_count: int
    gpu_memory_mib: int
    time_slicing_replicas: int
    cpu: str = "16"
    memory: str = "64Gi"

    @property
    def gpu_allocatable(self) -> int:
        return self.gpu_count * self.time_slicing_replicas


PROFILES: dict[str, NodeProfile] = {
    "rtx3090": NodeProfile(
        name="rtx3090",
        description="one RTX 3090 (24 GiB), time-sliced into 4 shares (the seed's dreamteam)",
        product="NVIDIA-GeForce-RTX-3090",
        gpu_count=1,
        gpu_memory_mib=24576,
        time_slicing_replicas=4,
    ),
    "dual-rtx3090": NodeProfile(
        name="dual-rtx3090",
        description="two RTX 3090 as whole devices, no time-slicing (the seed's scaling path)",
        product="NVIDIA-GeForce-RTX-3090",
        gpu_count=2,
        gpu_memory_mib=24576,
        time_slicing_replicas=1,
    ),
}

DEFAULT_NODE_NAME = "dreamteam"
DEFAULT_PROFILE = "rtx3090"


def node_manifest(name: str, profile: NodeProfile, kwok: bool = True) -> dict[str, Any]:
    """The Node object, with GFD labels and device-plugin capacity in its status;
    ``kwok`` marks it for kwok to manage (the process node agent's node is not)."""
    sharing = "time-slicing" if profile.time_slicing_replicas > 1 else "none"
    resources = {
        "cpu": profile.cpu,
        "memory": profile.memory,
        "pods": "110",
        GPU_RESOURCE: str(profile.gpu_allocatable),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE} if kwok else {},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok" if kwok else "process",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": profile.product,
                "nvidia.com/gpu.memory": str(profile.gpu_memory_mib),
                "nvidia.com/gpu.count": str(profile.gpu_count),
                "nvidia.com/gpu.replicas": str(profile.time_slicing_replicas),
                "nvidia.com/gpu.sharing-strategy": sharing,
                "hybridcompute.io/dev-profile": profile.name,
            },
        },
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }
