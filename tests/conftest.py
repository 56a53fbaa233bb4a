"""Shared fixtures. Cluster tests (marker ``cluster``) run against the project's own
local control plane, started once per session (or reused when already up)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from kubernetes import client

from hybrid_compute.agent.nvml import ProcessMemory
from hybrid_compute.agent.server import AgentService, build_app
from hybrid_compute.agent.snapshot import GpuReader
from hybrid_compute.control import kube
from hybrid_compute.control.clock import OFFSET_FILE_ENV
from hybrid_compute.dev.bootstrap import bootstrap_manifests
from hybrid_compute.dev.cluster import DevCluster, free_port
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME
from tests.fake_nvml import FakeGpu, FakeNvml

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
# A second checkout (or a second run) can use a cluster of its own beside this one.
TEST_CLUSTER_NAME = os.environ.get("HYBRID_COMPUTE_TEST_CLUSTER", "test")


class TestCluster:
    """The running test cluster: kubectl, API clients and helpers."""

    __test__ = False

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig
        self.api = kube.load_client(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True):  # type: ignore[no-untyped-def]
        return self.cluster.kubectl(*args, input_text=input_text, check=check)

    def release_namespace(self, name: str) -> None:
        """Frees the GPU for whatever runs next: deletes the namespace's slots and
        workloads and waits for their pods, then lets the namespace go in the
        background."""
        self.kubectl("delete", "modelslots,gpuworkloads,deployments,jobs", "--all", "-n", name,
                     "--wait=false", check=False)
        self.kubectl("wait", "--for=delete", "pods", "--all", "-n", name, "--timeout=60s",
                     check=False)
        self.kubectl("delete", "namespace", name, "--wait=false", check=False)


def refuse_foreign_kubeconfig(cluster: DevCluster) -> None:
    """Tests may only ever talk to the cluster this suite started."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    if config.get("current-context") != cluster.context_name or server != cluster.server:
        raise RuntimeError(
            f"refusing to run cluster tests against {server} "
            f"(context {config.get('current-context')!r}): not the test cluster")
    if not server.startswith("https://127.0.0.1:"):
        raise RuntimeError(f"refusing a non-loopback test cluster at {server}")


@pytest.fixture(scope="session")
def k8s() -> Iterator[TestCluster]:
    """The local control plane with the CRDs installed and the dreamteam node Ready."""
    cluster = DevCluster(TEST_CLUSTER_NAME)
    seconds = cluster.up(manifests=bootstrap_manifests(REPOSITORY_ROOT, samples=False),
                         log=True)
    refuse_foreign_kubeconfig(cluster)
    print(f"\ntest cluster ready in {seconds:.1f}s at {cluster.server}")
    yield TestCluster(cluster)
    if os.environ.get("HYBRID_COMPUTE_KEEP_TEST_CLUSTER") != "1":
        cluster.down(quiet=True)


