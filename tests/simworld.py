"""A tiny deterministic stand-in for the cluster, for tests of ``plan``.

It applies a plan's replicas the way the Deployment controller, the scheduler and
a kubelet would (pods appear, become Ready after some steps, linger while
Terminating), so tests can run the plan loop over time and check invariants
at every step.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace

from hybrid_compute.api.gpuworkload import GpuWorkloadSpec, GpuWorkloadStatus
from hybrid_compute.api.labels import TEMPLATE_HASH_ANNOTATION, VRAM_ANNOTATION
from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus
from hybrid_compute.api.units import MIB
from hybrid_compute.dev.nodes import PROFILES
from hybrid_compute.plan import Plan, plan
from hybrid_compute.plan.memo import PlanMemo
from hybrid_compute.plan.prompt_cache import PromptCacheOutcomes
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import (
    DeploymentInfo,
    ForeignProcess,
    GpuNode,
    PodInfo,
    RouterFetch,
    SlotActivity,
    SlotInfo,
    View,
    WorkloadChild,
    WorkloadInfo,
)

START = datetime.datetime(2026, 12, 1, 2, 0, tzinfo=datetime.UTC)


def dreamteam() -> GpuNode:
    profile = PROFILES["rtx3090"]
    return GpuNode("dreamteam", profile.gpu_count, profile.gpu_memory_mib * MIB,
                   profile.time_slicing_replicas, profile.gpu_allocatable)


def dual_node() -> GpuNode:
    profile = PROFILES["dual-rtx3090"]
    return GpuNode("dual", profile.gpu_count, profile.gpu_memory_mib * MIB,
                   profile.time_slicing_replicas, profile.gpu_allocatable)


def slot(name: str, spec: dict, namespace: str = "lab") -> SlotInfo:  # type: ignore[type-arg]
    return SlotInfo(namespace, name, f"uid-{name}", 1, ModelSlotSpec.model_validate(spec))


def workload(name: str, spec: dict, namespace: str = "lab") -> WorkloadInfo:  # type: ignore[type-arg]
    full = {"template": {"spec": {"containers": [{"name": "main", "image": "w"}]}}, **spec}
    return WorkloadInfo(namespace, name, f"uid-w-{name}", 1,
                        GpuWorkloadSpec.model_validate(full), created=START)


SEED_SLOTS = {
    "fast": {"alias": "local/fast", "model": {"path": "fast.gguf", "vram": "7Gi"},
             "default": True, "priority": 100, "fallback": "cloud/fast"},
    "quality": {"alias": "local/quality", "model": {"path": "q.gguf", "vram": "20Gi"},
                "activation": "OnDemand", "idleTimeout": "5m", "priority": 200,
                "fallback": "cloud/mid"},
    "quality-alt": {"alias": "local/quality-alt", "model": {"path": "r.gguf", "vram": "20Gi"},
                    "activation": "OnDemand", "idleTimeout": "5m", "priority": 200},
    "embed": {"alias": "local/embed", "model": {"path": "e.gguf"}, "device": "cpu",
              "embedding": True},
}


@dataclass
class SimPod:
    info: PodInfo
    ready_at: int
    gone_at: int | None = None


@dataclass
class World:
    """Slots, pods and Deployments, advanced one step at a time."""

    slots: list[SlotInfo]
    nodes: list[GpuNode] = field(default_factory=lambda: [dreamteam()])
    workloads: list[WorkloadInfo] = field(default_factory=list)
    children: dict[tuple[str, str], WorkloadChild] = field(default_factory=dict)
    settings: PlanSettings = field(default_factory=lambda: PlanSettings(
        min_residency=datetime.timedelta(seconds=30)))
    load_steps: int = 3
    terminate_steps: int = 2
    step_seconds: float = 1.0
    now: datetime.datetime = START
    tick: int = 0
    pods: list[SimPod] = field(default_factory=list)
    deployments: dict[tuple[str, str], DeploymentInfo] = field(default_factory=dict)
    demands: dict[str, datetime.datetime] = field(default_factory=dict)
    last_plan: Plan | None = None
    counter: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)
    """Requests each slot's llama-server is processing, by slot name (0 if absent)."""
    router_fetched_at: datetime.datetime | None = None
    router_fetches: dict[str, RouterFetch] = field(default_factory=dict)
    foreign: dict[str, tuple[ForeignProcess, ...]] = field(default_factory=dict)
    """GPU id -> processes outside the cluster holding memory there (the GPU agent's)."""
    foreign_announced: frozenset[tuple[str, str, str]] = frozenset()
    prompt_caches: dict[tuple[str, str], PromptCacheOutcomes] = field(default_factory=dict)
    """Prompt cache saves and restores as the runtime would hand them to the plan."""
    memo: PlanMemo | None = None
    """Kept from one plan to the next, as the operator's loop keeps it; None plans
    every step afresh."""

    def view(self) -> View:
        return View(nodes=tuple(self.nodes), slots=tuple(self.slots),
                    pods=tuple(p.info for p in self.pods),
                    deployments=tuple(self.deployments.values()),
                    demands=dict(self.demands), settings=self.settings,
                    workloads=tuple(self.workloads),
                    workload_children=tuple(self.children.values()),
                    slot_activity={(p.info.namespace, p.info.owner):
                                   SlotActivity(self.in_flight.get(p.info.owner, 0))
                                   for p in self.pods if p.info.ready},
                    router_fetched_at=self.router_fetched_at,
                    router_fetches=dict(self.router_fetches),
                    foreign_vram={gpu: sum(p.bytes for p in found)
                                  for gpu, found in self.foreign.items()},
                    foreign_processes=dict(self.foreign),
                    foreign_announced=self.foreign_announced,
                    prompt_caches=dict(self.prompt_caches))

    def demand(self, alias: str) -> None:
        self.demands[alias] = self.now

    def step(self) -> Plan:
        """One plan, applied; then the cluster moves one step."""
        result = plan(self.view(), self.now, self.memo)
        self.last_plan = result
        self.foreign_announced = frozenset((use.gpu, use.process.key, use.process.label)
                                           for use in result.foreign)
        new_slots = []
        for info in self.slots:
            decision = result.slot(info.namespace, info.name)
            new_slots.append(replace(info, status=ModelSlotStatus.model_validate(
                decision.status)))
            if decision.deployment is None:
                continue
            template = decision.deployment["spec"]["template"]
            annotations = template["metadata"]["annotations"]
            self.deployments[info.key] = DeploymentInfo(
                info.namespace, info.name, decision.replicas,
                annotations[TEMPLATE_HASH_ANNOTATION], int(annotations[VRAM_ANNOTATION]))
        self.slots = new_slots
        new_workloads = []
        for info in self.workloads:
            decision = result.workload(info.namespace, info.name)
            new_workloads.append(replace(info, status=GpuWorkloadStatus.model_validate(
                decision.status)))
            if decision.recreate_child:
                self.children.pop(info.key, None)
            elif decision.child is not None:
                template = decision.child["spec"]["template"]
                annotations = template["metadata"]["annotations"]
                self.children[info.key] = WorkloadChild(
                    info.namespace, info.name, decision.child["kind"],
                    annotations[TEMPLATE_HASH_ANNOTATION], int(annotations[VRAM_ANNOTATION]),
                    decision.active,
                    template["spec"].get("nodeSelector", {}).get("kubernetes.io/hostname"))
        self.workloads = new_workloads
        self._advance()
        return result

    def _advance(self) -> None:
        self.tick += 1
        self.now += datetime.timedelta(seconds=self.step_seconds)
        self.pods = [p for p in self.pods if p.gone_at is None or p.gone_at > self.tick]
        for sim in self.pods:
            if not sim.info.ready and sim.ready_at <= self.tick and not sim.info.terminating:
                sim.info = replace(sim.info, ready=True, phase="Running")
        self._advance_workloads()
        for key, deployment in self.deployments.items():
            mine = [p for p in self.pods if (p.info.namespace, p.info.owner) == key
                    and p.info.kind == "ModelSlot"]
            stale = [p for p in mine if p.info.template_hash != deployment.template_hash
                     and not p.info.terminating]
            live = [p for p in mine if not p.info.terminating
                    and p.info.template_hash == deployment.template_hash]
            for sim in stale + live[deployment.replicas:]:
                sim.info = replace(sim.info, terminating=True, ready=False)
                sim.gone_at = self.tick + self.terminate_steps
            # Recreate: new pods only once every old pod is gone.
            if any(p.info.template_hash != deployment.template_hash for p in mine):
                continue
            for _ in range(deployment.replicas - len(live)):
                self.counter += 1
                spec = next(s.spec for s in self.slots if s.key == key)
                gpus = spec.gpus if spec and spec.device == "gpu" else 0
                node = self._node_of(key)
                self.pods.append(SimPod(PodInfo(
                    f"{key[1]}-{self.counter}", key[0], key[1], node,
                    deployment.vram_bytes, gpus, deployment.template_hash, False, False),
                    ready_at=self.tick + self.load_steps))

    def _advance_workloads(self) -> None:
        for key, child in self.children.items():
            mine = [p for p in self.pods
                    if (p.info.namespace, p.info.owner) == key and p.info.kind == "GpuWorkload"]
            live = [p for p in mine if not p.info.terminating]
            if not child.active:
                for sim in live:
                    sim.info = replace(sim.info, terminating=True, ready=False)
                    sim.gone_at = self.tick + self.terminate_steps
            elif not live:
                self.counter += 1
                self.pods.append(SimPod(PodInfo(
                    f"{key[1]}-{self.counter}", key[0], key[1], child.node or self.nodes[0].name,
                    child.vram_bytes, 1 if child.vram_bytes else 0, child.template_hash, False,
                    False, kind="GpuWorkload"), ready_at=self.tick + self.load_steps))

    def _node_of(self, key: tuple[str, str]) -> str | None:
        assert self.last_plan is not None
        decision = self.last_plan.slot(*key)
        if decision.deployment is None:
            return None
        selector = decision.deployment["spec"]["template"]["spec"].get("nodeSelector", {})
        return selector.get("kubernetes.io/hostname", self.nodes[0].name)

    def held_per_node(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for sim in self.pods:
            if sim.info.node and sim.info.gpus:
                held[sim.info.node] = held.get(sim.info.node, 0) + sim.info.vram_bytes
        return held

    def budget(self, node: GpuNode) -> int:
        return node.gpu_count * (node.gpu_memory_bytes - self.settings.headroom_bytes)

    def phase(self, name: str) -> str | None:
        return next(s.status.phase for s in self.slots if s.name == name)

    def run_until(self, condition, limit: int = 200) -> None:  # type: ignore[no-untyped-def]
        for _ in range(limit):
            self.step()
            self.check_budget()
            if condition():
                return
        raise AssertionError(f"condition not reached in {limit} steps; phases: "
                             f"{[(s.name, s.status.phase) for s in self.slots]}")

    def check_budget(self) -> None:
        held = self.held_per_node()
        for node in self.nodes:
            assert held.get(node.name, 0) <= self.budget(node), (
                f"VRAM budget exceeded on {node.name}: {held.get(node.name, 0)} > "
                f"{self.budget(node)} at tick {self.tick}")
            large = [p.info.name for p in self.pods if p.info.node == node.name
                     and p.info.gpus and p.info.vram_bytes > self.settings.mutex_bytes]
            assert len(large) <= node.gpu_count, (
                f"more consumers above the mutex size than GPUs on {node.name}: {large} "
                f"at tick {self.tick}")
