"""What ``dev up`` installs into a fresh cluster: the CRDs and the samples of the
source checkout the package runs from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hybrid_compute.api.crdgen import all_crds

SAMPLES_FOLDER = "manifests/samples"


def repository_root() -> Path | None:
    """The source checkout this package runs from, when it runs from one."""
    candidate = Path(__file__).resolve().parents[3]
    return candidate if (candidate / "manifests").is_dir() else None


def sample_manifests(repository_root: Path) -> list[dict[str, Any]]:
    """Every object in the samples folder, in file order."""
    documents: list[dict[str, Any]] = []
    for path in sorted((repository_root / SAMPLES_FOLDER).glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def bootstrap_manifests(repository_root: Path | None, samples: bool) -> list[dict[str, Any]]:
    manifests = all_crds()
    if samples and repository_root is not None:
        manifests += sample_manifests(repository_root)
    return manifests
