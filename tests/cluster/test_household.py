"""The GPU shared with the household, on the real control plane: a whole-GPU
reservation made with ``hybrid-compute reserve`` evicts the 32B slot after its drain
while the router bridges its alias (and holds private requests), and gives the card
back to the default slot when it ends; a game the GPU agent sees outside the cluster
is treated as a reservation of its size while it lasts; the default slot sleeps in
its sleep window, wakes for a request and sleeps again after ``sleepAfter``."""

from __future__ import annotations

import datetime
import time
import zoneinfo
from typing import Any

import pytest

from hybrid_compute.api.routepolicy import RoutePolicySpec
from hybrid_compute.api.units import GIB
from hybrid_compute.cli import main as cli
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME
from hybrid_compute.plan.objects import slot_from_object
from hybrid_compute.render.litellm_config import render_rules
from hybrid_compute.router.hybrid_router import decide
from tests.cluster.support import (
    VramSampler,
    alias,
    apply,
    phase,
    read,
    seed_slots,
    slot_pods,
    wait,
    wait_phases,
)
from tests.conftest import OperatorHandle, SimulatedGpuAgent, TestCluster

pytestmark = pytest.mark.cluster

GPU = f"{DEFAULT_NODE_NAME}/0"


def reservation_status(k8s: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    return read(k8s, namespace, name, "gpuworkloads").get("status") or {}


def state(operator: OperatorHandle) -> dict[str, Any]:
    code, document = operator.call("GET", "/v1/state")
    assert code == 200, document
    return document


def chat(model: str, **metadata: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}],
            "metadata": metadata}


def test_a_whole_gpu_reservation_evicts_the_32b_slot_bridges_it_and_ends(
        k8s: TestCluster, operator: OperatorHandle, namespace: str, sampler: VramSampler,
        capsys: pytest.CaptureFixture[str]) -> None:
    slots = seed_slots(namespace, idle="6s")
    apply(k8s, namespace, slots)
    quality = alias(namespace, "quality")
    rules = render_rules(RoutePolicySpec.model_validate({}),
                         [slot_from_object(s) for s in slots])
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"})
    time.sleep(2)  # past fast's minimum residency
    operator.demand(quality)
    wait_phases(k8s, namespace, {"quality": "Ready", "fast": "Standby"})
    time.sleep(2)  # past quality's minimum residency
    operator.demand(quality)
    state(operator)  # a router is active: a drain waits until routers stopped sending

    assert cli(["reserve", "--whole-gpu", "--for", "20s", "--name", "game", "-n", namespace,
                "--kubeconfig", str(k8s.kubeconfig)]) == 0
    assert f"reservation {namespace}/game: a whole GPU for 20s" in capsys.readouterr().out

    seen: list[str] = []

    def held() -> bool:
        current = phase(k8s, namespace, "quality")
        if not seen or seen[-1] != current:
            seen.append(str(current))
        return reservation_status(k8s, namespace, "game").get("phase") == "Running"

    wait(held, 60, "the reservation to hold the GPU")
    assert seen[:2] == ["Ready", "Draining"], f"quality went {seen}, not through a drain"
    assert not slot_pods(k8s, namespace, "quality") and not slot_pods(k8s, namespace, "fast")
    game = reservation_status(k8s, namespace, "game")
    assert game["evicted"] == [quality], game
    assert game["gpu"] == GPU and game["heldVram"] == "the whole GPU (23.0 GiB)"
    assert game["endsAt"] and game["reason"].startswith(
        f"holding the whole GPU (23.0 GiB) on {GPU} until "), game
    events = k8s.core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=game,reason=Reserved").items
    assert events and events[0].message.endswith(f"; evicted {quality}"), \
        [e.message for e in events]

    # What the router reads: quality is not routable locally; a request for it is
    # bridged to its fallback, a private one held for it.
    document = state(operator)
    entry = next(s for s in document["slots"]
                 if s["namespace"] == namespace and s["name"] == "quality")
    assert not entry["ready"], entry
    gpu = next(g for g in document["gpus"] if g["id"] == GPU)
    assert "reservation game" in gpu["residents"], gpu
    mine = [r for r in document["reservations"] if r["namespace"] == namespace]
    assert [(r["name"], r["phase"], r["evicted"]) for r in mine] == [
        ("game", "Running", [quality])]
    bridged = decide(chat(quality), rules, document)
    assert (bridged.route, bridged.model) == ("bridged", "cloud/mid"), bridged
    held_back = decide(chat(quality, tags=["private"]), rules, document)
    assert (held_back.route, held_back.model) == ("hold", quality), held_back

    # The reservation ends: the card goes back to the default slot.
    wait(lambda: reservation_status(k8s, namespace, "game").get("phase") == "Succeeded", 60,
         "the reservation to end after 20s")
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"}, timeout=60)
    assert cli(["release", "game", "-n", namespace, "--kubeconfig",
                str(k8s.kubeconfig)]) == 0
    assert f"reservation {namespace}/game released" in capsys.readouterr().out


def node_events(k8s: TestCluster, reason: str, since: datetime.datetime) -> list[str]:
    events = k8s.core.list_namespaced_event(
        "default", field_selector=f"involvedObject.kind=Node,involvedObject.name="
                                  f"{DEFAULT_NODE_NAME},reason={reason}").items
    return [e.message for e in events
            if (e.last_timestamp or e.event_time or since) >= since]


