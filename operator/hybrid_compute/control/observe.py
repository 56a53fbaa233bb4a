"""Builds the :class:`~hybrid_compute.plan.view.View`, the one snapshot a plan reads.

Every plan starts from the whole of what the watch caches hold
(:mod:`hybrid_compute.control.informer`): slots, pods, Deployments and GPU nodes, so
the loop is level-based: after a restart it sees exactly what exists, Terminating
pods included. The rest of the View comes from what the operator hears besides
the API server (:class:`Signals`): demands and spend from routers, the GPU agents'
figures, the draining servers' answers, evaluations no status holds yet. The
parsing of API objects is pure (:mod:`hybrid_compute.plan.objects`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.api.common import GROUP, VERSION
from hybrid_compute.api.labels import CONFIG_HASH_ANNOTATION
from hybrid_compute.control import drain_probe, health_probe
from hybrid_compute.control.informer import ClusterCache
from hybrid_compute.control.telemetry import GpuTelemetry
from hybrid_compute.plan.evaluation import EvaluationResult
from hybrid_compute.plan.objects import litellm_from_object, with_fetch_log
from hybrid_compute.plan.prompt_cache import PromptCacheOutcomes
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.plan.view import (
    LiteLLMDeployment,
    PodInfo,
    PolicyInfo,
    RouterFetch,
    SlotActivity,
    SlotInfo,
    View,
    WorkloadInfo,
)
from hybrid_compute.render.children import FETCH_CONTAINER


def _raw(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


@dataclass
class _LiteLLMObjects:
    config_maps: dict[tuple[str, str], str] = field(default_factory=dict)
    deployments: dict[tuple[str, str], LiteLLMDeployment] = field(default_factory=dict)
    forbidden: dict[str, str] = field(default_factory=dict)


def _litellm_objects(core: client.CoreV1Api, apps: client.AppsV1Api,
                     policies: tuple[PolicyInfo, ...]) -> _LiteLLMObjects:
    """The ConfigMap and Deployment each policy names, read by name: the operator
    needs no right to list ConfigMaps, only to read and write the ones it renders.
    A namespace it may not read them in is reported, not raised."""
    found = _LiteLLMObjects()
    for policy in policies:
        if policy.spec is None or policy.namespace in found.forbidden:
            continue
        namespace, target = policy.namespace, policy.spec.litellm
        try:
            try:
                config_map = _raw(core.read_namespaced_config_map(
                    target.config_map_name, namespace, _preload_content=False))
                annotations = config_map["metadata"].get("annotations") or {}
                found.config_maps[(namespace, target.config_map_name)] = annotations.get(
                    CONFIG_HASH_ANNOTATION, "")
            except ApiException as error:
                if error.status != 404:
                    raise
            try:
                deployment = litellm_from_object(_raw(apps.read_namespaced_deployment(
                    target.deployment_name, namespace, _preload_content=False)))
                if deployment is not None:
                    found.deployments[(namespace, target.deployment_name)] = deployment
            except ApiException as error:
                if error.status != 404:
                    raise
        except ApiException as error:
            if error.status != 403:
                raise
            found.forbidden[namespace] = (
                f"the operator may not read ConfigMap {target.config_map_name} or "
                f"Deployment {target.deployment_name} in {namespace} (403); put the "
                "RoutePolicy in the namespace LiteLLM runs in, where its role applies")
    return found


def _read_fetch_logs(core: client.CoreV1Api, pods: tuple[PodInfo, ...]
                     ) -> tuple[PodInfo, ...]:
    """Pods whose fetch step runs, with the progress of its last log line. Kubernetes
    has no other channel from an init container to the operator; a pod whose log
    cannot be read (gone, not started, no right to pods/log) keeps its state without
    numbers."""
    if not any(pod.fetch is not None and pod.fetch.state == "Fetching" for pod in pods):
        return pods
    read: list[PodInfo] = []
    for pod in pods:
        if pod.fetch is not None and pod.fetch.state == "Fetching" and not pod.terminating:
            try:
                line = core.read_namespaced_pod_log(pod.name, pod.namespace,
                                                    container=FETCH_CONTAINER, tail_lines=1,
                                                    _request_timeout=5)
                pod = dataclasses.replace(pod, fetch=with_fetch_log(pod.fetch, str(line)))
            except ApiException:
                pass
        read.append(pod)
    return tuple(read)


SlotKey = tuple[str, str]


@dataclass(frozen=True)
class Signals:
    """What the View holds besides the API server's objects. The runtime fills it at
    the start of a pass; what may change while the lists are read is read after
    them, through the callables and the live ``demands`` mapping."""

    demands: Mapping[str, datetime.datetime]
    """Last request time per alias, as routers signalled it; copied once the lists
    are read."""
    spend_reports: Mapping[tuple[str, str], float]
    """Cloud spend routers reported per policy that no status holds yet."""
    router_fetched_at: Callable[[], datetime.datetime | None]
    """When a router last fetched ``/v1/state``, read last."""
    router_fetches: Callable[[], Mapping[str, RouterFetch]]
    """Each router's latest fetch, read with ``router_fetched_at``."""
    unrecorded_evaluations: Callable[[tuple[SlotInfo, ...]], Mapping[SlotKey, EvaluationResult]]
    """The finished evaluations whose verdict none of these slots' statuses holds."""
    unrecorded_prompt_caches: Callable[[tuple[SlotInfo, ...]],
                                       Mapping[SlotKey, PromptCacheOutcomes]] = \
        lambda _slots: {}
    """The prompt cache saves and restores none of these slots' statuses holds."""
    telemetry: GpuTelemetry | None = None
    """The GPU agents' figures; None plans without them."""
    probe: Callable[[Mapping[SlotKey, str]], Mapping[SlotKey, SlotActivity]] = \
        drain_probe.probe
    """Asks draining slots' servers for the requests they still run."""
    foreign_announced: frozenset[tuple[str, str, str]] = frozenset()
    """The foreign processes the last plan announced (:attr:`View.foreign_announced`)."""
    answering: Callable[[], frozenset[str]] = frozenset
    """UIDs of slot pods not Ready by the kubelet whose server answered /health
    (:mod:`hybrid_compute.control.health_probe`)."""


