"""``hybrid-compute plan -f DIR``: what the operator would decide for a folder of
objects, with no cluster, now or at a chosen moment (``--at``): slots, workloads and
reservations, time windows and sleep windows, foreign processes (``--foreign``)
and the idle time ``idleTimeout: Auto`` picks. Nodes come from Node objects in the
folder, else from a node profile (the seed's dreamteam by default)."""

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
from hybrid_compute.plan.objects import node_from_object, slot_from_object, workload_from_object
from hybrid_compute.plan.outputs import Plan, SlotDecision
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import ForeignProcess, View
from hybrid_compute.plan.workloads import WorkloadDecision


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


def _with_identity(body: dict[str, Any], uid: str) -> dict[str, Any]:
    metadata = {"namespace": "default", "uid": uid, "generation": 1,
                **body.get("metadata", {})}
    return {**body, "metadata": metadata, "status": {}}


def offline_view(objects: Sequence[dict[str, Any]], node_specs: Sequence[tuple[str, str]],
                 demands: Sequence[str], now: datetime.datetime,
                 settings: PlanSettings,
                 foreign: Sequence[ForeignProcess] = ()) -> View:
    """The View of a folder: its slots, workloads and nodes; ``demands`` as requests at
    ``now``; ``foreign`` as processes outside the cluster on the first GPU."""
    slots = [slot_from_object(_with_identity(body, f"offline-{index}")) for index, body
             in enumerate(o for o in objects if o.get("kind") == "ModelSlot")]
    workloads = [workload_from_object(_with_identity(body, f"offline-w-{index}"))
                 for index, body in enumerate(o for o in objects
                                               if o.get("kind") == "GpuWorkload")]
    node_objects = [o for o in objects if o.get("kind") == "Node"]
    if not node_objects:
        node_objects = [node_manifest(name, PROFILES[profile]) for name, profile in node_specs]
        for node in node_objects:
            node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    nodes = [n for n in map(node_from_object, node_objects) if n]
    first_gpu = nodes[0].gpu_ids()[0] if nodes and foreign else None
    found = {first_gpu: tuple(foreign)} if first_gpu else {}
    return View(nodes=tuple(nodes), slots=tuple(slots), workloads=tuple(workloads),
                demands={alias: now for alias in demands}, settings=settings,
                foreign_vram={gpu: sum(p.bytes for p in found[gpu]) for gpu in found},
                foreign_processes=found)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows in columns; the last column as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)),
                       row[-1]]).rstrip() for row in rows]


def report(result: Plan, view: View) -> str:
    """Tables a person reads: each GPU's residents, each slot's decision, each
    workload's, and the idle time ``Auto`` picks."""
    lines = [f"Plan at {result.at.astimezone(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC"
             if result.at else "Plan"]
    for gpu in result.gpus:
        free = gpu.capacity_bytes - gpu.planned_bytes
        lines.append(f"GPU {gpu.id}: {gib(gpu.capacity_bytes)} usable, "
                     f"{gib(gpu.planned_bytes)} planned, {gib(free)} free"
                     + (f" - {', '.join(gpu.residents)}" if gpu.residents else " - idle"))
        if gpu.foreign_bytes:
            lines.append(f"  outside hybrid-compute: {', '.join(gpu.foreign) or 'processes'} "
                         f"({gib(gpu.foreign_bytes)}), planned as a reservation")
    lines += _table([("SLOT", "ALIAS", "DEVICE", "VRAM", "DECISION", "WHY"),
                     *(_slot_row(decision) for decision in result.slots)])
    if result.workloads:
        lines += _table([("WORKLOAD", "KIND", "VRAM", "DECISION", "WHY"),
                         *(_workload_row(decision) for decision in result.workloads)])
    for decision in result.slots:
        chosen = decision.status.get("idleTimeout")
        if chosen:
            lines.append(f"idle timeout of {decision.alias} (Auto): {chosen['reason']}")
    return "\n".join(lines)


def _slot_row(decision: SlotDecision) -> tuple[str, ...]:
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
    return (f"{info.namespace}/{info.name}", decision.alias or "-",
            spec.device if spec else "-", vram, verdict, why)


def _workload_row(decision: WorkloadDecision) -> tuple[str, ...]:
    spec = decision.workload.spec
    if spec is None:
        kind, vram = "-", "-"
    else:
        kind = spec.kind
        vram = decision.status.get("heldVram") or spec.vram or "whole GPU"
    holds = decision.phase in ("Admitted", "Running")
    verdict = (f"{'hold' if kind == 'Reservation' else 'run'} on {decision.gpu}" if holds
               and decision.active else decision.phase.lower())
    return (f"{decision.namespace}/{decision.name}", kind, vram, verdict, decision.reason)


def plan_folder(paths: Sequence[Path], node_specs: Sequence[tuple[str, str]],
                demands: Sequence[str], settings: PlanSettings | None = None,
                now: datetime.datetime | None = None,
                foreign: Sequence[ForeignProcess] = ()) -> tuple[Plan, View]:
    moment = now or datetime.datetime.now(datetime.UTC)
    view = offline_view(load_objects(paths), node_specs, demands, moment,
                        settings or PlanSettings(), foreign)
    return plan(view, moment), view
