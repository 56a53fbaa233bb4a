"""Reservations (GpuWorkload kind Reservation) in the plan: a whole GPU handed to the
household evicts a serving slot after its drain and gives the card back when it
ends; the priority rules of today decide who yields; the status says what left and
when it ends."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from hybrid_compute.api.gpuworkload import GpuWorkloadSpec, GpuWorkloadStatus
from hybrid_compute.plan.view import ForeignProcess, WorkloadInfo
from tests.simworld import SEED_SLOTS, START, World, slot


def reservation(name: str, **spec: Any) -> WorkloadInfo:
    return WorkloadInfo("lab", name, f"uid-r-{name}", 1,
                        GpuWorkloadSpec.model_validate({"kind": "Reservation", **spec}),
                        created=START)


def seed_world(*reservations: WorkloadInfo, **specs: dict[str, Any]) -> World:
    slots = {**SEED_SLOTS, **specs}
    return World([slot(name, spec) for name, spec in slots.items()],
                 workloads=list(reservations))


def status(world: World, name: str) -> GpuWorkloadStatus:
    return next(w.status for w in world.workloads if w.name == name)


def add(world: World, workload: WorkloadInfo) -> None:
    world.workloads = [*world.workloads, workload]


def quality_serving(world: World) -> None:
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    world.now += datetime.timedelta(minutes=1)  # past quality's minimum residency
    world.demand("local/quality")


def test_a_whole_gpu_reservation_evicts_the_serving_slot_after_its_drain_and_ends() -> None:
    world = seed_world()
    quality_serving(world)
    world.in_flight["quality"] = 1
    add(world, reservation("game", wholeGpu=True, duration="10m"))
    world.step()
    assert world.phase("quality") == "Draining", "a serving slot drains first"
    assert status(world, "game").phase == "Admitted"
    assert status(world, "game").reason == ("admitted; waiting for quality to release "
                                            "dreamteam/0")
    world.step()
    assert world.phase("quality") == "Draining"
    world.in_flight["quality"] = 0
    world.run_until(lambda: status(world, "game").phase == "Running")
    assert not [p for p in world.pods if p.info.gpus], "nothing of ours on the card"
    game = status(world, "game")
    assert game.evicted == ["local/quality"]
    assert game.held_vram == "the whole GPU (23.0 GiB)"
    assert game.ends_at == game.admitted_at + datetime.timedelta(minutes=10)
    assert game.reason.startswith("holding the whole GPU (23.0 GiB) on dreamteam/0 until ")
    reserved = [e for e in world.last_plan.events if e.reason == "Reserved"]  # type: ignore[union-attr]
    assert reserved and reserved[0].message.endswith("; evicted local/quality")
    # Requests keep coming: quality waits, the default slot stands by.
    world.demand("local/quality")
    world.step()
    assert world.phase("quality") == "Pending"
    quality = world.last_plan.slot("lab", "quality")  # type: ignore[union-attr]
    assert quality.reason == "waiting for room: 20.0 GiB needed, held by reservation game"
    assert world.phase("fast") == "Standby"
    assert "reservation game" in world.last_plan.slot("lab", "fast").reason  # type: ignore[union-attr]
    # The reservation ends; quality's demand has long expired, fast comes back.
    world.now = game.ends_at + datetime.timedelta(seconds=1)
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert status(world, "game").phase == "Succeeded"
    assert status(world, "game").reason.startswith("ended at ")


def test_a_reservation_waits_for_a_slot_within_its_minimum_residency() -> None:
    world = seed_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    add(world, reservation("game", wholeGpu=True))
    world.step()
    assert world.phase("fast") == "Ready", "a pinned slot keeps its place"
    assert status(world, "game").phase == "Queued"
    assert status(world, "game").reason == "waiting for a whole GPU, held by local/fast"
    world.now += datetime.timedelta(seconds=31)
    world.run_until(lambda: status(world, "game").phase == "Running")
    assert world.phase("fast") == "Standby"
    assert status(world, "game").ends_at is None
    assert status(world, "game").reason == "holding the whole GPU (23.0 GiB) on dreamteam/0 " \
                                           "until deleted"


def test_a_sized_reservation_leaves_room_for_what_fits_beside_it() -> None:
    world = seed_world(reservation("transcode", vram="10Gi", duration="1h"))
    world.run_until(lambda: status(world, "transcode").phase == "Running"
                    and world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    for _ in range(10):
        world.step()
        assert world.phase("quality") != "Ready"
    assert world.phase("quality") == "Pending"
    assert status(world, "transcode").phase == "Running"


def test_a_workload_class_reservation_waits_for_slots_in_use() -> None:
    world = seed_world()
    quality_serving(world)
    add(world, reservation("nightly-render", wholeGpu=True, priorityClass="Workload"))
    for _ in range(5):
        world.demand("local/quality")
        world.step()
        assert world.phase("quality") == "Ready"
        assert status(world, "nightly-render").phase == "Queued"
    # Once quality idles out, the reservation takes the card before the default slot.
    world.now += datetime.timedelta(minutes=6)
    world.run_until(lambda: status(world, "nightly-render").phase == "Running")
    assert world.phase("fast") == "Standby"


def test_the_ledger_counts_a_running_reservation_from_its_status() -> None:
    """After a restart nothing but the status says the card is held: nothing starts
    beside it."""
    world = seed_world(reservation("game", wholeGpu=True))
    world.run_until(lambda: status(world, "game").phase == "Running")
    restarted = world.last_plan
    assert restarted is not None
    gpu = next(g for g in restarted.gpus if g.id == "dreamteam/0")
    assert gpu.held_bytes == gpu.capacity_bytes
    for _ in range(5):
        world.step()
        assert not [p for p in world.pods if p.info.gpus]


@pytest.mark.parametrize("spec,message", [
    ({"vram": "8Gi", "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
     "a Reservation runs nothing"),
    ({"vram": "8Gi", "wholeGpu": True}, "set exactly one of vram or wholeGpu"),
    ({}, "set exactly one of vram or wholeGpu"),
    ({"vram": "8Gi", "duration": "1h", "schedule": {"windows": [{"start": "19:00",
                                                                 "end": "23:00"}]}},
     "leave duration out"),
])
def test_bad_reservations_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GpuWorkloadSpec.model_validate({"kind": "Reservation", **spec})


def test_reservation_fields_belong_to_reservations() -> None:
    job = {"class": "Other", "vram": "1Gi",
           "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
    for extra, name in (({"wholeGpu": True, "vram": None}, "wholeGpu"),
                        ({"duration": "1h"}, "duration"),
                        ({"priorityClass": "Household"}, "priorityClass")):
        spec = {key: value for key, value in {**job, **extra}.items() if value is not None}
        with pytest.raises(ValueError, match=f"{name} applies to kind Reservation only"):
            GpuWorkloadSpec.model_validate(spec)


def test_a_reservation_pinned_to_a_node_goes_there_only() -> None:
    world = seed_world(reservation("elsewhere", vram="1Gi", node="other-box"))
    world.step()
    assert status(world, "elsewhere").reason == \
        "can never fit: node other-box advertises no nvidia.com/gpu"


def test_a_reservation_of_the_card_s_size_holds_the_whole_gpu() -> None:
    """``reserve --vram 24Gi`` on a 24 GiB card: more than the operator may use beside
    its headroom, so everything of the operator's keeps off the card."""
    world = seed_world(reservation("game", vram="24Gi"))
    world.run_until(lambda: status(world, "game").phase == "Running")
    assert status(world, "game").held_vram == "the whole GPU (23.0 GiB)"
    too_big = seed_world(reservation("giant", vram="25Gi"))
    too_big.step()
    assert status(too_big, "giant").reason == \
        "can never fit: needs 25.0 GiB, dreamteam/0 offers 23.0 GiB"


