"""The validating admission webhook: a ModelSlot or GpuWorkload that can never fit
any GPU is refused when it is applied, with the numbers; so is a ModelSlot or
RoutePolicy that conflicts with the objects already there (:mod:`.conflicts`
rules, the object being applied counted as the latest), naming both.

"Never" means against every GPU's memory less the operator's headroom, whatever
else is loaded; what merely has to wait is the plan's business. Where the webhook
is not installed the plan says the same thing at once, as an Unschedulable slot
or a workload that "can never fit". With no GPU node in the cluster yet nothing is
refused: the node may still join.

``hybrid-compute run --webhook-port N`` serves it over HTTPS with a self-signed
certificate and lets kopf keep the ValidatingWebhookConfiguration up to date. Its
failure policy is Ignore, so a stopped operator never blocks ``kubectl apply``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import json
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client
from pydantic import ValidationError

from hybrid_compute.api.common import GROUP, VERSION, parse_bytes
from hybrid_compute.api.gpuworkload import GpuWorkloadSpec
from hybrid_compute.api.modelslot import ModelSlotSpec
from hybrid_compute.api.units import gib
from hybrid_compute.plan.conflicts import judge
from hybrid_compute.plan.ledger import build_gpus, fit_problem
from hybrid_compute.plan.objects import node_from_object, policy_from_object, slot_from_object
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import GpuNode, PolicyInfo, SlotInfo, View
from hybrid_compute.plan.workloads import uses_gpu

CONFIGURATION_NAME = "hybrid-compute.hybridcompute.io"
"""The ValidatingWebhookConfiguration kopf manages."""
REFUSAL_CODE = 422
_CERTIFICATE_VALIDITY = datetime.timedelta(days=365)


def _demand(kind: str, spec: Mapping[str, Any]) -> tuple[int, int] | None:
    """(VRAM bytes, whole GPUs) the object asks for, or None when it asks for no GPU
    memory the webhook can judge: CPU slots, embedding workloads, a slot without
    spec.model.vram, a whole-GPU reservation, or a spec the schema should already
    have refused."""
    try:
        if kind == "ModelSlot":
            slot = ModelSlotSpec.model_validate(spec)
            if slot.device != "gpu" or slot.model.vram is None:
                return None
            return parse_bytes(slot.model.vram), slot.gpus
        workload = GpuWorkloadSpec.model_validate(spec)
    except ValidationError:
        return None
    if not uses_gpu(workload) or workload.vram is None:
        return None  # a whole-GPU reservation fits any GPU
    return parse_bytes(workload.vram), 1


def fit_refusal(kind: str, name: str, spec: Mapping[str, Any], nodes: Sequence[GpuNode],
                settings: PlanSettings) -> str | None:
    """The message to refuse ``spec`` with when it can never fit any GPU, else None."""
    demand = _demand(kind, spec)
    if demand is None or not nodes:
        return None
    vram, gpu_count = demand
    problem = fit_problem(gpu_count, vram, build_gpus(View(nodes=tuple(nodes),
                                                           settings=settings)))
    if problem is None:
        return None
    return (f"{kind} {name} can never fit a GPU: {problem} (each GPU's memory less the "
            f"operator's {gib(settings.headroom_bytes)} headroom)")


def conflict_refusal(kind: str, body: Mapping[str, Any], slots: Sequence[SlotInfo],
                     policies: Sequence[PolicyInfo], gpu_nodes: int) -> str | None:
    """The message to refuse ``body`` (a ModelSlot or RoutePolicy) with when it
    conflicts with the existing ``slots`` and ``policies``, else None. The object
    being applied counts as the latest, so the objects already serving win."""
    if kind == "ModelSlot":
        slot = dataclasses.replace(slot_from_object(body), created=None)
        if slot.spec is None:
            return None
        key = slot.key
        verdicts = judge([*(s for s in slots if s.key != key), slot], policies, gpu_nodes)
        refusal = verdicts.slots.get(key)
    elif kind == "RoutePolicy":
        policy = dataclasses.replace(policy_from_object(body), created=None)
        if policy.spec is None:
            return None
        key = policy.key
        verdicts = judge(slots, [*(p for p in policies if p.key != key), policy], gpu_nodes)
        refusal = verdicts.policies.get(key)
    else:
        return None
    if refusal is None:
        return None
    return f"{kind} {key[0]}/{key[1]} is refused ({refusal.reason}): {refusal.message}"


def spec_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """An update that leaves the spec alone (status, labels, finalizers) is never
    refused, so an object admitted before the webhook existed can still be managed."""
    return old is None or old.get("spec") != new.get("spec")


# -- I/O: the nodes, the certificate -----------------------------------------------------


def list_gpu_nodes(api: client.ApiClient) -> list[GpuNode]:
    response = client.CoreV1Api(api).list_node(_preload_content=False)
    items = json.loads(response.data).get("items") or []
    return [node for node in map(node_from_object, items) if node is not None]


def list_slots_and_policies(api: client.ApiClient
                            ) -> tuple[list[SlotInfo], list[PolicyInfo]]:
    custom = client.CustomObjectsApi(api)
    slots = custom.list_cluster_custom_object(GROUP, VERSION, "modelslots")["items"]
    policies = custom.list_cluster_custom_object(GROUP, VERSION, "routepolicies")["items"]
    return [slot_from_object(s) for s in slots], [policy_from_object(p) for p in policies]


async def refusal_for(kind: str, body: Mapping[str, Any], old: Mapping[str, Any] | None,
                      api: client.ApiClient, settings: PlanSettings) -> str | None:
    if not spec_changed(old, body):
        return None
    nodes = await asyncio.to_thread(list_gpu_nodes, api)
    metadata = body.get("metadata") or {}
    name = "/".join(p for p in (metadata.get("namespace"), metadata.get("name")) if p)
    refusal = fit_refusal(kind, name, body.get("spec") or {}, nodes, settings)
    if refusal is None and kind in ("ModelSlot", "RoutePolicy"):
        slots, policies = await asyncio.to_thread(list_slots_and_policies, api)
        refusal = conflict_refusal(kind, body, slots, policies, len(nodes))
    return refusal


def self_signed_certificate(host: str, folder: Path | None = None) -> tuple[Path, Path]:
    """A certificate for ``host`` (a name or an IP address) that is its own CA, as the
    webhook's caBundle; returns the certificate and key files."""
    # cryptography is loaded only by an operator that serves the webhook: it makes
    # the process several megabytes larger.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from hybrid_compute import tls

    folder = folder or Path(tempfile.mkdtemp(prefix="hybrid-compute-webhook-"))
    key = tls.new_key()
    subject = tls.name("hybrid-compute-webhook")
    certificate = tls.for_servers(
        tls.builder(subject, subject, key.public_key(), _CERTIFICATE_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True),
        [host],
    ).sign(key, hashes.SHA256())
    certificate_file, key_file = folder / "webhook.crt", folder / "webhook.key"
    tls.write_key(key_file, key)
    tls.write_certificate(certificate_file, certificate)
    return certificate_file, key_file


