"""Builds the ``helm`` command from Go modules and caches it beside the control plane.

The chart's tests render ``charts/hybrid-compute`` with a real helm, so CI needs
one without a package manager or a download site: like the control plane, helm
is compiled once per version from the module proxy into the cache folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hybrid_compute.dev.toolchain import (
    _find_go,
    _run_go,
    _write_go_mod,
    cache_home,
)

HELM_VERSION = "4.3.2"
HELM_MODULE = "helm.sh/helm/v4"


def helm_folder() -> Path:
    """Where the helm of :data:`HELM_VERSION` is built and kept."""
    return cache_home() / f"helm-v{HELM_VERSION}"


def helm_binary() -> Path:
    return helm_folder() / "bin" / "helm"


def is_built() -> bool:
    return (helm_folder() / "complete").exists() and helm_binary().exists()


def helm_ldflags() -> str:
    """Version flags as helm's own Makefile sets them for a tagged release, so
    ``helm version`` reports the tag rather than a bare ``v4.3``."""
    package = f"{HELM_MODULE}/internal/version"
    return " ".join(["-s", "-w", f"-X {package}.version=v{HELM_VERSION}",
                     f"-X {package}.gitTreeState=clean"])


def ensure_helm(log: bool = True) -> Path:
    """Returns the cached helm binary, building it first when it is missing."""
    if is_built():
        return helm_binary()
    go = _find_go()
    folder = helm_folder()
    source = folder / "src"
    source.mkdir(parents=True, exist_ok=True)
    helm_binary().parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if log:
        print(f"building helm v{HELM_VERSION} from Go modules (once per version) ...",
              file=sys.stderr)
    package = f"{HELM_MODULE}/cmd/helm"
    _write_go_mod(source, "helm", [f"require {HELM_MODULE} v{HELM_VERSION}"])
    _run_go(go, ["get", f"{package}@v{HELM_VERSION}"], source, "resolving helm modules")
    _run_go(go, ["build", "-trimpath", "-ldflags", helm_ldflags(), "-o",
                 str(helm_binary()), package], source, "building helm")
    (folder / "complete").write_text(f"helm v{HELM_VERSION}\n")
    if log:
        print(f"  helm built in {time.monotonic() - started:.0f}s: {helm_binary()}",
              file=sys.stderr)
    return helm_binary()