def test_reserve_refuses_a_bad_reservation_before_reaching_a_cluster(
        capsys: pytest.CaptureFixture[str]) -> None:
    from hybrid_compute.cli import main

    assert main(["reserve", "--vram", "8Gi", "--for", "0s", "--kubeconfig",
                 "/nonexistent"]) == 2
    assert "duration: must be above 0s" in capsys.readouterr().err


GIB = 1024**3


def test_a_foreign_process_is_a_reservation_while_it_lasts() -> None:
    """A desktop game takes 18 GiB: the default slot gives way, a demand for the 32B
    slot waits, an Event names the game once, and its end brings the default back."""
    world = seed_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.foreign = {"dreamteam/0": (ForeignProcess(18 * GIB, 4242, "steam"),)}
    world.step()
    events = world.last_plan.events  # type: ignore[union-attr]
    announced = [(e.kind, e.name, e.reason, e.message) for e in events
                 if e.reason.startswith("ForeignGpuUse")]
    assert announced == [("Node", "dreamteam", "ForeignGpuUse",
                          "steam (pid 4242) holds 18.0 GiB of dreamteam/0 outside "
                          "hybrid-compute: planned as a reservation of that size while it "
                          "lasts")]
    world.demand("local/quality")
    world.run_until(lambda: world.phase("fast") == "Standby")
    fast = world.last_plan.slot("lab", "fast")  # type: ignore[union-attr]
    assert fast.reason == ("standby: the GPU is taken by steam (pid 4242) outside "
                           "hybrid-compute (18.0 GiB)")
    quality = world.last_plan.slot("lab", "quality")  # type: ignore[union-attr]
    assert (quality.phase, quality.reason) == (
        "Pending", "waiting for room: 20.0 GiB needed, held by steam (pid 4242) outside "
                   "hybrid-compute (18.0 GiB)")
    assert not [e for e in world.last_plan.events  # type: ignore[union-attr]
                if e.reason == "ForeignGpuUse"], "announced once"
    gpu = world.last_plan.gpus[0]  # type: ignore[union-attr]
    assert (gpu.foreign_bytes, gpu.foreign) == (18 * GIB, ("steam (pid 4242)",))
    # The game ends; quality's demand has expired meanwhile: fast comes back.
    world.now += datetime.timedelta(minutes=10)
    world.foreign = {}
    world.step()
    ended = [e.message for e in world.last_plan.events  # type: ignore[union-attr]
             if e.reason == "ForeignGpuUseEnded"]
    assert ended == ["steam (pid 4242) no longer holds memory on dreamteam/0: its "
                     "reservation ended"]
    world.run_until(lambda: world.phase("fast") == "Ready")


