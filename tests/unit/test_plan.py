"""The GPU plan on the seed's setup: residency, swaps, idle return, limits."""

from __future__ import annotations

import datetime
from dataclasses import replace

from hybrid_compute.plan import plan
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import View
from tests.simworld import SEED_SLOTS, START, World, dreamteam, dual_node, slot


def seed_world(**kwargs) -> World:  # type: ignore[no-untyped-def]
    return World([slot(name, spec) for name, spec in SEED_SLOTS.items()], **kwargs)


def test_seed_slots_settle_with_fast_on_gpu_and_embed_on_cpu() -> None:
    world = seed_world()
    world.run_until(lambda: world.phase("fast") == "Ready" and world.phase("embed") == "Ready")
    assert world.phase("quality") == "Standby"
    assert world.phase("quality-alt") == "Standby"
    decisions = {d.name: d for d in world.last_plan.slots}  # type: ignore[union-attr]
    assert decisions["fast"].replicas == 1 and decisions["fast"].gpu == "dreamteam/0"
    assert decisions["quality"].replicas == 0
    assert decisions["embed"].replicas == 1 and decisions["embed"].gpu is None


def test_demand_swaps_quality_in_break_before_make_and_idles_back() -> None:
    world = seed_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)  # past fast's minimum residency
    world.demand("local/quality")
    world.step()
    assert world.phase("fast") == "Unloading"
    assert world.phase("quality") == "Loading"
    assert not [p for p in world.pods if p.info.owner == "quality"], \
        "quality's pod was created while fast still held the GPU"
    world.run_until(lambda: world.phase("quality") == "Ready")
    assert world.phase("fast") == "Standby"
    status = next(s.status for s in world.slots if s.name == "quality")
    assert status.swaps == 1 and status.last_swap_seconds and status.last_swap_seconds > 0
    swapped = [e for e in world.last_plan.events if e.reason == "Swapped"]  # type: ignore[union-attr]
    assert swapped and "evicting local/fast" in swapped[0].message

    world.now += datetime.timedelta(minutes=6)  # idleTimeout 5m without a request
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert world.phase("quality") == "Standby"


def test_requests_keep_an_on_demand_slot_loaded() -> None:
    world = seed_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    for _ in range(8):
        world.now += datetime.timedelta(minutes=1)
        world.demand("local/quality")
        world.step()
        assert world.phase("quality") == "Ready"


def test_minimum_residency_defers_a_swap() -> None:
    world = seed_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.demand("local/quality")
    world.step()
    assert world.phase("fast") == "Ready", "fast was evicted inside its minimum residency"
    assert world.phase("quality") == "Pending"
    world.now += datetime.timedelta(seconds=31)
    world.run_until(lambda: world.phase("quality") == "Ready")


def test_oversized_slot_is_unschedulable_with_numbers_and_others_keep_working() -> None:
    slots = [slot(n, s) for n, s in SEED_SLOTS.items()]
    slots.append(slot("huge", {"alias": "local/huge", "model": {"path": "h.gguf",
                                                                 "vram": "26Gi"},
                               "activation": "Always"}))
    world = World(slots)
    world.run_until(lambda: world.phase("fast") == "Ready")
    decision = world.last_plan.slot("lab", "huge")  # type: ignore[union-attr]
    assert decision.phase == "Unschedulable"
    assert decision.reason == "needs 26.0 GiB, dreamteam/0 offers 23.0 GiB"
    assert decision.replicas == 0


def test_two_gpu_slot_needs_whole_devices() -> None:
    big = {"alias": "local/70b", "model": {"path": "l.gguf", "vram": "40Gi"}, "gpus": 2}
    on_time_sliced = plan(View(nodes=(dreamteam(),), slots=(slot("big", big),)), START)
    assert on_time_sliced.slot("lab", "big").phase == "Unschedulable"
    from tests.simworld import dual_node
    world = World([slot("big", big)], nodes=[dual_node()])
    world.run_until(lambda: world.phase("big") == "Ready")
    assert world.last_plan.slot("lab", "big").gpu == "dual/0,dual/1"  # type: ignore[union-attr]


def test_model_change_unloads_before_loading_the_new_model() -> None:
    world = seed_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    old = next(p for p in world.pods if p.info.owner == "fast").info.template_hash
    changed = {**SEED_SLOTS["fast"], "model": {"path": "fast-v2.gguf", "vram": "8Gi"}}
    world.slots = [replace(s, spec=slot("fast", changed).spec, generation=2)
                   if s.name == "fast" else s for s in world.slots]
    world.run_until(lambda: world.phase("fast") == "Ready"
                    and all(p.info.template_hash != old for p in world.pods
                            if p.info.owner == "fast"))
    assert [p.info.vram_bytes for p in world.pods if p.info.owner == "fast"] == [8 * 1024**3]


