"""VRAM of slots without spec.model.vram: the GPU agent reads the model file's header
on the node, the plan estimates from it, records what the agent measures once the
slot is Ready, and prefers that measurement at the next load."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hybrid_compute.agent import models as agent_models
from hybrid_compute.agent.models import ModelFileRefused, ModelHeaders
from hybrid_compute.agent.nvml import ProcessMemory
from hybrid_compute.agent.server import AgentService, build_app
from hybrid_compute.agent.snapshot import GpuReader
from hybrid_compute.api.modelslot import ModelSlotSpec, ModelSlotStatus
from hybrid_compute.api.units import MIB, gib
from hybrid_compute.control.telemetry import GpuTelemetry, HttpAgents, measured_vram
from hybrid_compute.plan import model_vram, plan, vram
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import PodInfo, View
from tests.fake_nvml import GIB, FakeGpu, FakeNvml
from tests.simworld import START, World, dreamteam, slot
from tests.unit.test_vram import TinyModel

POD_UID = "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"


def estimated_slot(name: str = "fast", **extra: Any) -> dict[str, Any]:
    return {"alias": f"local/{name}", "model": {"path": "tiny.gguf"},
            "server": {"ctxSize": 4096, "parallel": 2, "flashAttn": True}, **extra}


def tiny_shape(tmp_path: Path) -> vram.ModelShape:
    return vram.read_shape(TinyModel().write(tmp_path / "tiny.gguf"))


# -- the agent's /gguf ----------------------------------------------------------------


def agent_with_models(root: Path) -> AgentService:
    nvml = FakeNvml([FakeGpu()])
    return AgentService(GpuReader("dreamteam", lambda: nvml), models=ModelHeaders(root))


def test_the_agent_serves_a_header_and_refuses_what_it_must_not_or_cannot_read(
        tmp_path: Path) -> None:
    TinyModel().write(tmp_path / "tiny.gguf")
    (tmp_path / "notes.gguf").write_text("not a model")
    (tmp_path.parent / "secret.gguf").write_text("outside")
    (tmp_path / "escape.gguf").symlink_to(tmp_path.parent / "secret.gguf")
    service = agent_with_models(tmp_path)

    async def exercise() -> dict[str, tuple[int, Any]]:
        answers: dict[str, tuple[int, Any]] = {}
        async with TestClient(TestServer(build_app(service))) as http:
            for label, query in {
                "model": {"path": "tiny.gguf", "hostPath": "/models"},
                "climbing": {"path": "../secret.gguf"},
                "symlink out": {"path": "escape.gguf"},
                "missing": {"path": "absent.gguf"},
                "not gguf": {"path": "notes.gguf"},
                "other folder": {"path": "tiny.gguf", "hostPath": "/srv/models"},
                "no path": {},
            }.items():
                response = await http.get("/gguf", params=query)
                answers[label] = (response.status, await response.json())
        return answers

    answers = asyncio.run(exercise())
    status, body = answers["model"]
    assert status == 200 and body["layers"] == 4 and body["kv_heads_per_layer"] == [2] * 4
    assert {label: status for label, (status, _body) in answers.items()} == {
        "model": 200, "climbing": 400, "symlink out": 400, "missing": 404, "not gguf": 422,
        "other folder": 404, "no path": 400}
    refusal = answers["not gguf"][1]["error"]
    assert "notes.gguf" in refusal and str(tmp_path) not in refusal, (
        f"the reason should name the file as the user knows it, not the agent's mount: "
        f"{refusal}")
    assert "/srv/models" in answers["other folder"][1]["error"]


def test_an_agent_without_a_model_folder_says_so() -> None:
    nvml = FakeNvml([FakeGpu()])
    service = AgentService(GpuReader("dreamteam", lambda: nvml))

    async def exercise() -> tuple[int, Any]:
        async with TestClient(TestServer(build_app(service))) as http:
            response = await http.get("/gguf", params={"path": "tiny.gguf"})
            return response.status, await response.json()

    status, body = asyncio.run(exercise())
    assert status == 404 and "--model-root" in body["error"]


def test_the_agent_reads_a_header_again_only_when_the_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Path] = []
    real_read = agent_models.read_shape

    def counting(path: Path) -> vram.ModelShape:
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(agent_models, "read_shape", counting)
    headers = ModelHeaders(tmp_path)
    TinyModel(layers=4).write(tmp_path / "tiny.gguf")
    assert headers.shape("tiny.gguf").layers == 4
    assert headers.shape("tiny.gguf").layers == 4
    assert len(reads) == 1, f"an unchanged file is read once, it was read {len(reads)} times"
    TinyModel(layers=6).write(tmp_path / "tiny.gguf")
    assert headers.shape("tiny.gguf").layers == 6 and len(reads) == 2


def test_a_file_that_is_not_gguf_is_a_reason_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    with pytest.raises(ModelFileRefused) as refused:
        ModelHeaders(tmp_path).shape("broken.gguf")
    assert refused.value.status == 422 and "broken.gguf" in refused.value.message


# -- the operator reads it through the telemetry poller -----------------------------


def test_the_poller_fetches_the_headers_the_view_needs_and_the_plan_estimates(
        tmp_path: Path) -> None:
    TinyModel().write(tmp_path / "tiny.gguf")
    service = agent_with_models(tmp_path)
    waiting = View(nodes=(dreamteam(),), slots=(
        slot("fast", estimated_slot()),
        slot("declared", estimated_slot("declared", model={"path": "d.gguf", "vram": "2Gi"})),
    ))

    async def exercise() -> View:
        async with TestServer(build_app(service)) as server:
            telemetry = GpuTelemetry(HttpAgents([str(server.make_url("/")).rstrip("/")]))
            telemetry.annotate(waiting, START)
            assert await telemetry.poll(["dreamteam"]), "a header that arrives is a change"
            assert not await telemetry.poll(["dreamteam"]), "the same header is no change"
            assert set(telemetry.headers) == {("/models", "tiny.gguf")}, (
                "only slots without spec.model.vram need a header")
            return telemetry.annotate(waiting, START)

    before = plan(waiting, START).slot("lab", "fast")
    assert before.phase == "Pending" and "waiting for the GPU agent" in before.reason
    assert dict(before.status)["conditions"][1]["status"] == "Unknown"
    decision = plan(asyncio.run(exercise()), START).slot("lab", "fast")
    expected = vram.estimate(tiny_shape(tmp_path),
                             model_vram.server_settings(ModelSlotSpec.model_validate(
                                 estimated_slot())))
    assert decision.phase == "Loading" and decision.vram == expected.total
    assert decision.status["vramSource"] == "Estimated"
    assert "estimated from the model file's header" in decision.reason


@pytest.mark.parametrize(("header", "spec", "expected"), [
    ("tiny.gguf: not a readable GGUF file (bad magic)", estimated_slot(),
     "cannot be estimated: tiny.gguf: not a readable GGUF file"),
    (None, estimated_slot(model={"path": "tiny.gguf", "persistentVolumeClaim": "models"}),
     "PersistentVolumeClaim cannot be estimated: set spec.model.vram"),
])
def test_a_slot_whose_model_cannot_be_estimated_waits_and_says_why(
        header: str | None, spec: dict[str, Any], expected: str) -> None:
    headers = {("/models", "tiny.gguf"): header} if header else {}
    view = View(nodes=(dreamteam(),), slots=(slot("fast", spec),), model_headers=headers)
    decision = plan(view, START).slot("lab", "fast")
    assert decision.phase == "Pending" and decision.replicas == 0
    assert expected in decision.reason, decision.reason


def test_cache_types_micro_batch_and_flash_attention_come_from_extra_args() -> None:
    spec = ModelSlotSpec.model_validate(estimated_slot(server={
        "ctxSize": 2048, "extraArgs": ["--cache-type-k", "q8_0", "-ctv=q4_0", "-fa", "on",
                                       "-ub", "256"]}))
    assert model_vram.server_settings(spec) == vram.ServerSettings(
        ctx_size=2048, parallel=1, flash_attn=True, cache_type_k="q8_0", cache_type_v="q4_0",
        ubatch_size=256)


def test_a_measurement_is_stale_once_the_server_flags_change() -> None:
    settings = PlanSettings()
    spec = ModelSlotSpec.model_validate(estimated_slot())
    status = ModelSlotStatus(measured_vram="6144Mi",
                             measured_vram_for=model_vram.server_fingerprint(spec, settings))
    assert model_vram.measured_bytes(spec, status, settings) == 6 * GIB
    longer = spec.model_copy(update={"server": spec.server.model_copy(
        update={"ctx_size": 16384})})
    assert model_vram.measured_bytes(longer, status, settings) is None


def test_memory_is_measured_for_ready_pods_the_agent_matched() -> None:
    cgroups = {41: f"0::/kubepods/pod{POD_UID}/abc", 42: "0::/user.slice"}
    nvml = FakeNvml([FakeGpu(used_bytes=9 * GIB, processes=[
        ProcessMemory(41, 6 * GIB), ProcessMemory(42, 3 * GIB)])])
    reading = GpuReader("dreamteam", lambda: nvml, cgroups.get, clock=lambda: START).read()
    pod = PodInfo("fast-1", "lab", "fast", "dreamteam", 7 * GIB, 1, "h", True, False,
                  "Running", uid=POD_UID)
    assert measured_vram([reading], View(pods=(pod,))) == {("lab", "fast"): 6 * GIB}
    loading = replace(pod, ready=False)
    assert measured_vram([reading], View(pods=(loading,))) == {}, (
        "a pod still loading holds less than it will")


# -- estimated, then measured, across loads -------------------------------------------


@dataclass
class MeasuredWorld(World):
    """The simulated cluster with an agent that read the model header and sees every
    ready slot pod hold ``held_by_pod`` bytes."""

    headers: dict[tuple[str, str], vram.ModelShape | str] = field(default_factory=dict)
    held_by_pod: int = 0

    def view(self) -> View:
        measured = {(p.info.namespace, p.info.owner): self.held_by_pod for p in self.pods
                    if p.info.ready and p.info.kind == "ModelSlot" and self.held_by_pod}
        return replace(super().view(), model_headers=self.headers, measured_vram=measured)


def on_demand_world(tmp_path: Path, spec: dict[str, Any]) -> MeasuredWorld:
    return MeasuredWorld([slot("fast", spec)],
                         headers={("/models", "tiny.gguf"): tiny_shape(tmp_path)},
                         held_by_pod=6 * GIB)


def load(world: MeasuredWorld) -> None:
    world.demand("local/fast")
    world.run_until(lambda: world.phase("fast") == "Ready")


def unload(world: MeasuredWorld) -> None:
    world.now += datetime.timedelta(minutes=10)  # past idleTimeout and minimum residency
    world.run_until(lambda: world.phase("fast") == "Standby")


def test_an_estimated_slot_records_its_measured_memory_and_loads_with_it_next_time(
        tmp_path: Path) -> None:
    world = on_demand_world(tmp_path, estimated_slot(activation="OnDemand", idleTimeout="5m"))
    load(world)
    first_pods = {p.info.name for p in world.pods}
    estimate = world.deployments[("lab", "fast")].vram_bytes
    world.run_until(lambda: world.slots[0].status.measured_vram is not None)
    status = world.slots[0].status
    assert status.measured_vram == "6144Mi" and status.vram_source == "Estimated"
    world.step()
    assert {p.info.name for p in world.pods if not p.info.terminating} == first_pods, (
        "recording a measurement must not reload the model")
    assert world.deployments[("lab", "fast")].vram_bytes == estimate

    unload(world)
    load(world)
    reloaded = world.last_plan
    assert reloaded is not None
    decision = reloaded.slot("lab", "fast")
    assert decision.vram == 6 * GIB and world.slots[0].status.vram_source == "Measured"
    assert world.slots[0].status.vram == gib(6 * GIB)
    assert "as measured by the GPU agent" in decision.reason


def test_spec_vram_wins_over_a_measurement_which_is_still_recorded(tmp_path: Path) -> None:
    spec = estimated_slot(activation="OnDemand", idleTimeout="5m",
                          model={"path": "tiny.gguf", "vram": "4Gi"})
    world = on_demand_world(tmp_path, spec)
    load(world)
    world.run_until(lambda: world.slots[0].status.measured_vram is not None)
    unload(world)
    load(world)
    status = world.slots[0].status
    assert status.vram_source == "Spec" and status.vram == gib(4 * GIB)
    assert status.measured_vram == f"{6 * GIB // MIB}Mi"
