"""The small pure parts ``plan`` is built from: the memo, the ``status.gpu`` record,
where existing pods sit, and the rank order."""

from __future__ import annotations

import datetime
import gc
import weakref

from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.plan.ledger import Gpu, gpu_label, located_gpus, parse_gpu_ids
from hybrid_compute.plan.memo import IdentityCache, PlanMemo
from hybrid_compute.plan.outputs import ConditionUpdate
from hybrid_compute.plan.placement import Rank, Tier
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import GpuNode

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_identity_cache_computes_once_per_object_and_variant() -> None:
    cache: IdentityCache[str] = IdentityCache(limit=8)
    key = object()
    calls: list[str] = []

    def compute(value: str) -> str:
        calls.append(value)
        return value

    assert cache.get(key, 1, lambda: compute("a")) == "a"
    assert cache.get(key, 1, lambda: compute("b")) == "a"
    assert cache.get(key, 2, lambda: compute("c")) == "c"
    assert cache.get(object(), 2, lambda: compute("d")) == "d"
    assert calls == ["a", "c", "d"]


def test_identity_cache_is_bounded_and_keeps_its_keys_alive() -> None:
    class Key:
        pass

    cache: IdentityCache[int] = IdentityCache(limit=3)
    for value in range(10):
        cache.get(Key(), None, lambda v=value: v)
        assert len(cache) <= 4
    key = Key()
    alive = weakref.ref(key)
    cache.get(key, None, lambda: 1)
    del key
    gc.collect()
    # The entry holds its key, so no new object can take the key's id meanwhile.
    assert alive() is not None


def test_the_memo_renders_a_slot_template_once_per_spec_object() -> None:
    memo = PlanMemo()
    settings = PlanSettings()
    spec = ModelSlotSpec.model_validate({"alias": "local/a",
                                         "model": {"path": "a.gguf", "vram": "2Gi"}})
    first = memo.slot_template("a", spec, 2 * 1024**3, settings)
    assert memo.slot_template("a", spec, 2 * 1024**3, settings) is first
    assert memo.slot_template("a", spec, 3 * 1024**3, settings) is not first
    twin = spec.model_copy()
    assert memo.slot_template("a", twin, 2 * 1024**3, settings) == first


def test_status_gpu_round_trips() -> None:
    assert parse_gpu_ids(None) == []
    assert parse_gpu_ids("") == []
    assert parse_gpu_ids("n/0,n/1") == ["n/0", "n/1"]
    assert gpu_label(["n/0", "n/1"]) == "n/0,n/1"
    assert parse_gpu_ids(gpu_label(["a/3"])) == ["a/3"]


def _gpus() -> dict[str, Gpu]:
    nodes = [GpuNode("a", 2, 24 * 1024**3, 1, 2), GpuNode("b", 2, 24 * 1024**3, 1, 2)]
    return {gpu_id: Gpu(gpu_id, node, node.gpu_memory_bytes, exclusive=True)
            for node in nodes for gpu_id in node.gpu_ids()}


def test_located_gpus_trusts_the_record_on_the_nodes_of_the_pods() -> None:
    gpus = _gpus()
    assert located_gpus(gpus, "b/1", set(), 1) == ["b/1"]
    assert located_gpus(gpus, "b/1", {"b"}, 1) == ["b/1"]
    assert located_gpus(gpus, "gone/0,b/0", set(), 1) == ["b/0"]


def test_located_gpus_falls_back_to_the_node_of_the_pods() -> None:
    gpus = _gpus()
    assert located_gpus(gpus, "a/1", {"b"}, 1) == ["b/0"]
    assert located_gpus(gpus, None, {"b"}, 2) == ["b/0", "b/1"]
    assert located_gpus(gpus, None, set(), 1) == []


def test_rank_orders_by_tier_then_priority_then_residency_then_age() -> None:
    def rank(tier: Tier, priority: int, displaced: int, minutes: int, name: str) -> Rank:
        return Rank(tier, -priority, displaced, NOW + datetime.timedelta(minutes=minutes),
                    "ns", name)

    ranks = [rank(Tier.IDLE_DEFAULT, 900, 0, 0, "default"),
             rank(Tier.WORKLOAD, 100, 1, 0, "job"),
             rank(Tier.WANTED, 10, 1, 5, "newer"),
             rank(Tier.WANTED, 10, 1, 1, "older"),
             rank(Tier.WANTED, 10, 0, 9, "resident"),
             rank(Tier.WANTED, 50, 1, 9, "important"),
             rank(Tier.PINNED, 0, 0, 0, "pinned")]
    assert [r.name for r in sorted(ranks)] == [
        "pinned", "important", "resident", "older", "newer", "job", "default"]


def test_condition_update_has_fields_and_builds_positionally() -> None:
    update = ConditionUpdate("Ready", None, "Loading", "loading the model")
    assert (update.type, update.status, update.reason, update.message) == (
        "Ready", None, "Loading", "loading the model")
    kind, status, reason, message = update
    assert (kind, status, reason, message) == tuple(update)
