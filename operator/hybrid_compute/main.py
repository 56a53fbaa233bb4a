"""kopf handlers. Each hands off in one line; decisions live in pure modules."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from typing import Any

import kopf

from hybrid_compute import acceptance, kube
from hybrid_compute.api import GROUP, KINDS, VERSION
from hybrid_compute.api.common import CrdInfo

logger = logging.getLogger("hybrid_compute")

_API: dict[str, Any] = {}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.name = "hybrid-compute"
    settings.peering.mandatory = False
    settings.peering.clusterwide = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    _API["client"] = kube.load_client(os.environ.get("KUBECONFIG") or None)
    logger.info("hybrid-compute operator started (watching %s/%s)", GROUP, VERSION)


@kopf.on.probe(id="apiserver")
def api_reachable(**_: Any) -> bool:
    return "client" in _API


def _observe(crd: CrdInfo, body: kopf.Body) -> None:
    """Validates the spec and applies the acceptance status when it changed."""
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    desired = acceptance.acceptance_status(crd, dict(body), _now())
    if acceptance.needs_update(dict(body.get("status") or {}), desired):
        kube.apply_status(_API["client"], crd, body["metadata"]["namespace"],
                          body["metadata"]["name"], desired)


def _register(crd: CrdInfo) -> None:
    @kopf.on.event(GROUP, VERSION, crd.plural, id=f"observe-{crd.plural}")
    def observe(body: kopf.Body, type: str | None, **_: Any) -> None:
        if type != "DELETED":
            _observe(crd, body)


for _kind in KINDS:
    _register(_kind.crd)


def run_operator(kubeconfig: str | None, namespace: list[str], health_port: int,
                 standalone: bool) -> int:
    """Runs the operator until interrupted; ``/healthz`` serves kopf's liveness probe."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    asyncio.run(kopf.operator(
        clusterwide=not namespace,
        namespaces=namespace,
        liveness_endpoint=liveness,
        standalone=standalone,
    ))
    return 0
