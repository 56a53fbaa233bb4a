"""The operator's Prometheus metrics, all named ``hybrid_compute_*``.

The loop records each pass with :meth:`OperatorMetrics.record_plan`: how long
``plan`` took, swaps (counted when a slot that was loading becomes Ready, with
the time since the swap began), swaps deferred for want of room, residency and
phase per slot, how warm each not-loaded slot's model file is in the page cache,
VRAM per GPU and the seconds each held no model, workloads admitted and preempted. The router's
side (requests bridged, privacy requests held or refused, cloud spend) is
recorded through :func:`record_route` and :func:`set_spend`, which the
operator's API calls when the router reports.

Metrics live in the operator's own registry; ``/metrics`` on ``--metrics-port``
serves it.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import Literal

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hybrid_compute.plan.outputs import Plan, SlotDecision
from hybrid_compute.plan.view import View

SLOT_LABELS = ("namespace", "slot", "alias")
WORKLOAD_LABELS = ("namespace", "workload", "class")
GPU_LABELS = ("node", "gpu")
"""``gpu`` is ``<node>/<index>``, as in the agent's metrics and slot statuses."""

SWAP_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900)
"""A swap is a pod stopping and a model loading: seconds to the 15-minute startup limit."""
PLAN_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

PassStage = Literal["observe", "plan", "diff", "act", "after"]
RouteOutcome = Literal["served", "bridged", "held", "refused"]
"""served: went where asked; bridged: sent to the fallback while the local slot was not
Ready; held: a privacy request waited for the local slot; refused: a privacy request
was turned away rather than leave the box."""
ROUTE_OUTCOMES: tuple[RouteOutcome, ...] = ("served", "bridged", "held", "refused")
RESIDENT_PHASES = ("Loading", "Evaluating", "Ready", "Draining")
SLOT_PHASES = ("Pending", "Standby", "Loading", "Evaluating", "Ready", "Draining", "Unloading",
               "Unschedulable", "Failed")
