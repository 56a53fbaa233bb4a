"""The agent's loop and HTTP endpoints: ``/metrics`` (Prometheus), ``/snapshot``
(the JSON the operator reads), ``/gguf?path=FILE`` (a model file's header shape,
for the operator's VRAM estimate), ``PUT /warm`` (the model files to keep in the
page cache, with ``--page-cache-budget``) and ``/healthz``.

The endpoints keep answering whatever NVML does: a node whose driver fails is
reported as such, which is what monitoring needs to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hybrid_compute.agent.metrics import PageCacheCollector, agent_registry
from hybrid_compute.agent.models import ModelFileRefused, ModelHeaders, shape_to_json
from hybrid_compute.agent.nvml import load_nvml
from hybrid_compute.agent.snapshot import (
    GpuReader,
    NodeSnapshot,
    proc_cgroup_reader,
    proc_name_reader,
)
from hybrid_compute.agent.warmer import Warmer, parse_warm_request

logger = logging.getLogger("hybrid_compute.agent")


class AgentService:
    """Reads the GPUs every ``interval`` seconds and keeps the latest snapshot."""

    def __init__(self, reader: GpuReader, interval: float = 5.0,
                 models: ModelHeaders | None = None, warmer: Warmer | None = None) -> None:
        self.reader = reader
        self.interval = interval
        self.models = models
        """The node's model folder; None when the agent was given none."""
        self.warmer = warmer
        """Keeps Standby slots' model files in the page cache; None without a budget."""
        self.latest: NodeSnapshot | None = None
        self.registry = agent_registry(
            lambda: self.latest,
            PageCacheCollector(reader.node, warmer.report) if warmer else None)
        self._last_error: str | None = None

    async def refresh(self) -> NodeSnapshot:
        snapshot = await asyncio.to_thread(self.reader.read)
        error = snapshot.error or "; ".join(
            g.error for g in snapshot.gpus if g.error) or None
        if error != self._last_error:
            # Log changes only: a node without a driver would otherwise log forever.
            if error:
                logger.warning("GPU state on %s: %s", snapshot.node, error)
            elif self._last_error:
                logger.info("GPUs on %s read cleanly again", snapshot.node)
            self._last_error = error
        self.latest = snapshot
        return snapshot

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)


def build_app(service: AgentService) -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(service.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def snapshot(_request: web.Request) -> web.Response:
        latest = service.latest or await service.refresh()
        if service.warmer is not None:
            latest = latest.model_copy(update={"page_cache": service.warmer.report()})
        return web.json_response(latest.model_dump(mode="json", by_alias=True))

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def gguf(request: web.Request) -> web.Response:
        if service.models is None:
            return web.json_response(
                {"error": "this GPU agent has no model folder (--model-root)"}, status=404)
        try:
            shape = await asyncio.to_thread(service.models.shape,
                                            request.query.get("path", ""),
                                            request.query.get("hostPath"))
        except ModelFileRefused as refused:
            return web.json_response({"error": refused.message}, status=refused.status)
        return web.json_response(shape_to_json(shape))

    async def warm(request: web.Request) -> web.Response:
        if service.warmer is None:
            return web.json_response(
                {"error": "this GPU agent keeps no page cache (--page-cache-budget)"},
                status=404)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        try:
            service.warmer.want(parse_warm_request(body))
        except ModelFileRefused as refused:
            return web.json_response({"error": refused.message}, status=refused.status)
        return web.json_response(service.warmer.report().model_dump(mode="json",
                                                                    by_alias=True))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/snapshot", snapshot)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/gguf", gguf)
    app.router.add_put("/warm", warm)
    return app


async def serve(service: AgentService, host: str, port: int) -> None:
    """Serves until SIGTERM or SIGINT."""
    runner = web.AppRunner(build_app(service), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    logger.info("GPU agent for node %s listening on %s:%d", service.reader.node, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(service.run(), name="gpu-agent-reader")]
    if service.warmer is not None:
        tasks.append(asyncio.create_task(service.warmer.run(service.interval),
                                         name="gpu-agent-page-cache"))
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()


def run_agent(node: str, host: str, port: int, interval: float, proc_root: Path,
              models: ModelHeaders | None = None,
              make_warmer: Callable[[], Warmer] | None = None) -> int:
    """``hybrid-compute agent``: serve the node's GPU telemetry until stopped."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reader = GpuReader(node, load_nvml, proc_cgroup_reader(proc_root),
                       read_name=proc_name_reader(proc_root))
    warmer = make_warmer() if make_warmer else None
    asyncio.run(serve(AgentService(reader, interval, models, warmer), host, port))
    return 0
