"""``hybrid-compute plan -f DIR``: what the operator would decide for a folder of
objects, with no cluster. Nodes come from Node objects in the folder, else from a
node profile (the seed's dreamteam by default)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from hybrid_compute.api.common import parse_bytes
from hybrid_compute.api.units import gib
from hybrid_compute.dev.nodes import PROFILES, node_manifest
from hybrid_compute.plan import plan
from hybrid_compute.plan.objects import node_from_object, slot_from_object
from hybrid_compute.plan.outputs import Plan
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import View


class ManifestError(ValueError):
    """A file in the folder is not YAML of Kubernetes objects."""


def load_objects(paths: Iterable[Path]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in paths:
        files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
        for file in files:
            try:
                documents = list(yaml.safe_load_all(file.read_text()))
            except (OSError, yaml.YAMLError) as error:
                raise ManifestError(f"{file}: {error}") from error
            for document in documents:
                if document is None:
                    continue
                if not isinstance(document, dict) or "kind" not in document:
                    raise ManifestError(f"{file}: not a Kubernetes object: {document!r:.60}")
                objects.append(document)
    return objects


def offline_view(objects: Sequence[dict[str, Any]], node_specs: Sequence[tuple[str, str]],
                 demands: Sequence[str], now: datetime.datetime,
                 settings: PlanSettings) -> View:
    slots = []
    for index, body in enumerate(o for o in objects if o.get("kind") == "ModelSlot"):
        metadata = {"namespace": "default", "uid": f"offline-{index}", "generation": 1,
                    **body.get("metadata", {})}
        slots.append(slot_from_object({**body, "metadata": metadata, "status": {}}))
    node_objects = [o for o in objects if o.get("kind") == "Node"]
    if not node_objects:
        node_objects = [node_manifest(name, PROFILES[profile]) for name, profile in node_specs]
        for node in node_objects:
            node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    nodes = [n for n in map(node_from_object, node_objects) if n]
    return View(nodes=tuple(nodes), slots=tuple(slots),
                demands={alias: now for alias in demands}, settings=settings)


def report(result: Plan, view: View) -> str:
    """A table a person reads: each GPU's residents, then each slot's decision."""
    lines = []
    for gpu in result.gpus:
        free = gpu.capacity_bytes - gpu.planned_bytes
        lines.append(f"GPU {gpu.id}: {gib(gpu.capacity_bytes)} usable, "
                     f"{gib(gpu.planned_bytes)} planned, {gib(free)} free"
                     + (f" - {', '.join(gpu.residents)}" if gpu.residents else " - idle"))
    rows = [("SLOT", "ALIAS", "DEVICE", "VRAM", "DECISION", "WHY")]
    for decision in result.slots:
        info = decision.slot
        spec = info.spec
        vram = gib(int(decision.vram)) if decision.vram else "-"
        if spec and spec.device == "gpu" and spec.model.vram and not decision.vram:
            vram = gib(parse_bytes(spec.model.vram))
        if decision.replicas > 0:
            verdict = f"load on {decision.gpu}" if decision.gpu else "run on CPU"
            why = "resident"
        else:
            verdict = decision.phase.lower()
            why = decision.reason
        rows.append((f"{info.namespace}/{info.name}", decision.alias or "-",
                     spec.device if spec else "-", vram, verdict, why))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def plan_folder(paths: Sequence[Path], node_specs: Sequence[tuple[str, str]],
                demands: Sequence[str], settings: PlanSettings | None = None,
                now: datetime.datetime | None = None) -> tuple[Plan, View]:
    moment = now or datetime.datetime.now(datetime.UTC)
    view = offline_view(load_objects(paths), node_specs, demands, moment,
                        settings or PlanSettings())
    return plan(view, moment), view