def test_a_foreign_process_defers_and_evicts_as_a_reservation_and_its_end_returns_the_card(
        k8s: TestCluster, operator: OperatorHandle, gpu_agent: SimulatedGpuAgent,
        namespace: str, sampler: VramSampler) -> None:
    apply(k8s, namespace, seed_slots(namespace, idle="6s"))
    quality = alias(namespace, "quality")
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"})
    time.sleep(2)  # past fast's minimum residency
    began = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    game = "steam (pid 4242)"
    gpu_agent.run_foreign(4242, "steam", 18 * GIB)
    try:
        wait_phases(k8s, namespace, {"fast": "Standby"}, timeout=60)
        reason = read(k8s, namespace, "fast")["status"]["reason"]
        assert reason == f"standby: the GPU is taken by {game} outside hybrid-compute " \
                         "(18.0 GiB)", reason
        announced = node_events(k8s, "ForeignGpuUse", began)
        assert f"{game} holds 18.0 GiB of {GPU} outside hybrid-compute: planned as a " \
               "reservation of that size while it lasts" in announced, announced
        operator.demand(quality)
        wait_phases(k8s, namespace, {"quality": "Pending"})
        reason = read(k8s, namespace, "quality")["status"]["reason"]
        assert reason == (f"waiting for room: 20.0 GiB needed, held by {game} outside "
                          "hybrid-compute (18.0 GiB)"), reason
        gpu = next(g for g in state(operator)["gpus"] if g["id"] == GPU)
        assert gpu["foreign"] == [game] and gpu["foreignBytes"] == 18 * GIB, gpu
    finally:
        gpu_agent.end_foreign(4242)
    # The game ends: the waiting load goes ahead, idles out, and the default returns.
    wait_phases(k8s, namespace, {"quality": "Ready"}, timeout=60)
    wait_phases(k8s, namespace, {"fast": "Ready", "quality": "Standby"}, timeout=60)
    assert f"{game} no longer holds memory on {GPU}: its reservation ended" in \
        node_events(k8s, "ForeignGpuUseEnded", began)


AUCKLAND = zoneinfo.ZoneInfo("Pacific/Auckland")
NIGHT = {"timeZone": "Pacific/Auckland", "windows": [{"start": "02:00", "end": "08:00"}]}


def auckland_next(hour: int) -> datetime.datetime:
    """The next time the clock in Auckland shows ``hour``:00."""
    now = datetime.datetime.now(AUCKLAND)
    moment = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if moment <= now:
        moment = (moment + datetime.timedelta(days=1)).replace(hour=hour)
    return moment.astimezone(datetime.UTC)


def unloaded_seconds(operator: OperatorHandle) -> float:
    for line in operator.scrape().splitlines():
        if line.startswith("hybrid_compute_gpu_unloaded_seconds_total{") and \
                f'gpu="{GPU}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no hybrid_compute_gpu_unloaded_seconds_total for the GPU")


def test_the_default_slot_sleeps_in_its_window_wakes_for_a_request_and_sleeps_again(
        k8s: TestCluster, clock: OperatorHandle, namespace: str, sampler: VramSampler) -> None:
    three_am = auckland_next(3)
    if three_am - datetime.timedelta(hours=15) > datetime.datetime.now(datetime.UTC):
        # Noon before it must not lie ahead of the slots' creation: sleepAfter counts
        # from there, and a clock hours ahead of it would find fast idle for hours.
        three_am -= datetime.timedelta(days=1)
    # A pass that began before the clock moved would stamp the new slots with the old
    # time: let the freshly started operator finish its first plan first.
    wait(lambda: state(clock)["ready"], 30, "the operator's first plan")
    clock.set_clock(three_am - datetime.timedelta(hours=15))  # noon the day before
    time.sleep(1)
    slots = seed_slots(namespace)
    slots[0]["spec"].update(sleepSchedule=NIGHT, sleepAfter="15s")
    apply(k8s, namespace, slots)
    fast = alias(namespace, "fast")
    wait_phases(k8s, namespace, {"fast": "Ready"})

    clock.set_clock(three_am)
    wait_phases(k8s, namespace, {"fast": "Standby"}, timeout=60)
    reason = read(k8s, namespace, "fast")["status"]["reason"]
    assert reason.startswith("asleep: inside its sleep window 02:00-08:00 Pacific/Auckland "
                             "until "), reason
    assert not slot_pods(k8s, namespace, "fast")
    events = k8s.core.list_namespaced_event(
        namespace, field_selector="involvedObject.name=fast,reason=Unloading").items
    assert [e.message.split(" after ")[0] for e in events] == [f"Unloading {fast} to sleep"]
    before = unloaded_seconds(clock)
    # Nothing changes while the card sleeps: the counter grows at the loop's periodic
    # pass (every idle_check_interval, 30 s by default).
    wait(lambda: unloaded_seconds(clock) > before, 45,
         "the seconds without a model loaded to grow while the card sleeps")

    clock.demand(fast)
    wait_phases(k8s, namespace, {"fast": "Ready"}, timeout=60)
    ready = time.monotonic()
    wait_phases(k8s, namespace, {"fast": "Standby"}, timeout=60)
    slept_after = time.monotonic() - ready
    assert 10 <= slept_after <= 40, f"fast slept {slept_after:.1f}s after it became Ready"
    assert read(k8s, namespace, "fast")["status"]["reason"].startswith(
        "asleep: inside its sleep window")