@dataclass(frozen=True)
class OperatorHandle:
    """The operator process the cluster tests share, and how to reach its API."""

    cluster: DevCluster
    health_port: int
    api_port: int
    token: str
    metrics_port: int = 0
    args: tuple[str, ...] = ()
    """The operator's command-line settings, which a restart keeps."""

    def scrape(self) -> str:
        """The operator's Prometheus /metrics text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             token: str | None = None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {token if token is not None else self.token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def demand(self, alias: str) -> None:
        status, body = self.call("POST", "/v1/demand", {"alias": alias})
        assert status == 202, (status, body)

    @property
    def clock_file(self) -> Path:
        return self.cluster.folder / "clock-offset"

    def set_clock(self, moment: datetime.datetime) -> None:
        """Moves the operator's clock (only the operator's) to ``moment``."""
        offset = (moment - datetime.datetime.now(datetime.UTC)).total_seconds()
        self.clock_file.write_text(f"{offset:.3f}")

    def reset_clock(self) -> None:
        self.clock_file.write_text("0")

    def restart(self, kill: bool = False) -> None:
        self.stop(kill)
        self.start()

    def stop(self, kill: bool = False) -> None:
        """Ends the operator process (SIGTERM, or SIGKILL as a crash would)."""
        state = self.cluster.state()
        assert state is not None
        pid = state.pids["operator"]
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        while True:
            try:
                os.waitpid(pid, os.WNOHANG)
                os.kill(pid, 0)
            except (ChildProcessError, ProcessLookupError):
                break
            time.sleep(0.05)

    def start(self) -> None:
        """Starts it again on the same ports, with the same settings."""
        state = self.cluster.state()
        assert state is not None
        self.cluster.start_operator(extra_args=self.args, ports=state.ports,
                                    extra_env=operator_env(self.cluster))


# Short enough that tests need not wait, long enough to show it works.
# The project's GPU agent, reading a simulated RTX 3090 (no NVIDIA driver exists
# here), serves the operator the dreamteam node's telemetry.
SIMULATED_AGENT_PORT = free_port()

# LiteLLM runs on this host in the serving tests, beside llama-server processes
# listening on each slot's port.
OPERATOR_ARGS = ("--min-residency=2s", "--endpoint-template=http://127.0.0.1:{port}/v1",
                 f"--gpu-agent=http://127.0.0.1:{SIMULATED_AGENT_PORT}")


class SimulatedGpuAgent:
    """``hybrid-compute agent``'s server over a fake NVML, in a thread of this
    process; tests change ``gpu`` to change what the operator reads."""

    def __init__(self, port: int) -> None:
        self.nvml = FakeNvml(gpus=[FakeGpu()])
        self.gpu = self.nvml.gpus[0]
        self.port = port
        self.foreign: dict[int, str] = {}
        """pid -> command name of the processes outside the cluster it reports."""
        self.service = AgentService(
            GpuReader(DEFAULT_NODE_NAME, lambda: self.nvml, self._cgroup,
                      read_name=self.foreign.get), interval=0.5)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _cgroup(self, pid: int) -> str | None:
        """Foreign processes sit in a desktop session's cgroup, as on a home machine."""
        return "0::/user.slice/user-1000.slice/session-2.scope\n" if pid in self.foreign \
            else None

    def run_foreign(self, pid: int, name: str, used_bytes: int) -> None:
        """A process that is not a pod (a game, say) takes ``used_bytes`` of the card."""
        self.foreign[pid] = name
        self.gpu.processes = [*self.gpu.processes, ProcessMemory(pid, used_bytes)]
        self.gpu.used_bytes += used_bytes

    def end_foreign(self, pid: int) -> None:
        ending = [p for p in self.gpu.processes if p.pid == pid]
        self.gpu.processes = [p for p in self.gpu.processes if p.pid != pid]
        self.gpu.used_bytes -= sum(p.used_bytes or 0 for p in ending)
        self.foreign.pop(pid, None)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)

    async def _serve(self) -> None:
        self.runner = web.AppRunner(build_app(self.service), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.reading = asyncio.create_task(self.service.run())

    def stop(self) -> None:
        async def shutdown() -> None:
            self.reading.cancel()
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="session")
def gpu_agent() -> Iterator[SimulatedGpuAgent]:
    agent = SimulatedGpuAgent(SIMULATED_AGENT_PORT)
    agent.start()
    yield agent
    agent.stop()


def operator_env(cluster: DevCluster) -> dict[str, str]:
    clock_file = cluster.folder / "clock-offset"
    if not clock_file.exists():
        clock_file.write_text("0")
    return {OFFSET_FILE_ENV: str(clock_file)}


def start_operator(cluster: DevCluster, args: tuple[str, ...]) -> OperatorHandle:
    """``hybrid-compute run`` with ``args`` as a separate process against ``cluster``
    (any operator it ran before is stopped first), and how to reach it."""
    cluster.stop_operator()
    cluster.start_operator(extra_args=args, extra_env=operator_env(cluster))
    state = cluster.state()
    assert state is not None
    return OperatorHandle(cluster, state.ports["operator-health"], state.ports["operator-api"],
                          cluster.api_token_file.read_text().strip(),
                          state.ports["operator-metrics"], args)


@pytest.fixture(scope="session")
def operator(k8s: TestCluster, gpu_agent: SimulatedGpuAgent) -> Iterator[OperatorHandle]:
    """``hybrid-compute run`` as a separate process against the test cluster."""
    yield start_operator(k8s.cluster, OPERATOR_ARGS)
    k8s.cluster.stop_operator()


@pytest.fixture
def namespace(k8s: TestCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted (and waited for) afterwards."""
    readable = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())
    name = f"t-{readable[:40].strip('-')}-{uuid.uuid4().hex[:6]}"
    k8s.kubectl("create", "namespace", name)
    yield name
    k8s.release_namespace(name)
