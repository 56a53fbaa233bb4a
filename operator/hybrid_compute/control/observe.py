"""Builds the :class:`~hybrid_compute.plan.view.View`, the one snapshot a plan reads.

Every plan starts from fresh lists of slots, pods, Deployments and GPU nodes, so
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hybrid_compute.api.common import GROUP, VERSION
from hybrid_compute.api.labels import (
    CONFIG_HASH_ANNOTATION,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SLOT_LABEL,
    WORKLOAD_LABEL,
)
from hybrid_compute.control import drain_probe, health_probe
from hybrid_compute.control.telemetry import GpuTelemetry
from hybrid_compute.plan.evaluation import EvaluationResult
from hybrid_compute.plan.objects import (
    deployment_from_object,
    litellm_from_object,
    node_from_object,
    pod_from_object,
    policy_from_object,
    slot_from_object,
    with_fetch_log,
    workload_child_from_object,
    workload_from_object,
)
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
                     policies: list[PolicyInfo]) -> _LiteLLMObjects:
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


async def observe(api: client.ApiClient, settings: PlanSettings, signals: Signals,
                  now: datetime.datetime) -> View:
    """The whole View: the cluster's objects, then the GPU agents' figures on its
    pods, then the activity of the slots it shows draining, then the signals."""
    listed = await asyncio.to_thread(list_cluster, api, settings, signals.demands,
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


def list_cluster(api: client.ApiClient, settings: PlanSettings,
                 demands: Mapping[str, datetime.datetime],
                 spend_reports: Mapping[tuple[str, str], float]) -> View:
    """Lists what the plan needs, cluster-wide.

    Children are listed before their owners. The garbage collector removes a
    child only after its owner is gone, so an owner seen in the later list had
    its children when the earlier lists were taken; listing the other way round,
    a slot deleted in between would look like a slot whose Deployment is missing,
    and the operator would create it again beside pods still terminating.
    """
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    owned = f"{MANAGED_BY_LABEL}={MANAGED_BY},{WORKLOAD_LABEL}"
    slot_children = f"{MANAGED_BY_LABEL}={MANAGED_BY},{SLOT_LABEL}"
    child_lists: dict[str, Callable[[], Any]] = {
        "nodes": lambda: core.list_node(_preload_content=False),
        "slot pods": lambda: core.list_pod_for_all_namespaces(
            label_selector=SLOT_LABEL, _preload_content=False),
        "workload pods": lambda: core.list_pod_for_all_namespaces(
            label_selector=WORKLOAD_LABEL, _preload_content=False),
        "jobs": lambda: client.BatchV1Api(api).list_job_for_all_namespaces(
            label_selector=owned, _preload_content=False),
        "workload deployments": lambda: apps.list_deployment_for_all_namespaces(
            label_selector=owned, _preload_content=False),
        "slot deployments": lambda: apps.list_deployment_for_all_namespaces(
            label_selector=slot_children, _preload_content=False),
        "services": lambda: core.list_service_for_all_namespaces(
            label_selector=slot_children, _preload_content=False),
    }
    # The lists of each group are read at once (a pass waits for the slowest, not
    # for their sum); every child list ends before the first owner list starts.
    with ThreadPoolExecutor(max_workers=len(child_lists)) as pool:
        children = dict(zip(child_lists, pool.map(lambda read: _raw(read())["items"],
                                                  child_lists.values()), strict=True))
        slots, workloads, policy_objects = pool.map(
            lambda plural: custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"],
            ("modelslots", "gpuworkloads", "routepolicies"))
    nodes, pods = children["nodes"], [*children["slot pods"], *children["workload pods"]]
    jobs, workload_deployments = children["jobs"], children["workload deployments"]
    deployments, services = children["slot deployments"], children["services"]
    for item in jobs:
        item["kind"] = "Job"
    for item in workload_deployments:
        item["kind"] = "Deployment"
    policies = [policy_from_object(p) for p in policy_objects
                if not p.get("metadata", {}).get("deletionTimestamp")]
    litellm = _litellm_objects(core, apps, policies)
    return View(
        nodes=tuple(n for n in map(node_from_object, nodes) if n),
        slots=tuple(slot_from_object(s) for s in slots
                    if not s.get("metadata", {}).get("deletionTimestamp")),
        pods=_read_fetch_logs(core, tuple(p for p in map(pod_from_object, pods) if p)),
        deployments=tuple(d for d in map(deployment_from_object, deployments) if d),
        services={(s["metadata"]["namespace"], s["metadata"]["labels"][SLOT_LABEL]):
                  bool(s["spec"].get("publishNotReadyAddresses")) for s in services},
        demands=dict(demands),
        workloads=tuple(workload_from_object(w) for w in workloads
                        if not w.get("metadata", {}).get("deletionTimestamp")),
        workload_children=tuple(c for c in map(workload_child_from_object,
                                                [*jobs, *workload_deployments]) if c),
        policies=tuple(policies),
        config_maps=litellm.config_maps,
        litellm=litellm.deployments,
        litellm_forbidden=litellm.forbidden,
        spend_reports=dict(spend_reports),
        settings=settings,
    )