SWAP_PHASES = ("drain", "unload", "schedule", "container_start", "model_load", "route_restored")
"""The fields of a slot's status.lastSwapPhases, in the order a swap goes through them."""
PHASE_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class OperatorMetrics:
    """Every metric the operator exports, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.plan_duration = Histogram(
            "hybrid_compute_plan_duration_seconds", "Time one call of plan() took",
            buckets=PLAN_SECONDS_BUCKETS, registry=registry)
        self.pass_stage_duration = Histogram(
            "hybrid_compute_pass_stage_duration_seconds",
            "Time one stage of an observe-plan-diff-act pass took: observe (waiting for "
            "the watches to return the last pass's writes, then reading them), plan, "
            "diff (with the prompt cache saves and restores the plan asks for first), "
            "act (the writes) and after (metrics, evaluations, warm lists)",
            ["stage"], buckets=PLAN_SECONDS_BUCKETS, registry=registry)
        self.reconciles = Counter(
            "hybrid_compute_reconciles", "Observe-plan-act passes completed", registry=registry)
        self.reconcile_errors = Counter(
            "hybrid_compute_reconcile_errors",
            "Observe-plan-act passes that failed, by cause (api, crd_missing, internal)",
            ["cause"], registry=registry)
        self.swaps = Counter(
            "hybrid_compute_swaps", "Slots swapped in (loading until Ready)", SLOT_LABELS,
            registry=registry)
        self.swap_duration = Histogram(
            "hybrid_compute_swap_duration_seconds",
            "From the plan starting a swap (the demand it answered) to the slot being Ready",
            SLOT_LABELS, buckets=SWAP_SECONDS_BUCKETS, registry=registry)
        self.swap_phase_duration = Histogram(
            "hybrid_compute_swap_phase_duration_seconds",
            "Seconds one phase of a swap took (drain, unload, schedule, container_start, "
            "model_load, route_restored), for the slot swapped in",
            (*SLOT_LABELS, "phase"), buckets=PHASE_SECONDS_BUCKETS, registry=registry)
        self.drains_cut = Counter(
            "hybrid_compute_drain_cut_requests",
            "Requests still running when a drain timed out and the slot was unloaded anyway",
            SLOT_LABELS, registry=registry)
        self.swaps_deferred = Counter(
            "hybrid_compute_swaps_deferred",
            "Times a wanted slot had to wait for room (GPU taken, mutex, foreign memory)",
            SLOT_LABELS, registry=registry)
        self._slot_phases = SlotPhases()
        self._recorded: dict[tuple[str, str], tuple[SlotDecision, tuple[str, str, str]]] = {}
        """Per slot, the decision last recorded and its labels."""
        registry.register(self._slot_phases)
        self.vram_capacity = Gauge(
            "hybrid_compute_gpu_vram_capacity_bytes",
            "VRAM the plan may use on the GPU: memory less headroom and foreign processes",
            GPU_LABELS, registry=registry)
        self.vram_planned = Gauge(
            "hybrid_compute_gpu_vram_planned_bytes", "VRAM the plan places on the GPU",
            GPU_LABELS, registry=registry)
        self.vram_held = Gauge(
            "hybrid_compute_gpu_vram_held_bytes",
            "VRAM of the operator's pods that exist on the GPU, Terminating ones included",
            GPU_LABELS, registry=registry)
        self.vram_foreign = Gauge(
            "hybrid_compute_gpu_vram_foreign_bytes",
            "VRAM held by processes that are not the operator's pods (from the GPU agent)",
            GPU_LABELS, registry=registry)
        self.gpu_unloaded_seconds = Counter(
            "hybrid_compute_gpu_unloaded_seconds",
            "Seconds the GPU held no model (no ModelSlot pod on it), counted from one pass "
            "of the operator to the next", GPU_LABELS, registry=registry)
        self.agent_reachable = Gauge(
            "hybrid_compute_gpu_agent_reachable",
            "1 when the operator read the GPU agent at its last pass", ["source"],
            registry=registry)
        self.workloads_admitted = Counter(
            "hybrid_compute_workloads_admitted", "GpuWorkloads admitted to a GPU",
            WORKLOAD_LABELS, registry=registry)
        self.workloads_preempted = Counter(
            "hybrid_compute_workloads_preempted", "GpuWorkloads suspended to make room",
            WORKLOAD_LABELS, registry=registry)
        self.evaluations = Counter(
            "hybrid_compute_model_evaluations",
            "Evaluations of a slot's new model (spec.evaluation) by result: Passed, or "
            "Failed (the slot rolls back to its previous model)",
            [*SLOT_LABELS, "result"], registry=registry)
        self.prompt_cache_saves = Counter(
            "hybrid_compute_prompt_cache_saves",
            "Prompt caches a slot's server saved before it was unloaded, by outcome: "
            "saved, failed, or evicted (given up for spec.server.promptCache.maxSize)",
            ["namespace", "slot", "outcome"], registry=registry)
        self.prompt_cache_restores = Counter(
            "hybrid_compute_prompt_cache_restores",
            "Prompt caches restored into a slot's freshly loaded server, by outcome: "
            "restored, or failed (skipped: the slot serves without it)",
            ["namespace", "slot", "outcome"], registry=registry)
        self.router_requests = Counter(
            "hybrid_compute_router_requests",
            "Requests the router decided, by alias asked, target and outcome "
            "(served, bridged, held, refused)", ["alias", "target", "outcome"],
            registry=registry)
        self.cloud_spend = Gauge(
            "hybrid_compute_cloud_spend_usd", "Cloud spend in the RoutePolicy's budget period",
            ["policy"], registry=registry)
        self.budget_remaining = Gauge(
            "hybrid_compute_cloud_budget_remaining_usd",
            "Cloud budget left in the RoutePolicy's period", ["policy"], registry=registry)
        self.fetch_bytes = Gauge(
            "hybrid_compute_model_fetch_bytes",
            "Bytes of the model file a slot's fetch step has on the node so far (present "
            "only while it fetches or after it failed)", SLOT_LABELS, registry=registry)
        self.fetch_total_bytes = Gauge(
            "hybrid_compute_model_fetch_total_bytes",
            "Size of the model file a slot's fetch step downloads", SLOT_LABELS,
            registry=registry)
        self.slot_page_cache = Gauge(
            "hybrid_compute_slot_page_cache_resident_ratio",
            "Share of the slot's model file in the page cache of the node it would load "
            "on (present where a GPU agent keeps it warm)", SLOT_LABELS, registry=registry)
        self._fetch_series: set[tuple[str, str, str]] = set()
        self._page_cache_series: set[tuple[str, str, str]] = set()
        self._gpu_series: set[tuple[str, str]] = set()
        self._gpu_unloaded: dict[tuple[str, str], tuple[datetime.datetime, bool]] = {}
        """Per GPU, the last pass's moment and whether no model was loaded then."""

    def record_pass_stages(self, seconds: dict[PassStage, float]) -> None:
        for stage, taken in seconds.items():
            self.pass_stage_duration.labels(stage).observe(taken)

    def record_plan(self, view: View, result: Plan, seconds: float) -> None:
        """One pass of the loop: its plan, and the transitions it decided."""
        self.plan_duration.observe(seconds)
        self.reconciles.inc()
        self._record_slots(view, result.slots)
        self._record_gpus(view, result)
        self._record_workloads(result)
        for policy in result.policies:
            if policy.budget is not None:
                self.set_spend(f"{policy.namespace}/{policy.name}", policy.budget.spent,
                               policy.budget.remaining)

    def _record_slots(self, view: View, decisions: tuple[SlotDecision, ...]) -> None:
        """Each decision once: one the plan hands out again (a quiet slot's) was
        recorded when it was made."""
        recorded = self._recorded
        now_recorded: dict[tuple[str, str], tuple[SlotDecision, tuple[str, str, str]]] = {}
        shown = self._slot_phases.shown
        for decision in decisions:
            slot = decision.slot
            held = recorded.get(slot.key)
            if held is not None and held[0] is decision:
                now_recorded[slot.key] = held
                continue
            labels = (slot.namespace, slot.name, slot.spec.alias if slot.spec else "")
            if held is not None and held[1] != labels:
                shown.pop(held[1], None)
            now_recorded[slot.key] = (decision, labels)
            if decision.completed_swap is not None:
                self.swaps.labels(*labels).inc()
                self.swap_duration.labels(*labels).observe(decision.completed_swap.seconds)
            if decision.phases_recorded is not None:
                self._record_swap_phases(labels, decision)
            if decision.cut_requests:
                self.drains_cut.labels(*labels).inc(decision.cut_requests)
            if decision.started_waiting:
                self.swaps_deferred.labels(*labels).inc()
            shown[labels] = (
                decision.phase, decision.phase in RESIDENT_PHASES and bool(decision.gpu))
        for gone in recorded.keys() - now_recorded.keys():
            shown.pop(recorded[gone][1], None)
        self._recorded = now_recorded
        self._record_fetches(decisions)
        self._record_page_cache(decisions)

    def _record_swap_phases(self, labels: tuple[str, str, str], decision: SlotDecision) -> None:
        """Each phase once: the plan writes a swap's phases at Ready, and the route
        restoration in a later pass."""
        phases = decision.phases_recorded
        assert phases is not None
        before = None if decision.completed_swap is not None else \
            decision.slot.status.last_swap_phases
        for phase in SWAP_PHASES:
            value = getattr(phases, phase)
            if value is not None and (before is None or getattr(before, phase) is None):
                self.swap_phase_duration.labels(*labels, phase).observe(value)

    def _record_fetches(self, decisions: tuple[SlotDecision, ...]) -> None:
        """Download progress, from what the plan read off the fetch step's log."""
        fetching: set[tuple[str, str, str]] = set()
        for decision in decisions:
            progress = decision.fetch
            if progress is None or progress.bytes is None:
                continue
            labels = (decision.namespace, decision.name, decision.alias or "")
            fetching.add(labels)
            self.fetch_bytes.labels(*labels).set(progress.bytes)
            if progress.total_bytes is not None:
                self.fetch_total_bytes.labels(*labels).set(progress.total_bytes)
        for done in self._fetch_series - fetching:
            self.fetch_bytes.remove(*done)
            with contextlib.suppress(KeyError):
                self.fetch_total_bytes.remove(*done)
        self._fetch_series = fetching

    def _record_page_cache(self, decisions: tuple[SlotDecision, ...]) -> None:
        """Residency of the model files of slots the agents keep warm."""
        warm: set[tuple[str, str, str]] = set()
        for decision in decisions:
            page_cache = decision.page_cache
            if page_cache is None:
                continue
            labels = (decision.namespace, decision.name, decision.alias or "")
            warm.add(labels)
            self.slot_page_cache.labels(*labels).set(page_cache.resident_percent / 100)
        for gone in self._page_cache_series - warm:
            self.slot_page_cache.remove(*gone)
        self._page_cache_series = warm

    def _record_gpus(self, view: View, result: Plan) -> None:
        seen: set[tuple[str, str]] = set()
        for gpu in result.gpus:
            labels = (gpu.id.rsplit("/", 1)[0], gpu.id)
            seen.add(labels)
            self.vram_capacity.labels(*labels).set(gpu.capacity_bytes)
            self.vram_planned.labels(*labels).set(gpu.planned_bytes)
            self.vram_held.labels(*labels).set(gpu.held_bytes)
            self.vram_foreign.labels(*labels).set(view.foreign_vram.get(gpu.id, 0))
            self._count_unloaded(labels, gpu.slot_held_bytes == 0, result.at)
        for gone in self._gpu_series - seen:
            for metric in (self.vram_capacity, self.vram_planned, self.vram_held,
                           self.vram_foreign, self.gpu_unloaded_seconds):
                metric.remove(*gone)
            self._gpu_unloaded.pop(gone, None)
        self._gpu_series = seen

    def _count_unloaded(self, labels: tuple[str, str], unloaded: bool,
                        now: datetime.datetime | None) -> None:
        """Adds the time since the last pass when the GPU held no model then."""
        counter = self.gpu_unloaded_seconds.labels(*labels)
        if now is None:
            return
        previous = self._gpu_unloaded.get(labels)
        if previous is not None and previous[1]:
            counter.inc(max((now - previous[0]).total_seconds(), 0.0))
        self._gpu_unloaded[labels] = (now, unloaded)

    def _record_workloads(self, result: Plan) -> None:
        for decision in result.workloads:
            spec = decision.workload.spec
            labels = (decision.namespace, decision.name,
                      (spec.workload_class or spec.kind) if spec else "")
            previous = decision.workload.status.phase
            if decision.phase in ("Admitted", "Running") and previous not in (
                    "Admitted", "Running"):
                self.workloads_admitted.labels(*labels).inc()
            if decision.phase == "Preempted" and previous != "Preempted":
                self.workloads_preempted.labels(*labels).inc()

    def record_evaluation(self, namespace: str, slot: str, alias: str, passed: bool) -> None:
        self.evaluations.labels(namespace, slot, alias, "Passed" if passed else "Failed").inc()

    def record_prompt_cache_save(self, namespace: str, slot: str, saved: int, failed: int,
                                 evicted: int) -> None:
        for outcome, count in (("saved", saved), ("failed", failed), ("evicted", evicted)):
            self.prompt_cache_saves.labels(namespace, slot, outcome).inc(count)

    def record_prompt_cache_restore(self, namespace: str, slot: str, restored: int,
                                    failed: int) -> None:
        for outcome, count in (("restored", restored), ("failed", failed)):
            self.prompt_cache_restores.labels(namespace, slot, outcome).inc(count)

    def record_reconcile_error(self, cause: Literal["api", "crd_missing", "internal"]) -> None:
        self.reconcile_errors.labels(cause).inc()

    def record_route(self, outcome: RouteOutcome, alias: str, target: str,
                     count: int = 1) -> None:
        if outcome not in ROUTE_OUTCOMES:
            raise ValueError(f"unknown route outcome {outcome!r}; one of {ROUTE_OUTCOMES}")
        self.router_requests.labels(alias, target, outcome).inc(count)

    def set_spend(self, policy: str, amount: float, remaining: float | None) -> None:
        self.cloud_spend.labels(policy).set(amount)
        if remaining is not None:
            self.budget_remaining.labels(policy).set(remaining)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class SlotPhases(Collector):
    """``hybrid_compute_slot_resident`` and ``hybrid_compute_slot_phase``, made at
    each scrape from the phase and residency each slot shows. A gauge child per
    series would hold ten objects per slot between scrapes (one per phase, and the
    residency): megabytes with a thousand slots, for values that fit in one entry."""

    def __init__(self) -> None:
        self.shown: dict[tuple[str, str, str], tuple[str | None, bool]] = {}
        """Per slot's labels, its phase and whether it holds its GPU."""

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return self._families({})

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return self._families(dict(self.shown))

    @staticmethod
    def _families(shown: dict[tuple[str, str, str], tuple[str | None, bool]]
                  ) -> Iterator[GaugeMetricFamily]:
        resident = GaugeMetricFamily(
            "hybrid_compute_slot_resident",
            "1 while the slot holds its GPU (Loading, Evaluating, Ready or Draining)",
            labels=SLOT_LABELS)
        phases = GaugeMetricFamily(
            "hybrid_compute_slot_phase", "1 for the slot's current phase, 0 for the others",
            labels=(*SLOT_LABELS, "phase"))
        for labels, (current, held) in shown.items():
            resident.add_metric(labels, 1.0 if held else 0.0)
            for phase in SLOT_PHASES:
                phases.add_metric((*labels, phase), 1.0 if phase == current else 0.0)
        yield resident
        yield phases


METRICS = OperatorMetrics()
"""The running operator's metrics."""


def record_route(outcome: RouteOutcome, alias: str, target: str, count: int = 1) -> None:
    """Requests the router decided: ``alias`` as asked, ``target`` where they went."""
    METRICS.record_route(outcome, alias, target, count)


def set_spend(policy: str, amount: float, remaining: float | None) -> None:
    """Cloud spend so far in ``policy``'s budget period, and what is left of the budget."""
    METRICS.set_spend(policy, amount, remaining)


def build_app(metrics: OperatorMetrics) -> web.Application:
    async def serve_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    return app


async def start(metrics: OperatorMetrics, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    runner = web.AppRunner(build_app(metrics), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
