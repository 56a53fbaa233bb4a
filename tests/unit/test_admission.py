"""GpuWorkload admission in the simulated cluster, step by step."""

from __future__ import annotations

import datetime

from tests.simworld import SEED_SLOTS, World, slot, workload

NIGHT = {"timeZone": "Pacific/Auckland", "windows": [{"start": "02:00", "end": "08:00"}]}
# 2026-12-01 12:30 UTC is 01:30 in Auckland (NZDT, +13): half an hour before the window.
BEFORE_WINDOW = datetime.datetime(2026, 12, 1, 12, 30, tzinfo=datetime.UTC)


INSIDE_WINDOW = BEFORE_WINDOW + datetime.timedelta(hours=1)


def night_world(now: datetime.datetime = BEFORE_WINDOW, step_seconds: float = 60,
                **workloads_spec) -> World:  # type: ignore[no-untyped-def]
    slots = [slot(n, s) for n, s in SEED_SLOTS.items() if n in ("fast", "quality")]
    jobs = [workload(name, spec) for name, spec in workloads_spec.items()]
    return World(slots, workloads=jobs, now=now, step_seconds=step_seconds)


def phase(world: World, name: str) -> str | None:
    return next(w.status.phase for w in world.workloads if w.name == name)


def reason(world: World, name: str) -> str | None:
    return next(w.status.reason for w in world.workloads if w.name == name)


def test_fine_tuning_waits_for_its_window_then_takes_the_idle_gpu() -> None:
    world = night_world(train={"class": "FineTuning", "vram": "22Gi", "schedule": NIGHT})
    world.step()
    assert phase(world, "train") == "Queued"
    assert reason(world, "train") == ("outside its window 02:00-08:00 Pacific/Auckland; "
                                      "opens 2026-12-02 02:00 NZDT")
    world.run_until(lambda: phase(world, "train") == "Running", limit=60)
    assert world.phase("fast") == "Standby"
    assert world.now >= datetime.datetime(2026, 12, 1, 13, 0, tzinfo=datetime.UTC)


def test_demand_preempts_and_idle_resumes() -> None:
    world = night_world(INSIDE_WINDOW, 10,
                        train={"class": "FineTuning", "vram": "22Gi", "schedule": NIGHT})
    world.run_until(lambda: phase(world, "train") == "Running", limit=60)
    world.demand("local/quality")
    world.step()
    assert phase(world, "train") == "Preempted"
    assert reason(world, "train") == "preempted by local/quality"
    world.run_until(lambda: world.phase("quality") == "Ready", limit=20)
    world.run_until(lambda: phase(world, "train") == "Running", limit=60)
    assert next(w.status.preemptions for w in world.workloads if w.name == "train") == 1


def test_non_preemptible_workload_makes_the_swap_wait() -> None:
    world = night_world(train={"class": "FineTuning", "vram": "22Gi", "preemptible": False})
    world.run_until(lambda: phase(world, "train") == "Running", limit=30)
    world.demand("local/quality")
    for _ in range(5):
        world.step()
    assert phase(world, "train") == "Running"
    assert world.phase("quality") == "Pending"
    quality = next(s for s in world.slots if s.name == "quality")
    assert "train" in (quality.status.reason or ""), quality.status.reason


def test_priority_order_and_the_mutex() -> None:
    world = night_world(
        render={"class": "ImageGeneration", "vram": "11Gi"},
        speech={"class": "TTS", "vram": "11Gi"},
    )
    world.run_until(lambda: phase(world, "speech") == "Running", limit=30)
    assert phase(world, "render") == "Queued"
    assert reason(world, "render").startswith("waiting for the GPU mutex: speech")


def test_embedding_workloads_run_on_cpu_beside_everything() -> None:
    world = night_world(vectors={"class": "Embedding", "vram": "1Gi"})
    world.run_until(lambda: phase(world, "vectors") == "Running", limit=10)
    assert world.phase("fast") == "Ready"
    assert all(p.info.gpus == 0 for p in world.pods if p.info.owner == "vectors")
