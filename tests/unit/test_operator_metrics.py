"""The operator's metrics follow what the plan decides, pass by pass, in the
simulated cluster: swaps and their duration, deferrals, residency, VRAM per GPU,
workloads admitted and preempted; plus the router's recording functions."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hybrid_compute.api.units import GIB
from hybrid_compute.plan import Plan
from hybrid_compute.server.metrics import OperatorMetrics, build_app
from tests.simworld import SEED_SLOTS, World, slot
from tests.unit.test_admission import INSIDE_WINDOW, NIGHT, night_world, phase


def sample(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def step(world: World, metrics: OperatorMetrics) -> Plan:
    view = world.view()
    result = world.step()
    metrics.record_plan(view, result, 0.002)
    return result


def run_until(world: World, metrics: OperatorMetrics, condition, limit: int = 60  # type: ignore[no-untyped-def]
              ) -> None:
    for _ in range(limit):
        step(world, metrics)
        if condition():
            return
    raise AssertionError("condition not reached")


QUALITY = {"namespace": "lab", "slot": "quality", "alias": "local/quality"}
FAST = {"namespace": "lab", "slot": "fast", "alias": "local/fast"}


def test_a_swap_is_counted_once_with_the_status_duration_and_deferrals_on_entry() -> None:
    metrics = OperatorMetrics()
    world = World([slot(name, spec) for name, spec in SEED_SLOTS.items()])
    run_until(world, metrics, lambda: world.phase("fast") == "Ready")
    assert sample(metrics, "hybrid_compute_swaps_total", **FAST) == 1, \
        "the first load of the default slot is a swap onto an empty GPU"
    world.demand("local/quality")  # inside fast's minimum residency: deferred
    for _ in range(3):
        step(world, metrics)
    assert world.phase("quality") == "Pending"
    assert sample(metrics, "hybrid_compute_swaps_deferred_total", **QUALITY) == 1, \
        "a slot that stays Pending was counted again"
    world.now += datetime.timedelta(seconds=31)
    world.demand("local/quality")
    run_until(world, metrics, lambda: world.phase("quality") == "Ready")
    for _ in range(3):
        step(world, metrics)
    seconds = next(s.status.last_swap_seconds for s in world.slots if s.name == "quality")
    assert seconds and seconds > 0
    assert sample(metrics, "hybrid_compute_swaps_total", **QUALITY) == 1
    assert sample(metrics, "hybrid_compute_swap_duration_seconds_count", **QUALITY) == 1
    assert sample(metrics, "hybrid_compute_swap_duration_seconds_sum", **QUALITY) == seconds
    assert sample(metrics, "hybrid_compute_swap_duration_seconds_bucket", **QUALITY,
                  le="+Inf") == 1
    assert sample(metrics, "hybrid_compute_slot_resident", **QUALITY) == 1
    assert sample(metrics, "hybrid_compute_slot_resident", **FAST) == 0
    assert sample(metrics, "hybrid_compute_slot_phase", **FAST, phase="Standby") == 1
    assert sample(metrics, "hybrid_compute_slot_phase", **FAST, phase="Ready") == 0
    gpu = {"node": "dreamteam", "gpu": "dreamteam/0"}
    assert sample(metrics, "hybrid_compute_gpu_vram_capacity_bytes", **gpu) == 23 * GIB
    assert sample(metrics, "hybrid_compute_gpu_vram_planned_bytes", **gpu) == 20 * GIB
    assert sample(metrics, "hybrid_compute_gpu_vram_held_bytes", **gpu) == 20 * GIB
    assert sample(metrics, "hybrid_compute_plan_duration_seconds_count") == \
        sample(metrics, "hybrid_compute_reconciles_total")


def test_a_deleted_slot_leaves_no_residency_series() -> None:
    metrics = OperatorMetrics()
    world = World([slot(name, spec) for name, spec in SEED_SLOTS.items()])
    run_until(world, metrics, lambda: world.phase("fast") == "Ready")
    world.slots = [s for s in world.slots if s.name != "quality-alt"]
    step(world, metrics)
    gone = {"namespace": "lab", "slot": "quality-alt", "alias": "local/quality-alt"}
    assert sample(metrics, "hybrid_compute_slot_resident", **gone) is None
    assert sample(metrics, "hybrid_compute_slot_phase", **gone, phase="Standby") is None
    assert sample(metrics, "hybrid_compute_slot_resident", **FAST) == 1


def test_a_decision_handed_out_again_is_recorded_once() -> None:
    """A plan hands a quiet slot's decision out again as the same object: recording
    it again counts nothing again, and a slot whose alias changes leaves no series
    under its old one."""
    metrics = OperatorMetrics()
    world = World([slot(name, spec) for name, spec in SEED_SLOTS.items()])
    swapped: list[Plan] = []
    for _ in range(60):
        view = world.view()
        result = world.step()
        metrics.record_plan(view, result, 0.002)
        if result.slot("lab", "fast").completed_swap is not None:
            swapped.append(result)
            metrics.record_plan(view, result, 0.002)
            break
    assert swapped, "the default slot swapped in"
    assert sample(metrics, "hybrid_compute_swaps_total", **FAST) == 1
    index = next(i for i, s in enumerate(world.slots) if s.name == "quality-alt")
    renamed = slot("quality-alt", {**SEED_SLOTS["quality-alt"], "alias": "local/renamed"})
    world.slots[index] = renamed
    step(world, metrics)
    old = {"namespace": "lab", "slot": "quality-alt", "alias": "local/quality-alt"}
    assert sample(metrics, "hybrid_compute_slot_phase", **old, phase="Standby") is None
    assert sample(metrics, "hybrid_compute_slot_phase", **{**old, "alias": "local/renamed"},
                  phase="Standby") is not None


def test_workloads_admitted_and_preempted_are_counted_on_the_transition() -> None:
    metrics = OperatorMetrics()
    world = night_world(INSIDE_WINDOW, 10,
                        train={"class": "FineTuning", "vram": "22Gi", "schedule": NIGHT})
    run_until(world, metrics, lambda: phase(world, "train") == "Running")
    train = {"namespace": "lab", "workload": "train", "class": "FineTuning"}
    assert sample(metrics, "hybrid_compute_workloads_admitted_total", **train) == 1
    world.demand("local/quality")
    step(world, metrics)
    assert phase(world, "train") == "Preempted"
    step(world, metrics)
    assert sample(metrics, "hybrid_compute_workloads_preempted_total", **train) == 1
    run_until(world, metrics, lambda: phase(world, "train") == "Running")
    assert sample(metrics, "hybrid_compute_workloads_admitted_total", **train) == 2


def test_router_outcomes_and_spend_are_recorded() -> None:
    metrics = OperatorMetrics()
    metrics.record_route("bridged", "local/quality", "cloud/mid")
    metrics.record_route("bridged", "local/quality", "cloud/mid")
    metrics.record_route("refused", "local/quality", "local/quality")
    assert sample(metrics, "hybrid_compute_router_requests_total", alias="local/quality",
                  target="cloud/mid", outcome="bridged") == 2
    assert sample(metrics, "hybrid_compute_router_requests_total", alias="local/quality",
                  target="local/quality", outcome="refused") == 1
    with pytest.raises(ValueError, match="unknown route outcome 'lost'"):
        metrics.record_route("lost", "a/b", "c/d")  # type: ignore[arg-type]
    metrics.set_spend("ai/hybrid", 12.5, 87.5)
    assert sample(metrics, "hybrid_compute_cloud_spend_usd", policy="ai/hybrid") == 12.5
    assert sample(metrics, "hybrid_compute_cloud_budget_remaining_usd",
                  policy="ai/hybrid") == 87.5
    metrics.record_reconcile_error("api")
    assert sample(metrics, "hybrid_compute_reconcile_errors_total", cause="api") == 1


def test_each_stage_of_a_pass_is_a_histogram_series() -> None:
    metrics = OperatorMetrics()
    metrics.record_pass_stages({"observe": 0.004, "plan": 0.02, "diff": 0.003,
                                "act": 0.03, "after": 0.001})
    metrics.record_pass_stages({"observe": 0.002, "plan": 0.01, "diff": 0.001,
                                "act": 0.0, "after": 0.001})
    name = "hybrid_compute_pass_stage_duration_seconds"
    assert sample(metrics, f"{name}_count", stage="plan") == 2
    assert sample(metrics, f"{name}_sum", stage="plan") == pytest.approx(0.03)
    assert sample(metrics, f"{name}_bucket", stage="act", le="0.005") == 1


def test_metrics_endpoint_serves_the_registry() -> None:
    metrics = OperatorMetrics()
    metrics.record_route("served", "local/fast", "local/fast")

    async def exercise() -> str:
        async with TestClient(TestServer(build_app(metrics))) as http:
            response = await http.get("/metrics")
            assert response.status == 200
            return await response.text()

    text = asyncio.run(exercise())
    assert ('hybrid_compute_router_requests_total{alias="local/fast",outcome="served",'
            'target="local/fast"} 1.0') in text
