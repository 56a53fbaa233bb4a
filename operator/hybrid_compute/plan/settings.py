"""Operator-wide knobs of the plan, set from the command line or the chart."""

from __future__ import annotations

import datetime
import importlib.metadata
from dataclasses import dataclass

from hybrid_compute.api.units import GIB
from hybrid_compute.render.children import DEFAULT_ENDPOINT_TEMPLATE
from hybrid_compute.upstream import LLAMA_CPP


def _own_version() -> str:
    try:
        return importlib.metadata.version("hybrid-compute")
    except importlib.metadata.PackageNotFoundError:
        return "latest"


OPERATOR_IMAGE = f"ghcr.io/hybrid-compute/hybrid-compute:{_own_version()}"
"""The image this package is built into, as the chart names it; it also runs the
model fetch step."""


@dataclass(frozen=True)
class PlanSettings:
    """Operator-wide knobs of the plan."""

    headroom_bytes: int = GIB
    """VRAM kept free on every GPU (driver, CUDA context, fragmentation)."""
    min_residency: datetime.timedelta = datetime.timedelta(seconds=30)
    """Default shortest stay of a loaded slot, so swaps cannot thrash."""
    gpu_image: str = LLAMA_CPP.gpu_image
    """llama-server image of GPU slots that name none: llama.cpp's image of the build
    whose flags the tests check."""
    cpu_image: str = LLAMA_CPP.cpu_image
    """llama-server image of CPU slots that name none, of the same build."""
    fetch_image: str = OPERATOR_IMAGE
    """Image of the init container that downloads a slot's model (``hybrid-compute
    fetch``): the operator's own image."""
    model_root: str = "/models"
    """Where the model volume is mounted in llama-server containers."""
    idle_check_interval: datetime.timedelta = datetime.timedelta(seconds=30)
    """Longest sleep between two plans when nothing else wakes the loop."""
    mutex_bytes: int = 10 * GIB
    """Consumers needing more VRAM than this never share a GPU (the seed's GPU mutex)."""
    default_slot_busy: datetime.timedelta = datetime.timedelta(minutes=5)
    """How long after its last request the default slot counts as in use, so GPU
    workloads do not take the card from it; its idleTimeout overrides this."""
    gpu_runtime_class: str | None = None
    """runtimeClassName of GPU pods, for nodes whose default container runtime is not
    NVIDIA's (k3s registers the RuntimeClass ``nvidia``)."""
    drain_route_grace: datetime.timedelta = datetime.timedelta(seconds=3)
    """How long a draining slot waits for routers to stop sending it requests: longer
    than the router's state refresh (2 s)."""
    default_swap_time: datetime.timedelta = datetime.timedelta(seconds=30)
    """The predicted load time of a slot with no loads on record (the seed's swaps
    take 15-30 s); its own recent loads replace it after the first."""
    endpoint_template: str = DEFAULT_ENDPOINT_TEMPLATE
    """How LiteLLM reaches a slot's llama-server; {service}, {namespace} and {port}
    are filled in. The default is the slot's Service inside the cluster."""
