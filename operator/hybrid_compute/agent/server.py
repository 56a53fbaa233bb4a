"""The agent's loop and HTTP endpoints: ``/metrics`` (Prometheus), ``/snapshot``
(the JSON the operator reads) and ``/healthz``.

The endpoints keep answering whatever NVML does: a node whose driver fails is
reported as such, which is what monitoring needs to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hybrid_compute.agent.metrics import agent_registry
from hybrid_compute.agent.nvml import load_nvml
from hybrid_compute.agent.snapshot import GpuReader, NodeSnapshot, proc_cgroup_reader

logger = logging.getLogger("hybrid_compute.agent")


class AgentService:
    """Reads the GPUs every ``interval`` seconds and keeps the latest snapshot."""

    def __init__(self, reader: GpuReader, interval: float = 5.0) -> None:
        self.reader = reader
        self.interval = interval
        self.latest: NodeSnapshot | None = None
        self.registry = agent_registry(lambda: self.latest)
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
        return web.json_response(latest.model_dump(mode="json", by_alias=True))

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/snapshot", snapshot)
    app.router.add_get("/healthz", healthz)
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
    task = asyncio.create_task(service.run(), name="gpu-agent-reader")
    try:
        await stop.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()


def run_agent(node: str, host: str, port: int, interval: float, proc_root: Path) -> int:
    """``hybrid-compute agent``: serve the node's GPU telemetry until stopped."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reader = GpuReader(node, load_nvml, proc_cgroup_reader(proc_root))
    asyncio.run(serve(AgentService(reader, interval), host, port))
    return 0