async def observe(cache: ClusterCache, api: client.ApiClient, settings: PlanSettings,
                  signals: Signals, now: datetime.datetime) -> View:
    """The whole View: the cluster's objects, then the GPU agents' figures on its
    pods, then the activity of the slots it shows draining, then the signals."""
    listed = await asyncio.to_thread(cluster_view, cache, api, settings, signals.demands,
                                     signals.spend_reports)
    if signals.telemetry is not None:
        listed = signals.telemetry.annotate(listed, now)
    answered = signals.answering()
    if answered:
        listed = dataclasses.replace(listed, pods=health_probe.ready_early(listed.pods, answered))
    activity = await asyncio.to_thread(
        signals.probe, drain_probe.draining_endpoints(listed.slots, settings))
    return dataclasses.replace(
        listed, slot_activity=activity, router_fetches=signals.router_fetches(),
        router_fetched_at=signals.router_fetched_at(),
        evaluations=signals.unrecorded_evaluations(listed.slots),
        foreign_announced=signals.foreign_announced,
        prompt_caches=signals.unrecorded_prompt_caches(listed.slots))


def cluster_view(cache: ClusterCache, api: client.ApiClient, settings: PlanSettings,
                 demands: Mapping[str, datetime.datetime],
                 spend_reports: Mapping[tuple[str, str], float]) -> View:
    """The objects the caches hold, cluster-wide, plus the LiteLLM objects each
    policy names and the progress of running downloads, read now.

    Children are read before their owners, and an owner whose child the caches saw
    deleted a moment ago is read again from the API server: the garbage collector
    removes a child only after its owner is gone, so such an owner may be gone too
    with its own deletion not yet heard, and the plan would create the child again
    beside pods still terminating.
    """
    nodes, slot_pods = cache.nodes.records(), cache.slot_pods.records()
    workload_pods, jobs = cache.workload_pods.records(), cache.jobs.records()
    workload_deployments = cache.workload_deployments.records()
    deployments, services = cache.slot_deployments.records(), cache.services.records()
    slots = _still_there(api, "modelslots", cache.slots.records(),
                         {(d.namespace, d.owner) for d in cache.slot_deployments.recently_deleted()}
                         - {(d.namespace, d.owner) for d in deployments})
    workload_children = (*jobs, *workload_deployments)
    workloads = _still_there(
        api, "gpuworkloads", cache.workloads.records(),
        {(c.namespace, c.owner) for c in (*cache.jobs.recently_deleted(),
                                          *cache.workload_deployments.recently_deleted())}
        - {(c.namespace, c.owner) for c in workload_children})
    policies = cache.policies.records()
    litellm = _litellm_objects(client.CoreV1Api(api), client.AppsV1Api(api), policies)
    return View(
        nodes=nodes,
        slots=slots,
        pods=_read_fetch_logs(client.CoreV1Api(api), (*slot_pods, *workload_pods)),
        deployments=deployments,
        services={(s.namespace, s.slot): s.publish_not_ready for s in services},
        demands=dict(demands),
        workloads=workloads,
        workload_children=workload_children,
        policies=policies,
        config_maps=litellm.config_maps,
        litellm=litellm.deployments,
        litellm_forbidden=litellm.forbidden,
        spend_reports=dict(spend_reports),
        settings=settings,
    )


Owner = TypeVar("Owner", SlotInfo, WorkloadInfo)


def _still_there(api: client.ApiClient, plural: str, owners: tuple[Owner, ...],
                 orphaned: set[tuple[str, str]]) -> tuple[Owner, ...]:
    """``owners`` without those of them, among the ``orphaned`` (a child of theirs was
    deleted a moment ago and none is held), that the API server no longer has."""
    if not orphaned:
        return owners
    gone = set()
    custom = client.CustomObjectsApi(api)
    for owner in owners:
        if (owner.namespace, owner.name) in orphaned:
            try:
                custom.get_namespaced_custom_object(GROUP, VERSION, owner.namespace, plural,
                                                    owner.name, _preload_content=False)
            except ApiException as error:
                if error.status != 404:
                    raise
                gone.add((owner.namespace, owner.name))
    return tuple(owner for owner in owners if (owner.namespace, owner.name) not in gone) \
        if gone else owners
