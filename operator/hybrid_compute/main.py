"""kopf handlers. Each hands off in one line; decisions live in pure modules.

Watch events only wake the control loop (:mod:`hybrid_compute.runtime`); the loop
observes the cluster afresh, plans, and applies the difference.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import kopf

from hybrid_compute import acceptance, api_server, clock, kube
from hybrid_compute.api import GROUP, VERSION, RoutePolicy
from hybrid_compute.api.common import CrdInfo
from hybrid_compute.runtime import Runtime
from hybrid_compute.view import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SLOT_LABEL,
    WORKLOAD_LABEL,
    PlanSettings,
)

logger = logging.getLogger("hybrid_compute")


@dataclass(frozen=True)
class OperatorOptions:
    """What ``hybrid-compute run`` was asked for; read by the startup handler."""

    settings: PlanSettings
    api_port: int
    api_token: str | None


_OPTIONS: list[OperatorOptions] = []


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.name = "hybrid-compute"
    settings.peering.mandatory = False
    settings.peering.clusterwide = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    options = _OPTIONS[-1] if _OPTIONS else OperatorOptions(PlanSettings(), 8081, None)
    api = kube.load_client(os.environ.get("KUBECONFIG") or None)
    runtime = Runtime(api, options.settings)
    memo.api = api
    memo.runtime = runtime
    memo.loop = asyncio.create_task(runtime.run(), name="hybrid-compute-loop")
    memo.http = None
    if options.api_token and options.api_port:
        memo.http = await api_server.start(runtime, options.api_token, options.api_port)
        logger.info("demand/state API listening on port %d", options.api_port)
    else:
        logger.warning("no API token configured: the demand/state API is off")
    logger.info("hybrid-compute operator started (watching %s/%s)", GROUP, VERSION)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.loop.cancel()
    if memo.http is not None:
        await memo.http.cleanup()


@kopf.on.probe(id="loop")
def loop_alive(memo: kopf.Memo, **_: Any) -> bool:
    return not memo.loop.done()


@kopf.on.event(GROUP, VERSION, "modelslots")
def slot_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.poke()


@kopf.on.event("", "v1", "pods", labels={SLOT_LABEL: kopf.PRESENT})
def slot_pod_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.poke()


@kopf.on.event("apps", "v1", "deployments", labels={MANAGED_BY_LABEL: MANAGED_BY})
def slot_deployment_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.poke()


@kopf.on.event("", "v1", "nodes", labels={"nvidia.com/gpu.present": "true"})
def gpu_node_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.poke()


def _accept(crd: CrdInfo, memo: kopf.Memo, body: kopf.Body, event_type: str | None) -> None:
    """Acceptance status for RoutePolicy, which the loop does not plan yet."""
    if event_type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        return
    now = clock.now().replace(microsecond=0)
    desired = acceptance.acceptance_status(crd, dict(body), now)
    if acceptance.needs_update(dict(body.get("status") or {}), desired):
        kube.apply_status(memo.api, crd, body["metadata"]["namespace"],
                          body["metadata"]["name"], desired)


@kopf.on.event(GROUP, VERSION, "routepolicies")
def route_policy_changed(memo: kopf.Memo, body: kopf.Body, type: str | None,
                         **_: Any) -> None:
    _accept(RoutePolicy.crd, memo, body, type)


@kopf.on.event(GROUP, VERSION, "gpuworkloads")
def gpu_workload_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.poke()


@kopf.on.event("", "v1", "pods", labels={WORKLOAD_LABEL: kopf.PRESENT})
def workload_pod_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.poke()


@kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY_LABEL: MANAGED_BY})
def workload_job_changed(memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.poke()


def run_operator(kubeconfig: str | None, namespace: list[str], health_port: int,
                 standalone: bool, api_port: int = 8081, api_token: str | None = None,
                 settings: PlanSettings | None = None) -> int:
    """Runs the operator until interrupted; ``/healthz`` serves kopf's liveness probe."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per handled watch event drowns what the loop reports.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    _OPTIONS.append(OperatorOptions(settings or PlanSettings(), api_port, api_token))
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    asyncio.run(kopf.operator(
        clusterwide=not namespace,
        namespaces=namespace,
        liveness_endpoint=liveness,
        standalone=standalone,
    ))
    return 0