def test_small_foreign_processes_count_without_an_event() -> None:
    world = seed_world()
    world.foreign = {"dreamteam/0": (ForeignProcess(300 * 1024**2, 1200, "Xorg"),)}
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert world.last_plan is not None and not world.last_plan.foreign
    assert world.last_plan.gpus[0].foreign_bytes == 300 * 1024**2


def test_a_scheduled_reservation_holds_in_its_window_and_waits_for_the_next() -> None:
    # 03:00-04:00 in Berlin is 02:00-03:00 UTC in December; the world starts at 02:00 UTC.
    evening = {"timeZone": "Europe/Berlin", "windows": [{"start": "03:00", "end": "04:00"}]}
    world = seed_world(reservation("game-night", wholeGpu=True, schedule=evening))
    world.run_until(lambda: status(world, "game-night").phase == "Running")
    assert status(world, "game-night").reason == (
        "holding the whole GPU (23.0 GiB) on dreamteam/0 until its window closes at "
        "2026-12-01 04:00 CET")
    world.now = START + datetime.timedelta(hours=1, seconds=1)
    world.run_until(lambda: world.phase("fast") == "Ready")
    game = status(world, "game-night")
    assert game.phase == "Queued", game
    assert game.reason == ("outside its window 03:00-04:00 Europe/Berlin; opens 2026-12-02 "
                           "03:00 CET")
    assert not game.preemptions


def test_memory_the_agent_cannot_attribute_counts_without_an_event() -> None:
    world = seed_world()
    world.foreign = {"dreamteam/0": (ForeignProcess(18 * GIB),)}
    world.step()
    assert world.last_plan is not None and not world.last_plan.foreign
    assert not [e for e in world.last_plan.events if e.reason.startswith("ForeignGpuUse")]
    world.run_until(lambda: world.phase("fast") == "Standby")
    fast = world.last_plan.slot("lab", "fast")
    assert fast.reason == "standby: the GPU is taken by processes outside hybrid-compute " \
                          "(18.0 GiB)"
