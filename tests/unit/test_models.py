"""The pydantic models accept the samples and refuse what the CRDs refuse."""

from __future__ import annotations

import datetime

import pytest
from pydantic import ValidationError

from hybrid_compute.api import GpuWorkloadSpec, ModelSlotSpec, RoutePolicySpec
from hybrid_compute.api.common import parse_bytes, parse_duration
from hybrid_compute.api.gpuworkload import CLASS_PRIORITY
from hybrid_compute.dev.bootstrap import sample_manifests
from tests.conftest import REPOSITORY_ROOT

SPEC_MODELS = {"ModelSlot": ModelSlotSpec, "RoutePolicy": RoutePolicySpec,
               "GpuWorkload": GpuWorkloadSpec}


@pytest.mark.parametrize(
    "sample", sample_manifests(REPOSITORY_ROOT),
    ids=lambda s: f"{s['kind']}/{s['metadata']['name']}")
def test_every_sample_validates(sample: dict) -> None:  # type: ignore[type-arg]
    SPEC_MODELS[sample["kind"]].model_validate(sample["spec"])


def test_slot_defaults_match_a_plain_gpu_slot() -> None:
    spec = ModelSlotSpec.model_validate({"alias": "local/fast", "model": {"path": "a.gguf"}})
    assert spec.device == "gpu"
    assert spec.activation == "Always"
    assert spec.server.port == 8080
    assert spec.server.ctx_size == 8192
    assert spec.server.n_gpu_layers is None


def test_models_read_and_write_camel_case() -> None:
    spec = ModelSlotSpec.model_validate({
        "alias": "local/quality", "model": {"path": "q.gguf", "servedName": "qwen"},
        "activation": "OnDemand", "idleTimeout": "5m", "server": {"ctxSize": 4096}})
    dumped = spec.model_dump(by_alias=True, exclude_defaults=True)
    assert dumped["idleTimeout"] == "5m"
    assert dumped["model"]["servedName"] == "qwen"
    assert dumped["server"]["ctxSize"] == 4096


@pytest.mark.parametrize("spec, field", [
    ({"alias": "fast", "model": {"path": "a.gguf"}}, "alias"),
    ({"alias": "local/fast", "model": {"path": "a.gguf", "vram": "-1Gi"}}, "vram"),
    ({"alias": "local/fast", "model": {"path": "a.gguf"}, "device": "tpu"}, "device"),
    ({"alias": "local/fast", "model": {"path": "a.gguf"}, "idleTimeout": "5 min"},
     "idleTimeout"),
    ({"alias": "local/fast", "model": {"path": "a.gguf"}, "bogus": 1}, "bogus"),
])
def test_slot_spec_rejects_bad_fields(spec: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError) as raised:
        ModelSlotSpec.model_validate(spec)
    assert field in str(raised.value)


def test_workload_class_is_the_wire_name_class() -> None:
    spec = GpuWorkloadSpec.model_validate({
        "class": "FineTuning", "vram": "22Gi",
        "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}})
    assert spec.workload_class == "FineTuning"
    assert spec.model_dump(by_alias=True)["class"] == "FineTuning"


def test_class_priorities_follow_the_seed_order() -> None:
    order = sorted(CLASS_PRIORITY, key=CLASS_PRIORITY.__getitem__, reverse=True)
    assert order[:4] == ["TTS", "Embedding", "ImageGeneration", "FineTuning"]


@pytest.mark.parametrize("text, seconds", [
    ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("45s", 45), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == datetime.timedelta(seconds=seconds)


def test_parse_duration_rejects_words() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("five minutes")


@pytest.mark.parametrize("text, expected", [
    ("7Gi", 7 * 2**30), ("512Mi", 512 * 2**20), ("20G", 20 * 10**9)])
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


INVALID_CORPUS = sorted((REPOSITORY_ROOT / "tests" / "data" / "invalid").glob("*.yaml"))


@pytest.mark.parametrize("path", INVALID_CORPUS, ids=[p.stem for p in INVALID_CORPUS])
def test_models_reject_what_the_api_server_rejects(path) -> None:  # type: ignore[no-untyped-def]
    """``hybrid-compute plan`` checks files without a cluster: the models must refuse
    every object of the invalid corpus, as the CRD's schema and CEL rules do."""
    import yaml

    document = yaml.safe_load(path.read_text())
    with pytest.raises(ValidationError):
        SPEC_MODELS[document["kind"]].model_validate(document["spec"])
