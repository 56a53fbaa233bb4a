"""The process node: the project's own node agent, which plays the kubelet of one
GPU node of the local cluster with real processes.

It registers the Node (the GPU profile's labels and capacity, without kwok's
annotation so kwok leaves it alone), keeps it Ready (the NodeReady condition's
heartbeat and a Lease in ``kube-node-lease``), and plays every pod bound to it
with a :class:`~hybrid_compute.dev.pod_worker.PodWorker`: llama-server for
llama.cpp server images, LiteLLM for the LiteLLM Deployment, a simulation for
anything else.

Addressing: each pod gets its own loopback address as its podIP and its
programs bind there with the container's port; Services are reached through the
agent's proxy (:mod:`service_proxy`). ``GET /_node/pods`` on the proxy port lists
the pods the agent plays, their addresses and process ids; every process start
and exit is also appended to ``processes.jsonl`` in the node's folder.

Run as ``python -m hybrid_compute.dev.process_node``; ``DevCluster`` starts it.
On SIGTERM it stops every process it started (within their grace periods, at
most 10 s) and leaves the pods to the API server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from hybrid_compute.dev import llmtools, nodes
from hybrid_compute.dev.kube_rest import STRATEGIC_MERGE_PATCH, KubeError, KubeRest
from hybrid_compute.dev.pod_worker import PodWorker, Programs
from hybrid_compute.dev.service_proxy import Backend, ServiceProxy
from hybrid_compute.dev.toolchain import KUBERNETES_VERSION

SYNC_RETRY_SECONDS = 0.5
HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 40
SHUTDOWN_GRACE_CAP_SECONDS = 10.0
LEASE_NAMESPACE = "kube-node-lease"
RECORDS_FILE = "processes.jsonl"


def micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


ADDRESSES_PER_BLOCK = 250 * 250


def loopback_address(block: int, index: int) -> str:
    """The ``index``-th pod address of a node's block: 127.{block}.0.1,
    127.{block}.0.2, ... Each cluster's process node has a block of its own (1 to
    254), so clusters side by side on one host never hand out the same address;
    block 0 holds 127.0.0.1, which the control plane and the proxy use."""
    if not 1 <= block <= 254:
        raise ValueError(f"address block {block} is not between 1 and 254")
    return f"127.{block}.{index // 250 % 250}.{index % 250 + 1}"


class ProcessNode:
    def __init__(self, kubeconfig: Path, node: str, profile: nodes.NodeProfile,
                 folder: Path, models: Path, proxy_port: int, address_block: int) -> None:
        self.node = node
        self.address_block = address_block
        self.profile = profile
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # The models folder is reached through a link in the node's folder, so the
        # command lines of the node's programs name the cluster's folder.
        self.models = folder / "models"
        if self.models.is_symlink() or self.models.exists():
            self.models.unlink()
        self.models.symlink_to(models.resolve(), target_is_directory=True)
        self.host_folder = folder / "host"
        self.proxy_port = proxy_port
        self.kube = KubeRest.from_kubeconfig(kubeconfig, folder / "credentials")
        self.http: aiohttp.ClientSession
        self.workers: dict[str, PodWorker] = {}
        self._addresses: dict[str, str] = {}
        self._records = (folder / RECORDS_FILE).open("a")
        self._stopping = asyncio.Event()
        self._started_text = ""
        self._node_uid = ""

    @property
    def programs(self) -> Programs:
        """Looked up at each start: ``make serving`` may finish while the node runs."""
        return Programs(llmtools.installed_llama_server(), llmtools.installed_litellm())

    # ------------------------------------------------------------------ records

    def record(self, event: str, **fields: Any) -> None:
        self._records.write(json.dumps({"event": event, "at": time.time(), **fields}) + "\n")
        self._records.flush()

    def reap_orphans(self) -> None:
        """Ends what an earlier agent of this node started and, killed itself, left
        running: the pods are played afresh and must find their addresses free.
        Only processes whose command line names the node's folder are touched."""
        path = self.folder / RECORDS_FILE
        running: set[int] = set()
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            if entry["event"] == "started":
                running.add(entry["pid"])
            elif entry["event"] == "exited":
                running.discard(entry.get("pid"))
        for pid in running:
            try:
                command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.folder).encode() in command_line:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                self.record("exited", pid=pid, reaped=True)

    def _address_for(self, pod: dict[str, Any]) -> str:
        uid = pod["metadata"]["uid"]
        if uid in self._addresses:
            return self._addresses[uid]
        taken = set(self._addresses.values())
        existing = (pod.get("status") or {}).get("podIP") or ""
        if existing.startswith(f"127.{self.address_block}.") and existing not in taken:
            address = existing
        else:
            address = next(a for a in (loopback_address(self.address_block, i)
                                       for i in range(ADDRESSES_PER_BLOCK))
                           if a not in taken)
        self._addresses[uid] = address
        return address

    def backends(self, namespace: str) -> list[Backend]:
        return [(w.ip, w.pod, w.ready) for w in self.workers.values()
                if w.namespace == namespace and w.running]

    # --------------------------------------------------------------------- node

    def _node_status(self) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
            return {"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": self._started_text}

        manifest = nodes.node_manifest(self.node, self.profile, kwok=False)
        return {
            **manifest["status"],
            "conditions": [
                condition("Ready", "True", "KubeletReady",
                          "the process node agent is posting ready status"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", ""),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                "osImage": "hybrid-compute process node",
                "containerRuntimeVersion": "process://local",
                "kubeletVersion": f"v{KUBERNETES_VERSION}",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }

    async def register(self) -> None:
        self._started_text = datetime.datetime.now(datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        try:
            node = await self.kube.get(f"/api/v1/nodes/{self.node}")
        except KubeError as error:
            if error.status != 404:
                raise
            node = await self.kube.post("/api/v1/nodes",
                                        nodes.node_manifest(self.node, self.profile, kwok=False))
        self._node_uid = node["metadata"]["uid"]
        await self.heartbeat()

    async def heartbeat(self) -> None:
        await self.kube.patch(f"/api/v1/nodes/{self.node}/status",
                              {"status": self._node_status()}, STRATEGIC_MERGE_PATCH)
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.node}"
        try:
            await self.kube.patch(path, {"spec": {"holderIdentity": self.node,
                                                  "renewTime": micro_time()}})
        except KubeError as error:
            if error.status != 404:
                raise
            await self.kube.post(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}"
                                 "/leases", {
                "metadata": {"name": self.node, "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": self.node,
                    "uid": self._node_uid}]},
                "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": micro_time()}})

    async def _heartbeats(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HEARTBEAT_SECONDS)
            if self._stopping.is_set():
                return
            try:
                await self.heartbeat()
            except KubeError as error:
                if error.status == 404:
                    await self.register()  # someone deleted the Node: a kubelet re-registers
                else:
                    self.record("heartbeat-error", error=str(error))
            except aiohttp.ClientError as error:
                self.record("heartbeat-error", error=str(error))

    # --------------------------------------------------------------------- pods

    def _release(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
            self._addresses.pop(worker.uid, None)

    def _play(self, pod: dict[str, Any]) -> None:
        """Starts a worker for a pod seen for the first time; hands a known pod's
        worker its new version."""
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        folder = self.folder / "pods" / (
            f"{pod['metadata']['namespace']}_{pod['metadata']['name']}_{uid[:8]}")
        folder.mkdir(parents=True, exist_ok=True)
        worker = PodWorker(self, pod, self._address_for(pod), folder, self._release)
        self.workers[uid] = worker
        worker.start()

    async def sync(self) -> str:
        """Plays every pod bound to the node; returns the list's resourceVersion."""
        listed = await self.kube.get("/api/v1/pods", fieldSelector=f"spec.nodeName={self.node}")
        seen = set()
        for pod in listed.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._play(pod)
        for uid, worker in list(self.workers.items()):
            if uid not in seen:
                worker.vanish()
        return str(listed["metadata"]["resourceVersion"])

    async def _follow_pods(self) -> None:
        """Lists the node's pods, then follows their watch, as a kubelet does, so a
        pod bound or deleted is played at once; lists again when the watch ends."""
        selector = f"spec.nodeName={self.node}"
        while not self._stopping.is_set():
            try:
                version = await self.sync()
                async for event in self.kube.watch("/api/v1/pods", version,
                                                   fieldSelector=selector):
                    kind, pod = event.get("type"), event.get("object") or {}
                    if kind in ("ADDED", "MODIFIED"):
                        self._play(pod)
                    elif kind == "DELETED":
                        gone = self.workers.get(pod["metadata"]["uid"])
                        if gone is not None:
                            gone.vanish()
                    elif kind == "ERROR":
                        break  # the version expired: list again
            except (KubeError, aiohttp.ClientError, TimeoutError, ValueError) as error:
                self.record("sync-error", error=str(error))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), SYNC_RETRY_SECONDS)

    def describe(self) -> list[dict[str, Any]]:
        return [{"namespace": w.namespace, "name": w.name, "uid": w.uid, "ip": w.ip,
                 "ready": w.ready, "simulated": w.simulated,
                 "containers": {c.name: {"pid": c.process.pid if c.process else None,
                                         "running": c.running, "ready": c.ready,
                                         "restartCount": c.restart_count}
                                for c in w.containers}}
                for w in self.workers.values()]

    # -------------------------------------------------------------------- serve

    async def _pods_view(self, _: web.Request) -> web.Response:
        return web.json_response({"node": self.node, "pods": self.describe()})

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        self.http = aiohttp.ClientSession()
        self.reap_orphans()
        await self.register()
        app = ServiceProxy(self.kube, self.backends, self.node).app()
        app.router.add_get("/_node/pods", self._pods_view)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.proxy_port).start()
        self.record("node-started", node=self.node, proxyPort=self.proxy_port)
        tasks = [loop.create_task(self._heartbeats()), loop.create_task(self._follow_pods())]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        workers = list(self.workers.values())
        for worker in workers:
            if worker.task is not None:
                worker.task.cancel()
        await asyncio.gather(*(w.task for w in workers if w.task), return_exceptions=True)
        await asyncio.gather(*(w.stop_all(grace_cap=SHUTDOWN_GRACE_CAP_SECONDS)
                               for w in workers))
        self.record("node-stopped", node=self.node)
        await runner.cleanup()
        await self.http.close()
        await self.kube.close()
        self._records.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid_compute.dev.process_node",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--profile", choices=sorted(nodes.PROFILES), required=True)
    parser.add_argument("--folder", type=Path, required=True,
                        help="the node's folder: pods' files, logs and process records")
    parser.add_argument("--models", type=Path, required=True,
                        help="the folder that pods' hostPath and claim volumes mount")
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--address-block", type=int, required=True,
                        help="pods get addresses 127.N.x.y (1-254), one N per cluster")
    args = parser.parse_args(argv)
    node = ProcessNode(args.kubeconfig, args.node, nodes.PROFILES[args.profile], args.folder,
                       args.models, args.proxy_port, args.address_block)
    asyncio.run(node.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