def test_invalid_slot_fails_without_touching_others() -> None:
    from hybrid_compute.plan.view import SlotInfo
    broken = SlotInfo("lab", "broken", "uid-b", 1, None, invalid_reason="spec.alias: missing")
    result = plan(View(nodes=(dreamteam(),), slots=(broken, slot("fast", SEED_SLOTS["fast"]))),
                  START)
    assert result.slot("lab", "broken").phase == "Failed"
    assert result.slot("lab", "broken").deployment is None
    assert result.slot("lab", "fast").replicas == 1


def test_unloading_slot_keeps_its_device_on_record_on_a_whole_gpu_node() -> None:
    """Regression: a slot unloading from the second device of a two-GPU node was
    counted on the first, and the default slot started beside it."""
    from tests.simworld import dual_node
    specs = {
        "default": {"alias": "local/default", "model": {"path": "d.gguf", "vram": "7Gi"},
                    "default": True},
        "s0": {"alias": "local/s0", "model": {"path": "s0.gguf", "vram": "18Gi"}},
        "s1": {"alias": "local/s1", "model": {"path": "s1.gguf", "vram": "18Gi"}},
        "s2": {"alias": "local/s2", "model": {"path": "s2.gguf", "vram": "22Gi"},
               "activation": "OnDemand", "idleTimeout": "5s"},
    }
    world = World([slot(n, s) for n, s in specs.items()], nodes=[dreamteam(), dual_node()],
                  load_steps=0, terminate_steps=2)
    world.demand("local/s2")
    for _ in range(60):
        world.step()
        world.check_budget()
    assert world.phase("s2") == "Standby"


def test_gpu_pods_get_the_configured_runtime_class() -> None:
    from hybrid_compute.render.children import workload_template
    from tests.simworld import workload

    world = seed_world(settings=PlanSettings(gpu_runtime_class="nvidia"))
    world.run_until(lambda: world.phase("fast") == "Ready")
    decisions = {d.name: d for d in world.last_plan.slots}  # type: ignore[union-attr]
    assert decisions["fast"].deployment["spec"]["template"]["spec"]["runtimeClassName"] \
        == "nvidia"  # type: ignore[index]
    assert "runtimeClassName" not in \
        decisions["embed"].deployment["spec"]["template"]["spec"]  # type: ignore[index]
    tts = workload("tts", {"class": "TTS", "vram": "4Gi"}).spec
    assert tts is not None
    assert workload_template("tts", tts, "nvidia")["spec"]["runtimeClassName"] == "nvidia"
    own = workload("own", {"class": "TTS", "vram": "4Gi", "template": {"spec": {
        "runtimeClassName": "custom", "containers": [{"name": "main", "image": "w"}]}}}).spec
    assert own is not None
    assert workload_template("own", own, "nvidia")["spec"]["runtimeClassName"] == "custom"


def test_a_slot_moved_to_another_gpu_keeps_its_old_pods_counted_where_they_are() -> None:
    # Found by the property test: s0 is evicted from dual/0 by s2, then placed on
    # dual/1 while its old pod still terminates on dual/0. Recording dual/1 at once
    # made dual/0 look free, and s2 started beside the Terminating pod.
    specs = {
        "default": {"alias": "local/default", "model": {"path": "d.gguf", "vram": "4Gi"},
                    "default": True},
        "s0": {"alias": "local/s0", "model": {"path": "s0.gguf", "vram": "14Gi"},
               "activation": "OnDemand", "idleTimeout": "5s", "priority": 0},
        "s1": {"alias": "local/s1", "model": {"path": "s1.gguf", "vram": "10Gi"},
               "priority": 1},
        "s2": {"alias": "local/s2", "model": {"path": "s2.gguf", "vram": "14Gi"},
               "activation": "OnDemand", "idleTimeout": "5s", "priority": 1},
        "s3": {"alias": "local/s3", "model": {"path": "s3.gguf", "vram": "14Gi"},
               "priority": 0},
    }
    world = World([slot(name, spec) for name, spec in specs.items()],
                  nodes=[dreamteam(), dual_node()], load_steps=0, terminate_steps=3)
    for tick in range(12):
        if tick == 0:
            world.demand("local/s0")
        if tick == 1:
            world.demand("local/s2")
        world.step()
        world.check_budget()


