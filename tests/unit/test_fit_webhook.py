"""The admission webhook's fit check: refuse what can never fit any GPU, with the
numbers; let everything else through."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import kopf
import pytest
from cryptography import x509

from hybrid_compute.api.units import GIB, MIB
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import GpuNode
from hybrid_compute.server.admission_webhook import (
    ServiceWebhookServer,
    configure_server,
    fit_refusal,
    self_signed_certificate,
    service_of,
    spec_changed,
)

DREAMTEAM = GpuNode("dreamteam", gpu_count=1, gpu_memory_bytes=24576 * MIB, replicas=4,
                    allocatable=4)
DUAL = GpuNode("bigbox", gpu_count=2, gpu_memory_bytes=24576 * MIB, replicas=1, allocatable=2)
SETTINGS = PlanSettings(headroom_bytes=GIB)


def slot(vram: str | None, device: str = "gpu", gpus: int = 1) -> dict[str, Any]:
    model: dict[str, Any] = {"path": "m.gguf"}
    if vram is not None:
        model["vram"] = vram
    return {"alias": "local/big", "model": model, "device": device, "gpus": gpus}


def workload(vram: str, workload_class: str = "FineTuning") -> dict[str, Any]:
    return {"class": workload_class, "vram": vram,
            "template": {"spec": {"containers": [{"name": "train", "image": "trainer"}]}}}


def test_an_oversized_slot_is_refused_with_the_numbers() -> None:
    message = fit_refusal("ModelSlot", "default/huge", slot("26Gi"), [DREAMTEAM], SETTINGS)
    assert message == ("ModelSlot default/huge can never fit a GPU: needs 26.0 GiB, "
                       "dreamteam/0 offers 23.0 GiB (each GPU's memory less the operator's "
                       "1.0 GiB headroom)")


def test_a_slot_that_fits_passes() -> None:
    assert fit_refusal("ModelSlot", "default/quality", slot("20Gi"), [DREAMTEAM],
                       SETTINGS) is None
    assert fit_refusal("ModelSlot", "default/edge", slot("23Gi"), [DREAMTEAM], SETTINGS) is None


def test_the_headroom_counts() -> None:
    roomy = PlanSettings(headroom_bytes=0)
    assert fit_refusal("ModelSlot", "x", slot("24Gi"), [DREAMTEAM], roomy) is None
    assert fit_refusal("ModelSlot", "x", slot("24Gi"), [DREAMTEAM], SETTINGS) is not None


def test_the_largest_gpu_is_the_one_named() -> None:
    small = GpuNode("small", gpu_count=1, gpu_memory_bytes=8192 * MIB, replicas=1, allocatable=1)
    message = fit_refusal("ModelSlot", "x", slot("40Gi"), [small, DREAMTEAM], SETTINGS)
    assert message is not None and "dreamteam/0 offers 23.0 GiB" in message


def test_a_split_slot_needs_whole_gpus_on_one_node() -> None:
    assert fit_refusal("ModelSlot", "x", slot("40Gi", gpus=2), [DUAL], SETTINGS) is None
    message = fit_refusal("ModelSlot", "x", slot("40Gi", gpus=2), [DREAMTEAM], SETTINGS)
    assert message is not None and "needs 2 whole GPUs on one node" in message
    too_big = fit_refusal("ModelSlot", "x", slot("50Gi", gpus=2), [DUAL], SETTINGS)
    assert too_big is not None and "needs 25.0 GiB on each of 2 GPUs" in too_big


def test_cpu_slots_and_slots_without_vram_are_not_judged() -> None:
    assert fit_refusal("ModelSlot", "x", slot("100Gi", device="cpu"), [DREAMTEAM],
                       SETTINGS) is None
    assert fit_refusal("ModelSlot", "x", slot(None), [DREAMTEAM], SETTINGS) is None


def test_nothing_is_refused_before_a_gpu_node_joins() -> None:
    assert fit_refusal("ModelSlot", "x", slot("26Gi"), [], SETTINGS) is None


def test_an_oversized_workload_is_refused_and_an_embedding_one_is_not() -> None:
    message = fit_refusal("GpuWorkload", "default/train", workload("30Gi"), [DREAMTEAM],
                          SETTINGS)
    assert message is not None
    assert message.startswith("GpuWorkload default/train can never fit a GPU: needs 30.0 GiB")
    assert fit_refusal("GpuWorkload", "x", workload("8Gi"), [DREAMTEAM], SETTINGS) is None
    assert fit_refusal("GpuWorkload", "x", workload("30Gi", "Embedding"), [DREAMTEAM],
                       SETTINGS) is None


def test_an_invalid_spec_is_left_to_the_schema() -> None:
    assert fit_refusal("ModelSlot", "x", {"alias": "nope"}, [DREAMTEAM], SETTINGS) is None


@pytest.mark.parametrize(("old", "new", "changed"), [
    (None, {"spec": {"a": 1}}, True),
    ({"spec": {"a": 1}}, {"spec": {"a": 2}}, True),
    ({"spec": {"a": 1}, "status": {}}, {"spec": {"a": 1}, "status": {"phase": "X"}}, False),
])
def test_only_a_changed_spec_is_judged(old: dict[str, Any] | None, new: dict[str, Any],
                                       changed: bool) -> None:
    assert spec_changed(old, new) is changed


def test_the_certificate_names_the_host_and_serves_tls(tmp_path: Path) -> None:
    certificate_file, key_file = self_signed_certificate("127.0.0.1", tmp_path)
    certificate = x509.load_pem_x509_certificate(certificate_file.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate_file, key_file)
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    named = x509.load_pem_x509_certificate(
        self_signed_certificate("webhook.example", tmp_path)[0].read_bytes())
    dns = named.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert dns.get_values_for_type(x509.DNSName) == ["webhook.example"]


@pytest.mark.parametrize(("host", "service"), [
    ("hybrid-compute.ai.svc", ("ai", "hybrid-compute")),
    ("127.0.0.1", None), ("localhost", None), ("webhook.example.com", None),
    ("hybrid-compute.svc", None), (".ai.svc", None)])
def test_only_a_services_in_cluster_name_is_a_service(host: str,
                                                      service: tuple[str, str] | None) -> None:
    assert service_of(host) == service


def test_a_service_host_is_announced_as_a_service_reference_with_its_ca() -> None:
    settings = kopf.OperatorSettings()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configure_server(settings, port, "hybrid-compute.ai.svc")
    server = settings.admission.server
    assert isinstance(server, ServiceWebhookServer)
    assert settings.admission.managed == "hybrid-compute.hybridcompute.io"

    async def first_config() -> kopf.WebhookClientConfig:
        async def never_called(*_args: Any, **_kwargs: Any) -> Any:
            raise AssertionError("no admission request was sent")

        configs = server(never_called)
        assert isinstance(configs, AsyncGenerator)
        try:
            return await anext(configs)
        finally:
            await configs.aclose()

    config = asyncio.run(first_config())
    assert config.get("service") == {"namespace": "ai", "name": "hybrid-compute",
                                     "port": port, "path": ""}
    assert "url" not in config, "the API server cannot resolve *.svc in a URL"
    assert config.get("caBundle"), "the self-signed certificate must be trusted"


def test_a_loopback_host_stays_a_url() -> None:
    settings = kopf.OperatorSettings()
    configure_server(settings, 9443, "127.0.0.1")
    server = settings.admission.server
    assert type(server) is kopf.WebhookServer
    assert server.host == "127.0.0.1" and server.addr == "127.0.0.1"


def _object(kind: str, name: str, spec: dict[str, Any], namespace: str = "lab",
            created: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        metadata["creationTimestamp"] = created
    return {"apiVersion": "hybridcompute.io/v1alpha1", "kind": kind, "metadata": metadata,
            "spec": spec}


def _existing() -> tuple[list[Any], list[Any]]:
    from hybrid_compute.plan.objects import policy_from_object, slot_from_object
    fast = _object("ModelSlot", "fast", {"alias": "local/fast", "default": True,
                                         "model": {"path": "f.gguf", "vram": "4Gi"}},
                   created="2026-11-01T00:00:00Z")
    policy = _object("RoutePolicy", "hybrid", {"cloudModels": [
        {"alias": "cloud/fast", "model": "openai/gpt-4o-mini"}]},
        created="2026-11-01T00:00:00Z")
    return [slot_from_object(fast)], [policy_from_object(policy)]


@pytest.mark.parametrize("kind,spec,namespace,reason,other", [
    ("ModelSlot", {"alias": "local/fast", "model": {"path": "g.gguf"}}, "lab",
     "AliasConflict", "ModelSlot lab/fast"),
    ("ModelSlot", {"alias": "local/fast", "model": {"path": "g.gguf"}}, "team-b",
     "AliasConflict", "ModelSlot lab/fast"),
    ("ModelSlot", {"alias": "cloud/fast", "model": {"path": "g.gguf"}}, "lab",
     "AliasConflict", "RoutePolicy lab/hybrid"),
    ("ModelSlot", {"alias": "local/other", "default": True,
                   "model": {"path": "g.gguf", "vram": "4Gi"}}, "lab",
     "DefaultConflict", "ModelSlot lab/fast"),
    ("ModelSlot", {"alias": "local/other", "fallback": "cloud/typo",
                   "model": {"path": "g.gguf"}}, "lab", "UnknownAlias", "cloud/typo"),
    ("RoutePolicy", {"cloudModels": [{"alias": "local/fast", "model": "openai/x"}]}, "lab",
     "AliasConflict", "ModelSlot lab/fast"),
])
def test_conflicting_objects_are_refused_at_apply_naming_both(
        kind: str, spec: dict[str, Any], namespace: str, reason: str, other: str) -> None:
    from hybrid_compute.server.admission_webhook import conflict_refusal
    slots, policies = _existing()
    name = "new"
    message = conflict_refusal(kind, _object(kind, name, spec, namespace), slots, policies, 1)
    assert message is not None
    assert f"{kind} {namespace}/{name}" in message and reason in message and other in message


def test_the_object_being_applied_counts_as_latest_and_may_update_itself() -> None:
    from hybrid_compute.server.admission_webhook import conflict_refusal
    slots, policies = _existing()
    same = _object("ModelSlot", "fast", {"alias": "local/fast", "default": True, "priority": 5,
                                         "model": {"path": "f.gguf", "vram": "4Gi"}},
                   created="2026-11-01T00:00:00Z")
    assert conflict_refusal("ModelSlot", same, slots, policies, 1) is None
    other = _object("ModelSlot", "other", {"alias": "local/other", "model": {"path": "o.gguf"}})
    assert conflict_refusal("ModelSlot", other, slots, policies, 1) is None
    assert conflict_refusal("GpuWorkload", other, slots, policies, 1) is None
    invalid = _object("ModelSlot", "bad", {"alias": "local/fast"})
    assert conflict_refusal("ModelSlot", invalid, slots, policies, 1) is None