def service_of(host: str) -> tuple[str, str] | None:
    """(namespace, name) when ``host`` is a Service's in-cluster name
    ``NAME.NAMESPACE.svc``, else None."""
    parts = host.split(".")
    if len(parts) == 3 and parts[2] == "svc" and all(parts[:2]):
        return parts[1], parts[0]
    return None


def service_client_config(config: kopf.WebhookClientConfig, namespace: str, name: str,
                          port: int) -> kopf.WebhookClientConfig:
    """kopf's URL-based client configuration as a reference to the Service."""
    service: kopf.WebhookClientConfigService = {
        "namespace": namespace, "name": name, "port": port, "path": ""}
    result: kopf.WebhookClientConfig = {"service": service}
    if config.get("caBundle"):
        result["caBundle"] = config["caBundle"]
    return result


class ServiceWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, announced to the API server as a Service reference.

    The API server resolves the host of a URL with its own resolver, which on k3s
    (and most installs) is the node's and knows no ``*.svc`` names; a Service
    reference it resolves itself, and it checks the certificate against
    ``NAME.NAMESPACE.svc``, the name the certificate is made for."""

    def __init__(self, *, namespace: str, name: str, service_port: int,
                 **options: Any) -> None:
        super().__init__(**options)
        self.service = (namespace, name, service_port)

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        namespace, name, port = self.service
        async for config in super().__call__(fn):
            yield service_client_config(config, namespace, name, port)


def configure_server(settings: kopf.OperatorSettings, port: int, host: str) -> None:
    """Serve the webhook on ``port`` and let kopf keep its configuration. The API
    server calls ``https://HOST:PORT``, or, for a host ``NAME.NAMESPACE.svc``, that
    Service on port ``port``. A loopback host (the dev cluster, where the API server
    runs beside the operator) listens on loopback only."""
    certificate_file, key_file = self_signed_certificate(host)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    options: dict[str, Any] = {"addr": host if loopback else "0.0.0.0", "port": port,
                               "host": host, "certfile": str(certificate_file),
                               "pkeyfile": str(key_file)}
    service = service_of(host)
    settings.admission.server = (
        kopf.WebhookServer(**options) if service is None
        else ServiceWebhookServer(namespace=service[0], name=service[1], service_port=port,
                                  **options))
    settings.admission.managed = CONFIGURATION_NAME


async def admit(kind: str, body: Mapping[str, Any], old: Mapping[str, Any] | None,
                api: client.ApiClient, settings: PlanSettings) -> None:
    """Raises kopf's admission error when the object can never fit or conflicts
    with the objects already there."""
    message = await refusal_for(kind, body, old, api, settings)
    if message is not None:
        raise kopf.AdmissionError(message, code=REFUSAL_CODE)