def test_a_short_idle_timeout_counts_from_when_the_swapped_in_slot_is_ready() -> None:
    """Regression: one request for a slot with idleTimeout 1s expired while the
    outgoing slot drained and terminated, and the swap was abandoned."""
    specs = {**SEED_SLOTS, "quality": {**SEED_SLOTS["quality"], "idleTimeout": "1s"}}
    world = World([slot(name, spec) for name, spec in specs.items()],
                  terminate_steps=4, load_steps=3)
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)  # past fast's minimum residency
    world.demand("local/quality")
    asked = world.now
    world.run_until(lambda: world.phase("quality") == "Ready")
    assert world.now - asked > datetime.timedelta(seconds=5), "the swap was not slow"
    status = next(s.status for s in world.slots if s.name == "quality")
    assert status.ready_since is not None
    # Served from then on, and idle one second later: the GPU goes back to fast.
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert world.phase("quality") == "Standby"
    assert world.now - status.ready_since < datetime.timedelta(seconds=60)


def test_a_request_for_a_slot_that_never_gets_room_expires() -> None:
    """The request also covers the swap, but not for ever: twice the default swap
    time, then the idle timeout."""
    specs = {"fast": {**SEED_SLOTS["fast"]},
             "pinned": {"alias": "local/pinned", "model": {"path": "p.gguf", "vram": "20Gi"},
                        "activation": "Always", "priority": 900},
             "quality": {**SEED_SLOTS["quality"], "idleTimeout": "1s", "priority": 0}}
    world = World([slot(name, spec) for name, spec in specs.items()])
    world.run_until(lambda: world.phase("pinned") == "Ready")
    world.demand("local/quality")
    world.step()
    assert world.phase("quality") == "Pending"
    world.now += datetime.timedelta(seconds=62)  # 2 x 30 s + 1 s later
    world.step()
    assert world.phase("quality") == "Standby"


def test_a_slot_that_idled_out_after_serving_does_not_come_back_by_itself() -> None:
    """The swap allowance covers a request only until the slot has served: once it
    idles out and unloads, the same old request does not swap it back in."""
    specs = {**SEED_SLOTS, "quality": {**SEED_SLOTS["quality"], "idleTimeout": "1s",
                                       "minResidency": "0s"}}
    world = World([slot(name, spec) for name, spec in specs.items()], terminate_steps=3)
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    seen = []
    for _ in range(30):
        world.step()
        seen.append(world.phase("quality"))
    assert "Loading" not in seen, seen
    assert (world.phase("quality"), world.phase("fast")) == ("Standby", "Ready")


def test_a_request_the_slot_answered_does_not_bring_it_back_after_it_idles_out() -> None:
    """Regression (seen on the process node): a request that came while the slot was
    Ready counted, once the slot's pod was terminating, as one still waiting for a
    swap, so the slot was loaded again at once and held the GPU for another idle
    timeout."""
    specs = {**SEED_SLOTS, "quality": {**SEED_SLOTS["quality"], "idleTimeout": "1s",
                                       "minResidency": "0s"}}
    world = World([slot(name, spec) for name, spec in specs.items()], terminate_steps=3)
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    world.now += datetime.timedelta(milliseconds=500)
    world.demand("local/quality")  # answered by the Ready slot
    seen = []
    for _ in range(30):
        world.step()
        seen.append(world.phase("quality"))
    assert "Loading" not in seen, seen
    assert (world.phase("quality"), world.phase("fast")) == ("Standby", "Ready")
    status = next(s.status for s in world.slots if s.name == "quality")
    assert status.served_until is not None and status.ready_since is not None
    assert status.ready_since <= status.served_until
    # A request after it stopped serving is a new one: it swaps the slot back in
    # (once fast's minimum residency is over).
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")


def test_an_idle_slot_draining_stays_drained_until_it_unloads() -> None:
    """Regression: a Draining slot's idle clock restarted, so it flapped between
    Ready and Draining while the slot waiting for its GPU never loaded."""
    specs = {**SEED_SLOTS, "quality": {**SEED_SLOTS["quality"], "idleTimeout": "1s",
                                       "minResidency": "0s"}}
    world = World([slot(name, spec) for name, spec in specs.items()])
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    world.run_until(lambda: world.phase("quality") == "Ready")
    world.in_flight["quality"] = 1  # a long answer keeps it draining
    world.run_until(lambda: world.phase("quality") == "Draining")
    phases = []
    for _ in range(5):
        world.step()
        phases.append(world.phase("quality"))
    assert phases == ["Draining"] * 5, phases
    world.in_flight["quality"] = 0
    world.run_until(lambda: world.phase("fast") == "Ready")
    assert world.phase("quality") == "Standby"
