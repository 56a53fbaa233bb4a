"""GpuWorkload admission on the real control plane: time windows on the
operator's clock, preemption by LLM demand, the GPU mutex, impossible sizes."""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any

import pytest

from tests.cluster.support import (
    VramSampler,
    alias,
    apply,
    phase,
    read,
    seed_slots,
    wait,
    wait_phases,
)
from tests.conftest import OperatorHandle, TestCluster

pytestmark = pytest.mark.cluster

AUCKLAND = zoneinfo.ZoneInfo("Pacific/Auckland")
WINDOW = {"timeZone": "Pacific/Auckland", "windows": [{"start": "02:00", "end": "08:00"}]}
RUNS_LONG = {"pod-complete.stage.kwok.x-k8s.io/delay": "1h",
             "pod-delete.stage.kwok.x-k8s.io/delay": "1s",
             "pod-ready.stage.kwok.x-k8s.io/delay": "500ms"}


def workload(name: str, class_: str, vram: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hybridcompute.io/v1alpha1",
        "kind": "GpuWorkload",
        "metadata": {"name": name},
        "spec": {"class": class_, "vram": vram,
                 "template": {"metadata": {"annotations": RUNS_LONG},
                              "spec": {"containers": [{"name": "main",
                                                       "image": "registry.example/work"}]}},
                 **spec},
    }


def auckland_next(hour: int) -> datetime.datetime:
    """The next time the clock in Auckland shows ``hour``:00."""
    now = datetime.datetime.now(AUCKLAND)
    moment = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if moment <= now:
        moment = (moment + datetime.timedelta(days=1)).replace(hour=hour)
    return moment.astimezone(datetime.UTC)


def workload_phase(k8s: TestCluster, namespace: str, name: str) -> str | None:
    return phase(k8s, namespace, name, "gpuworkloads")


def wait_workload(k8s: TestCluster, namespace: str, name: str, expected: str,
                  timeout: float, what: str) -> None:
    try:
        wait(lambda: workload_phase(k8s, namespace, name) == expected, timeout, what)
    except AssertionError:
        status = workload_status(k8s, namespace, name)
        raise AssertionError(f"{what}: {name} is {status.get('phase')}: "
                             f"{status.get('reason')}") from None


