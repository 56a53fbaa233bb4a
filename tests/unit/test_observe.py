"""observe builds the whole View in one place: the API server's lists, then the GPU
agents' figures, the draining servers' answers and what the runtime heard."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import pytest

from hybrid_compute.api.modelslot import ModelSlotStatus
from hybrid_compute.control import observe as observe_module
from hybrid_compute.control.observe import Signals, observe
from hybrid_compute.control.telemetry import GpuTelemetry, HttpAgents
from hybrid_compute.plan.evaluation import EvaluationResult
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import RouterFetch, SlotActivity, SlotInfo, View
from tests.fake_nvml import GIB
from tests.simworld import SEED_SLOTS, START, dreamteam, slot
from tests.unit.test_gpu_telemetry import snapshot

SETTINGS = PlanSettings()
QUALITY = ("lab", "quality")


def test_one_call_fills_the_view_from_the_lists_and_every_signal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    draining = replace(slot("quality", SEED_SLOTS["quality"]),
                       status=ModelSlotStatus(phase="Draining"))
    listed = View(nodes=(dreamteam(),), slots=(slot("fast", SEED_SLOTS["fast"]), draining),
                  settings=SETTINGS)
    heard = {"fetched": START}

    def cluster_view(cache: Any, api: Any, settings: PlanSettings,
                     demands: dict[str, datetime.datetime],
                     spend: dict[tuple[str, str], float]) -> View:
        # A router fetches the state while the lists are read: this pass counts it.
        heard["fetched"] = START + datetime.timedelta(seconds=1)
        return replace(listed, demands=dict(demands), spend_reports=dict(spend))

    monkeypatch.setattr(observe_module, "cluster_view", cluster_view)
    telemetry = GpuTelemetry(HttpAgents([]))
    telemetry.snapshots = {"dreamteam": snapshot(used=3 * GIB)}
    asked: list[tuple[str, str]] = []
    evaluated: list[tuple[SlotInfo, ...]] = []
    result = EvaluationResult(model="q.gguf", criteria="", served_name="quality",
                              prompts=(), required=0, finished=START)

    def probe(urls: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], SlotActivity]:
        asked.extend(urls)
        return {key: SlotActivity(2) for key in urls}

    def unrecorded(slots: tuple[SlotInfo, ...]) -> dict[tuple[str, str], EvaluationResult]:
        evaluated.append(slots)
        return {QUALITY: result}

    fetch = RouterFetch(START, frozenset({QUALITY}))
    signals = Signals(demands={"local/fast": START}, spend_reports={("lab", "hybrid"): 1.5},
                      router_fetched_at=lambda: heard["fetched"],
                      router_fetches=lambda: {"router-a": fetch},
                      unrecorded_evaluations=unrecorded, telemetry=telemetry, probe=probe)
    view = asyncio.run(observe(cast(Any, None), cast(Any, None), SETTINGS, signals, START))
    assert view.demands == {"local/fast": START}
    assert view.spend_reports == {("lab", "hybrid"): 1.5}
    assert view.foreign_vram == {"dreamteam/0": 3 * GIB}
    assert asked == [QUALITY], "only the draining slot's server is asked"
    assert view.slot_activity == {QUALITY: SlotActivity(2)}
    assert view.router_fetched_at == START + datetime.timedelta(seconds=1)
    assert view.router_fetches == {"router-a": fetch}
    assert evaluated == [listed.slots] and view.evaluations == {QUALITY: result}
