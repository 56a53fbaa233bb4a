"""kopf handlers: the operator's start and stop, its liveness probe and its admission
webhook. Each hands off in one line; decisions live in pure modules.

The control loop (:mod:`hybrid_compute.control.loop`) keeps its own watches
(:mod:`hybrid_compute.control.informer`): a watch event updates the loop's caches and
wakes it only when something the plan reads changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import kopf

from hybrid_compute.api import GROUP, VERSION
from hybrid_compute.control import kube, state_api, telemetry
from hybrid_compute.control.lease_elector import LeaseElector, default_identity, default_namespace
from hybrid_compute.control.loop import Runtime
from hybrid_compute.plan.settings import PlanSettings
from hybrid_compute.server import admission_webhook, metrics

logger = logging.getLogger("hybrid_compute")


@dataclass(frozen=True)
class OperatorOptions:
    """What ``hybrid-compute run`` was asked for; read by the startup handler."""

    settings: PlanSettings
    api_port: int
    api_token: str | None
    metrics_port: int = 9090
    gpu_agents: tuple[str, ...] = ()
    webhook_port: int = 0
    """0: no admission webhook; the plan alone reports slots that can never fit."""
    webhook_host: str = "127.0.0.1"
    leader_election: bool = False
    """Act only while holding the leader Lease, so several replicas may run."""
    leader_election_namespace: str | None = None


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
    gpu_telemetry = telemetry.from_options(options.gpu_agents, metrics.METRICS)
    elector = None
    if options.leader_election:
        elector = LeaseElector(api, default_namespace(options.leader_election_namespace),
                               default_identity())
        logger.info("leader election on: Lease %s/%s, this replica is %s",
                    elector.namespace, elector.name, elector.identity)
    runtime = Runtime(api, options.settings, telemetry=gpu_telemetry, leadership=elector)
    memo.api = api
    memo.election = None if elector is None else asyncio.create_task(
        elector.run(), name="hybrid-compute-leader-election")
    memo.runtime = runtime
    if options.webhook_port:
        admission_webhook.configure_server(settings, options.webhook_port,
                                     options.webhook_host)
    memo.loop = asyncio.create_task(runtime.run(), name="hybrid-compute-loop")
    memo.telemetry = None if gpu_telemetry is None else asyncio.create_task(
        gpu_telemetry.run(runtime.gpu_nodes, runtime.poke), name="hybrid-compute-gpu-telemetry")
    memo.metrics_http = None
    if options.metrics_port:
        memo.metrics_http = await metrics.start(metrics.METRICS, options.metrics_port)
        logger.info("Prometheus metrics on port %d at /metrics", options.metrics_port)
    memo.http = None
    if options.api_port and (options.api_token or elector is not None):
        memo.http = await state_api.start(runtime, options.api_token, options.api_port)
        logger.info("%s listening on port %d", "demand/state API and /readyz"
                    if options.api_token else "/readyz", options.api_port)
    if not options.api_token:
        logger.warning("no API token configured: the demand/state API is off")
    logger.info("hybrid-compute operator started (watching %s/%s)", GROUP, VERSION)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.loop.cancel()
    if memo.election is not None:
        memo.election.cancel()
        await memo.runtime.leadership.release()
    if memo.telemetry is not None:
        memo.telemetry.cancel()
    if memo.http is not None:
        await memo.http.cleanup()
    if memo.metrics_http is not None:
        await memo.metrics_http.cleanup()


@kopf.on.probe(id="loop")
def loop_alive(memo: kopf.Memo, **_: Any) -> bool:
    return not memo.loop.done() and (memo.election is None or not memo.election.done())


def _register_fit_webhook() -> None:
    """Only with a webhook port: kopf will not start with admission handlers and no
    server to serve them."""

    @kopf.on.validate(GROUP, VERSION, "modelslots", id="modelslot-fits",
                      operations=["CREATE", "UPDATE"], ignore_failures=True)
    async def modelslot_fits(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        await admission_webhook.admit("ModelSlot", body, kwargs.get("old"), memo.api,
                                memo.runtime.settings)

    @kopf.on.validate(GROUP, VERSION, "routepolicies", id="routepolicy-conflicts",
                      operations=["CREATE", "UPDATE"], ignore_failures=True)
    async def routepolicy_conflicts(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        await admission_webhook.admit("RoutePolicy", body, kwargs.get("old"), memo.api,
                                      memo.runtime.settings)

    @kopf.on.validate(GROUP, VERSION, "gpuworkloads", id="gpuworkload-fits",
                      operations=["CREATE", "UPDATE"], ignore_failures=True)
    async def gpuworkload_fits(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        await admission_webhook.admit("GpuWorkload", body, kwargs.get("old"), memo.api,
                                memo.runtime.settings)


def set_peering_identity() -> None:
    """Names this process for kopf's peering, unless ``$POD_ID`` already does: kopf's
    own name comes from ``getpass.getuser()``, which fails for a uid that has no
    /etc/passwd entry, such as the image's 65532 or any other ``runAsUser``."""
    os.environ.setdefault("POD_ID", default_identity())


def run_operator(kubeconfig: str | None, namespace: list[str], health_port: int,
                 standalone: bool, api_port: int = 8081, api_token: str | None = None,
                 settings: PlanSettings | None = None, metrics_port: int = 9090,
                 gpu_agents: tuple[str, ...] = (), webhook_port: int = 0,
                 webhook_host: str = "127.0.0.1", leader_election: bool = False,
                 leader_election_namespace: str | None = None) -> int:
    """Runs the operator until interrupted; ``/healthz`` serves kopf's liveness probe."""
    if kubeconfig:
        kube.use_kubeconfig(kubeconfig)
    set_peering_identity()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per handled watch event drowns what the loop reports.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    _OPTIONS.append(OperatorOptions(settings or PlanSettings(), api_port, api_token,
                                    metrics_port, gpu_agents, webhook_port, webhook_host,
                                    leader_election, leader_election_namespace))
    if webhook_port:
        _register_fit_webhook()
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    asyncio.run(kopf.operator(
        clusterwide=not namespace,
        namespaces=namespace,
        liveness_endpoint=liveness,
        standalone=standalone,
    ))
    return 0