def workload_status(k8s: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    return read(k8s, namespace, name, "gpuworkloads").get("status") or {}


def job(k8s: TestCluster, namespace: str, name: str) -> Any:
    return k8s.kubectl("get", "job", name, "-n", namespace, "-o", "json").stdout


def running_pods(k8s: TestCluster, namespace: str, name: str) -> list[Any]:
    pods = k8s.core.list_namespaced_pod(
        namespace, label_selector=f"hybridcompute.io/workload={name}").items
    return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def test_fine_tuning_runs_in_its_window_yields_to_a_demand_and_resumes(
        k8s: TestCluster, clock: OperatorHandle, namespace: str,
        sampler: VramSampler) -> None:
    three_am = auckland_next(3)
    clock.set_clock(three_am - datetime.timedelta(hours=15))  # noon the day before
    apply(k8s, namespace, [*seed_slots(namespace, idle="6s"),
                           workload("fine-tuning", "FineTuning", "22Gi", kind="Job",
                                    schedule=WINDOW, maxDuration="6h")])
    wait_phases(k8s, namespace, {"fast": "Ready"})
    wait_workload(k8s, namespace, "fine-tuning", "Queued", 30,
                  "fine-tuning queued outside its window")
    assert '"suspend": true' in job(k8s, namespace, "fine-tuning")

    clock.set_clock(three_am)
    wait_workload(k8s, namespace, "fine-tuning", "Running", 60,
                  "fine-tuning running once the clock enters 02:00-08:00 Auckland")
    assert phase(k8s, namespace, "fast") == "Standby", "the idle default slot gave way"
    assert len(running_pods(k8s, namespace, "fine-tuning")) == 1
    status = workload_status(k8s, namespace, "fine-tuning")
    assert status["window"] == "02:00-08:00 Pacific/Auckland"
    assert status["gpu"] == "dreamteam/0" and status["admittedAt"]

    clock.demand(alias(namespace, "quality"))
    wait_workload(k8s, namespace, "fine-tuning", "Preempted", 30,
                  "fine-tuning preempted by the demand")
    assert '"suspend": true' in job(k8s, namespace, "fine-tuning")
    status = workload_status(k8s, namespace, "fine-tuning")
    assert status["reason"] == f"preempted by {alias(namespace, 'quality')}", status
    wait_phases(k8s, namespace, {"quality": "Ready"})
    assert not running_pods(k8s, namespace, "fine-tuning")

    # quality idles out after 6 s; the fine-tuning Job resumes.
    wait_workload(k8s, namespace, "fine-tuning", "Running", 60,
                  "fine-tuning resumed after quality went idle")
    assert phase(k8s, namespace, "quality") == "Standby"
    assert workload_status(k8s, namespace, "fine-tuning")["preemptions"] == 1
    events = k8s.core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=fine-tuning,reason=Preempted").items
    assert events, "no Preempted event"


def test_image_generation_outside_its_window_waits_for_the_next_opening(
        k8s: TestCluster, clock: OperatorHandle, namespace: str) -> None:
    noon = auckland_next(12)
    clock.set_clock(noon)
    apply(k8s, namespace, [workload("image-generation", "ImageGeneration", "10Gi",
                                    kind="Job", schedule=WINDOW)])
    wait_workload(k8s, namespace, "image-generation", "Queued", 30, "image generation queued")
    opening = (noon.astimezone(AUCKLAND) + datetime.timedelta(days=1)).replace(hour=2)
    reason = workload_status(k8s, namespace, "image-generation")["reason"]
    assert reason == (f"outside its window 02:00-08:00 Pacific/Auckland; opens "
                      f"{opening.strftime('%Y-%m-%d 02:00 %Z')}"), reason
    header = k8s.kubectl("get", "gpuworkloads", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "CLASS", "PHASE", "VRAM", "WINDOW", "REASON", "AGE"], header


def test_two_workloads_above_the_mutex_size_never_run_together(
        k8s: TestCluster, operator: OperatorHandle, namespace: str,
        sampler: VramSampler) -> None:
    apply(k8s, namespace, [workload("render-a", "ImageGeneration", "11Gi", kind="Job"),
                           workload("render-b", "ImageGeneration", "11Gi", kind="Job")])

    def one_running_one_waiting() -> bool:
        phases = {n: workload_phase(k8s, namespace, n) for n in ("render-a", "render-b")}
        return sorted(str(p) for p in phases.values()) == ["Queued", "Running"]

    wait(one_running_one_waiting, 60, "one render running, the other queued")
    waiting = next(n for n in ("render-a", "render-b")
                   if workload_phase(k8s, namespace, n) == "Queued")
    running = "render-b" if waiting == "render-a" else "render-a"
    reason = workload_status(k8s, namespace, waiting)["reason"]
    assert reason.startswith("waiting for the GPU mutex"), reason
    k8s.custom.delete_namespaced_custom_object("hybridcompute.io", "v1alpha1", namespace,
                                               "gpuworkloads", running)
    wait(lambda: workload_phase(k8s, namespace, waiting) == "Running", 60,
         f"{waiting} running once {running} is gone")


def test_a_workload_that_can_never_fit_says_so_and_disturbs_nothing(
        k8s: TestCluster, operator: OperatorHandle, namespace: str) -> None:
    apply(k8s, namespace, [*seed_slots(namespace),
                           workload("giant", "FineTuning", "30Gi", kind="Job")])
    wait_phases(k8s, namespace, {"fast": "Ready", "embed": "Ready"})
    wait(lambda: workload_status(k8s, namespace, "giant").get("reason", "").startswith(
        "can never fit"), 30, "the giant workload's reason")
    status = workload_status(k8s, namespace, "giant")
    assert status["phase"] == "Queued"
    assert status["reason"] == "can never fit: needs 30.0 GiB, dreamteam/0 offers 23.0 GiB"
    assert not running_pods(k8s, namespace, "giant")
