"""The operator's Prometheus metrics on the real control plane: a swap shows up in
the counter and the duration histogram, and residency and VRAM follow the plan."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybrid_compute.api.units import GIB, MIB
from hybrid_compute.server.metrics import SWAP_SECONDS_BUCKETS
from tests.cluster.support import alias, apply, read, seed_slots, wait, wait_phases
from tests.conftest import OperatorHandle, TestCluster

pytestmark = pytest.mark.cluster

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(operator: OperatorHandle) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(operator.scrape())
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_a_swap_is_counted_with_its_duration_in_the_histogram(
        k8s: TestCluster, operator: OperatorHandle, namespace: str) -> None:
    apply(k8s, namespace, seed_slots(namespace))
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"})
    quality = {"namespace": namespace, "slot": "quality", "alias": alias(namespace, "quality")}
    fast = {"namespace": namespace, "slot": "fast", "alias": alias(namespace, "fast")}
    before = scrape(operator)
    assert value(before, "hybrid_compute_swaps_total", **quality) is None, \
        "quality counted a swap before any demand"
    assert value(before, "hybrid_compute_slot_resident", **quality) == 0
    time.sleep(2)  # past fast's minimum residency
    operator.demand(alias(namespace, "quality"))
    wait_phases(k8s, namespace, {"quality": "Ready", "fast": "Standby"})
    seconds = read(k8s, namespace, "quality")["status"]["lastSwapSeconds"]

    samples = wait(lambda: (s := scrape(operator)) and value(
        s, "hybrid_compute_swaps_total", **quality) and s, 10, "the swap to be counted")
    assert value(samples, "hybrid_compute_swaps_total", **quality) == 1
    assert value(samples, "hybrid_compute_swap_duration_seconds_count", **quality) == 1
    assert value(samples, "hybrid_compute_swap_duration_seconds_sum", **quality) == \
        pytest.approx(seconds)
    first_fitting = next(b for b in SWAP_SECONDS_BUCKETS if b >= seconds)
    assert value(samples, "hybrid_compute_swap_duration_seconds_bucket", **quality,
                 le=str(float(first_fitting))) == 1, f"a {seconds}s swap is not in its bucket"
    assert value(samples, "hybrid_compute_swap_duration_seconds_bucket", **quality,
                 le="+Inf") == 1
    assert value(samples, "hybrid_compute_slot_resident", **quality) == 1
    assert value(samples, "hybrid_compute_slot_resident", **fast) == 0
    assert value(samples, "hybrid_compute_slot_phase", **quality, phase="Ready") == 1
    gpu = {"node": "dreamteam", "gpu": "dreamteam/0"}
    assert value(samples, "hybrid_compute_gpu_vram_capacity_bytes", **gpu) == 24576 * MIB - GIB
    planned = value(samples, "hybrid_compute_gpu_vram_planned_bytes", **gpu)
    assert planned is not None and planned >= 20 * GIB, planned
    plans = value(samples, "hybrid_compute_plan_duration_seconds_count")
    assert plans is not None and plans > 0
