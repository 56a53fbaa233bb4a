"""The ``helm`` command, built from Go modules and cached beside the control plane.

The chart's tests render ``charts/hybrid-compute`` with a real helm, so CI needs
one without a package manager or a download site: like the control plane, helm
is compiled once per version from the module proxy into the cache folder.
"""

from __future__ import annotations

from pathlib import Path

from hybrid_compute.dev.go_tools import GoCommand

HELM_VERSION = "4.3.2"
HELM_MODULE = "helm.sh/helm/v4"


def helm_ldflags() -> str:
    """Version flags as helm's own Makefile sets them for a tagged release, so
    ``helm version`` reports the tag rather than a bare ``v4.3``."""
    package = f"{HELM_MODULE}/internal/version"
    return " ".join(["-s", "-w", f"-X {package}.version=v{HELM_VERSION}",
                     f"-X {package}.gitTreeState=clean"])


HELM = GoCommand("helm", HELM_MODULE, f"{HELM_MODULE}/cmd/helm", HELM_VERSION, helm_ldflags())


def helm_binary() -> Path:
    return HELM.binary


def ensure_helm(log: bool = True) -> Path:
    """Returns the cached helm binary, building it first when it is missing."""
    return HELM.ensure(log)
