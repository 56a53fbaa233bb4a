"""Prompt caches kept across swaps: the pure decisions (what a slot saves before it
is unloaded, what it restores once loaded, what the folder keeps within its budget)
and how the plan records what the runtime did."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from hybrid_compute.api.modelslot import ModelSlotSpec, PromptCacheFile, PromptCacheStatus
from hybrid_compute.control import prompt_cache as prompt_cache_io
from hybrid_compute.plan import prompt_cache
from hybrid_compute.plan.prompt_cache import (
    PromptCacheOutcomes,
    RestoreOutcome,
    RestoreRequest,
    SaveOutcome,
    SaveRequest,
)
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.render import children
from tests.http_stub import StubHandler, StubServer
from tests.simworld import SEED_SLOTS, START, World, slot

SETTINGS = PlanSettings()
GIB = 1 << 30


def spec(**server: Any) -> ModelSlotSpec:
    return ModelSlotSpec.model_validate({
        "alias": "local/fast", "model": {"path": "fast.gguf", "vram": "7Gi"},
        "server": {"promptCache": {"enabled": True, "maxSize": "1Gi"}, **server}})


def cache_file(name: str, seconds: int, size: int, key: str = "k", sequence: int = 0,
               tokens: int = 100) -> PromptCacheFile:
    return PromptCacheFile(name=name, sequence=sequence, key=key, model="m", tokens=tokens,
                           bytes=size, saved_at=START + datetime.timedelta(seconds=seconds))


def test_the_cache_key_follows_the_model_file_and_the_flags_that_shape_the_cache() -> None:
    base = prompt_cache.cache_key(spec(), SETTINGS)
    changed = {
        "model file": spec().model_copy(update={"model": spec().model.model_copy(
            update={"path": "other.gguf"})}),
        "ctx size": spec(ctxSize=4096),
        "parallel": spec(parallel=2),
        "flash attention": spec(flashAttn=True),
        "cache type": spec(extraArgs=["--cache-type-k", "q8_0"]),
        "image": spec(image="ghcr.io/ggml-org/llama.cpp:server-cuda-b9999"),
    }
    for what, other in changed.items():
        assert prompt_cache.cache_key(other, SETTINGS) != base, f"{what} kept the key"
    same = spec(threads=4).model_copy(update={"priority": 300, "alias": "local/other"})
    assert prompt_cache.cache_key(same, SETTINGS) == base


def test_the_model_fingerprint_tells_model_files_and_contexts_apart() -> None:
    meta = {"vocab_type": 1, "n_vocab": 259, "n_ctx": 8192, "n_ctx_train": 8192,
            "n_embd": 512, "n_params": 12_000_000, "size": 50_000_000, "ftype": 0}
    fingerprint = prompt_cache.model_fingerprint(meta)
    assert prompt_cache.model_fingerprint({**meta, "unrelated": 1}) == fingerprint
    assert prompt_cache.model_fingerprint({**meta, "size": 50_000_001}) != fingerprint
    assert prompt_cache.model_fingerprint({**meta, "n_ctx": 4096}) != fingerprint


def test_a_slot_saves_one_file_per_sequence_and_only_with_the_prompt_cache_on() -> None:
    off = spec(promptCache={"enabled": False})
    assert prompt_cache.save_request("lab", "fast", off, None, SETTINGS, "node") is None
    request = prompt_cache.save_request("lab", "fast", spec(parallel=2), None, SETTINGS,
                                        "node")
    assert request is not None
    key = prompt_cache.cache_key(spec(parallel=2), SETTINGS)
    assert request.files == ((0, f"lab.fast.{key}.0.bin"), (1, f"lab.fast.{key}.1.bin"))
    assert request.budget_bytes == GIB
    assert request.endpoint == children.endpoint("lab", "fast", 8080)
    held = PromptCacheStatus(node="node", files=[cache_file("old", 0, 10)])
    assert prompt_cache.save_request("lab", "fast", spec(), held, SETTINGS,
                                     "node").recorded == tuple(held.files)  # type: ignore[union-attr]
    moved = prompt_cache.save_request("lab", "fast", spec(), held, SETTINGS, "elsewhere")
    assert moved is not None and moved.recorded == (), "files on another node were counted"


def test_a_slot_restores_only_caches_of_its_key_saved_on_its_node() -> None:
    key = prompt_cache.cache_key(spec(), SETTINGS)
    record = PromptCacheStatus(node="node", files=[
        cache_file("mine", 1, 10, key=key),
        cache_file("other model or flags", 2, 10, key="another"),
        cache_file("empty", 3, 10, key=key, sequence=0, tokens=0),
        cache_file("beyond parallel", 4, 10, key=key, sequence=3)])
    request = prompt_cache.restore_request("lab", "fast", spec(), record, SETTINGS, "node")
    assert request is not None
    assert [f.name for f in request.files] == ["mine"]
    assert prompt_cache.restore_request("lab", "fast", spec(), record, SETTINGS,
                                        "elsewhere") is None
    assert prompt_cache.restore_request("lab", "fast", spec(ctxSize=4096), record, SETTINGS,
                                        "node") is None
    assert prompt_cache.restore_request("lab", "fast", spec(promptCache={"enabled": False}),
                                        record, SETTINGS, "node") is None
    assert prompt_cache.refusal(record.files[0], "m") is None
    assert "model file differs" in (prompt_cache.refusal(record.files[0], "changed") or "")


def test_the_folder_keeps_the_newest_files_within_the_budget() -> None:
    files = [cache_file("a", 1, 400), cache_file("b", 2, 400), cache_file("c", 3, 400)]
    kept, evicted = prompt_cache.within_budget(files, 1000)
    assert [f.name for f in kept] == ["b", "c"]
    assert [f.name for f in evicted] == ["a"]
    kept, evicted = prompt_cache.within_budget([*files, cache_file("huge", 4, 2000)], 1000)
    assert [f.name for f in kept] == ["b", "c"], "a file over the whole budget was kept"
    assert [f.name for f in evicted] == ["a", "huge"]
    resaved = prompt_cache.merged(files, [cache_file("a", 5, 300)])
    assert [(f.name, f.bytes) for f in resaved] == [("b", 400), ("c", 400), ("a", 300)]


def _save(at: int, saved: tuple[PromptCacheFile, ...], failures: tuple[str, ...] = ()
          ) -> SaveOutcome:
    request = SaveRequest("lab", "fast", "http://x/v1", "node", "k", ((0, "f"),), (), GIB)
    return SaveOutcome(request, START + datetime.timedelta(seconds=at), 0.1, saved, saved,
                       ("gone",), failures)


def _restore(at: int, restored: tuple[PromptCacheFile, ...],
             failed: tuple[PromptCacheFile, ...] = ()) -> RestoreOutcome:
    request = RestoreRequest("lab", "fast", "http://x/v1", (*restored, *failed))
    return RestoreOutcome(request, START + datetime.timedelta(seconds=at), 0.2,
                          tuple((f, f.tokens) for f in restored),
                          tuple((f, "HTTP 400: invalid slot save file") for f in failed))


def test_outcomes_are_recorded_once_and_a_failed_restore_warns_and_drops_the_file() -> None:
    good, bad = cache_file("good", 1, 10), cache_file("bad", 1, 10, sequence=1)
    status, events = prompt_cache.record("lab", "fast", "local/fast", None,
                                         PromptCacheOutcomes(_save(1, (good, bad))))
    assert status is not None and status.node == "node"
    assert [f.name for f in status.files] == ["good", "bad"]
    assert status.last_save is not None and (status.last_save.files, status.last_save.bytes,
                                             status.last_save.evicted) == (2, 20, 1)
    assert events == []
    outcomes = PromptCacheOutcomes(_save(1, (good, bad)), _restore(9, (good,), (bad,)))
    status, events = prompt_cache.record("lab", "fast", "local/fast", status, outcomes)
    assert status is not None and [f.name for f in status.files] == ["good"]
    assert status.last_restore is not None
    assert (status.last_restore.files, status.last_restore.tokens) == (1, 100)
    assert status.last_restore.failed == [
        "sequence 1 (bad): HTTP 400: invalid slot save file"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "PromptCacheRestoreFailed")]
    assert "serves without them" in events[0].message
    again, events = prompt_cache.record("lab", "fast", "local/fast", status, outcomes)
    assert again == status and events == [], "an outcome was recorded twice"
    fake_slot_status = slot("fast", SEED_SLOTS["fast"]).status.model_copy(
        update={"prompt_cache": status})
    assert outcomes.recorded_in(fake_slot_status)


def test_a_failed_save_is_a_warning() -> None:
    _, events = prompt_cache.record("lab", "fast", "local/fast", None, PromptCacheOutcomes(
        _save(1, (), ("sequence 0: HTTP 500: could not open file",))))
    assert [(e.type, e.reason) for e in events] == [("Warning", "PromptCacheSaveFailed")]


# ------------------------------------------------------------------ in the plan


def cached_world() -> World:
    fast = {**SEED_SLOTS["fast"], "server": {"promptCache": {"enabled": True}}}
    return World([slot("fast", fast), slot("quality", SEED_SLOTS["quality"])])


def test_a_drained_slot_saves_in_the_pass_that_scales_it_down() -> None:
    world = cached_world()
    world.run_until(lambda: world.phase("fast") == "Ready")
    world.now += datetime.timedelta(minutes=1)
    world.demand("local/quality")
    saves: list[SaveRequest] = []
    for _ in range(10):
        result = world.step()
        decision = result.slot("lab", "fast")
        if decision.cache_save is not None:
            saves.append(decision.cache_save)
            assert decision.phase == "Unloading" and decision.replicas == 0
    assert len(saves) == 1, "the caches were not saved exactly once"
    assert saves[0].node == "dreamteam"
    assert saves[0].files[0][1].startswith("lab.fast.")


@pytest.mark.parametrize("saved_key", ["current", "another"])
def test_a_slot_loaded_again_restores_its_caches_in_the_pass_it_turns_ready(
        saved_key: str) -> None:
    world = cached_world()
    fast = world.slots[0]
    assert fast.spec is not None
    key = prompt_cache.cache_key(fast.spec, world.settings) if saved_key == "current" \
        else "another"
    world.slots[0] = fast.__class__(
        fast.namespace, fast.name, fast.uid, fast.generation, fast.spec,
        fast.status.model_copy(update={"prompt_cache": PromptCacheStatus(
            node="dreamteam", files=[cache_file("f", 0, 10, key=key)])}))
    restores = []
    for _ in range(10):
        result = world.step()
        decision = result.slot("lab", "fast")
        if decision.cache_restore is not None:
            assert decision.phase == "Ready"
            restores.append(decision.cache_restore)
    if saved_key == "current":
        assert [[f.name for f in r.files] for r in restores] == [["f"]]
    else:
        assert restores == [], "a cache for another model or flags was restored"


# ------------------------------------------------------------------ the HTTP calls


class StubLlamaServer(StubHandler):
    """llama-server's slot save and restore, recording each call; ``files`` is its
    --slot-save-path (name -> tokens), ``model`` what /v1/models says."""

    files: ClassVar[dict[str, int]] = {}
    tokens = 120
    model: ClassVar[dict[str, Any]] = {"n_params": 1, "size": 2, "n_ctx": 4096}
    calls: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        assert self.path == "/v1/models"
        self.send_json(200, {"data": [{"id": "m", "meta": self.model}]})

    def do_POST(self) -> None:
        body = json.loads(self.read_body() or b"{}")
        sequence, _, action = self.path.removeprefix("/slots/").partition("?action=")
        type(self).calls.append(f"{action} {sequence} {body.get('filename', '')}".strip())
        name = body.get("filename")
        if action == "save":
            self.files[name] = self.tokens
            self.send_json(200, {"n_saved": self.tokens, "n_written": self.tokens * 100})
        elif action == "erase":
            type(self).tokens = 0
            self.send_json(200, {"n_erased": 1})
        elif self.files.get(name) is None:
            self.send_json(400, {"error": {"message": "Unable to restore slot: invalid file"}})
        else:
            self.send_json(200, {"n_restored": self.files[name], "n_read": 1})


@pytest.fixture
def llama() -> Iterator[str]:
    StubLlamaServer.files, StubLlamaServer.calls, StubLlamaServer.tokens = {}, [], 120
    with StubServer(StubLlamaServer) as server:
        yield f"{server.url}/v1"


def test_a_save_writes_each_sequence_and_empties_what_the_budget_evicts(llama: str) -> None:
    model = prompt_cache.model_fingerprint(StubLlamaServer.model)
    old = PromptCacheFile(name="old", sequence=0, key="k0", model=model, tokens=50,
                          bytes=9000, saved_at=START)
    request = SaveRequest("lab", "fast", llama, "node", "k", ((0, "a.bin"), (1, "b.bin")),
                          (old,), 30_000)
    outcome = prompt_cache_io.save(request, lambda: START + datetime.timedelta(seconds=1))
    assert [(f.name, f.tokens, f.bytes, f.model) for f in outcome.saved] == [
        ("a.bin", 120, 12_000, model), ("b.bin", 120, 12_000, model)]
    assert outcome.evicted == ("old",) and [f.name for f in outcome.kept] == ["a.bin", "b.bin"]
    assert StubLlamaServer.calls == ["save 0 a.bin", "save 1 b.bin", "erase 0",
                                     "save 0 old"], "the evicted file was not emptied last"
    assert outcome.failures == ()


def test_a_restore_refuses_another_model_and_reports_a_corrupt_file(llama: str) -> None:
    model = prompt_cache.model_fingerprint(StubLlamaServer.model)
    StubLlamaServer.files = {"good.bin": 300}
    good = PromptCacheFile(name="good.bin", sequence=0, key="k", model=model, tokens=300,
                           bytes=1, saved_at=START)
    corrupt = good.model_copy(update={"name": "corrupt.bin", "sequence": 1})
    changed = good.model_copy(update={"name": "changed.bin", "sequence": 2, "model": "other"})
    outcome = prompt_cache_io.restore(RestoreRequest("lab", "fast", llama,
                                                     (good, corrupt, changed)), lambda: START)
    assert [(f.name, tokens) for f, tokens in outcome.restored] == [("good.bin", 300)]
    assert [(f.name, why) for f, why in outcome.failures] == [
        ("corrupt.bin", "HTTP 400: Unable to restore slot: invalid file"),
        ("changed.bin", "the model file differs from the one the cache was saved with")]
    assert "restore 2 changed.bin" not in StubLlamaServer.calls, "a refused cache was sent"


def test_a_server_that_cannot_be_reached_fails_the_save_without_raising() -> None:
    request = SaveRequest("lab", "fast", "http://127.0.0.1:1/v1", "node", "k",
                          ((0, "a.bin"),), (), GIB)
    outcome = prompt_cache_io.save(request, lambda: START)
    assert outcome.saved == () and outcome.failures
    assert "describing the model" in outcome.failures[0]
