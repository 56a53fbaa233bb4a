"""Services of the local cluster without cluster DNS or kube-proxy.

Each pod of the process node listens on its own loopback address (127.x.y.z: the
whole of 127/8 is local on Linux), so several llama-servers use port 8080 side by
side. Those addresses are reachable but unstable across swaps, so the node agent
also serves one loopback port where ``/{namespace}/{service}/{port}/{path}``
reaches ``{path}`` on a Ready pod that the Service selects, on this node or on
another process node of the cluster (or on any running one, for a Service that
publishes not-ready addresses), at the Service port's target port: what ``http://{service}.{namespace}.svc:{port}/{path}``
would reach in a real cluster. The operator of the local cluster runs with
``--endpoint-template http://127.0.0.1:PROXY/{namespace}/{service}/{port}/v1``,
so the LiteLLM config it renders, its drain probe (``.../slots``) and its
evaluator reach the pods that actually run.

Responses are streamed through as they come (server-sent events of a streamed
completion arrive token by token); a Service without a Ready pod answers 503.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web

from hybrid_compute.dev.containers import container_port
from hybrid_compute.dev.kube_rest import KubeError, KubeRest

SERVICE_CACHE_SECONDS = 1.0
# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself.
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-authenticate",
                            "proxy-authorization", "te", "trailer", "transfer-encoding",
                            "upgrade", "host", "content-length"})


def proxy_prefix(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def endpoint_template(port: int) -> str:
    """The operator's ``--endpoint-template`` for Services behind this proxy."""
    return proxy_prefix(port) + "/{namespace}/{service}/{port}/v1"


Backend = tuple[str, dict[str, Any], bool]
"""A running pod's address, its object, and whether it is Ready."""


class ServiceProxy:
    """``backends`` are the Ready pods of this proxy's own node, known at once;
    Ready pods of other nodes (another process node of the cluster) are read from
    the API server when the node has none for a Service."""

    def __init__(self, kube: KubeRest, backends: Callable[[str], Iterable[Backend]],
                 node: str) -> None:
        self.kube = kube
        self.backends = backends
        self.node = node
        self._services: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{namespace}/{service}/{port:\\d+}/{tail:.*}", self.forward)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No timeout: a held request waits for a swap, a completion may stream
            # for minutes; no decompression: bytes pass through as sent.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False)
        return self._session

    async def _service(self, namespace: str, name: str) -> dict[str, Any] | None:
        key = (namespace, name)
        cached = self._services.get(key)
        if cached and time.monotonic() - cached[0] < SERVICE_CACHE_SECONDS:
            return cached[1]
        try:
            found: dict[str, Any] | None = await self.kube.get(
                f"/api/v1/namespaces/{namespace}/services/{name}")
        except KubeError as error:
            if error.status != 404:
                raise
            found = None
        self._services[key] = (time.monotonic(), found)
        return found

    async def target(self, namespace: str, name: str, port: int) -> tuple[str, int] | str:
        """A Ready pod's address and port for the Service port (any running pod's for
        a Service that publishes not-ready addresses), or why there is none."""
        service = await self._service(namespace, name)
        if service is None:
            return f"service {namespace}/{name} not found"
        ports = service["spec"].get("ports") or []
        declared = next((p for p in ports if int(p["port"]) == port), None)
        if declared is None:
            return f"service {namespace}/{name} has no port {port}"
        selector: dict[str, str] = service["spec"].get("selector") or {}
        if not selector:
            return f"service {namespace}/{name} selects no pods"
        target = declared.get("targetPort", port)
        not_ready_too = bool(service["spec"].get("publishNotReadyAddresses"))
        candidates = _addresses(self.backends(namespace), selector, target, not_ready_too)
        if not candidates:
            candidates = _addresses(await self._other_nodes_ready_pods(namespace, selector),
                                    selector, target, not_ready_too)
        if not candidates:
            return f"service {namespace}/{name} has no Ready pod"
        return candidates[next(self._turn) % len(candidates)]

    async def _other_nodes_ready_pods(self, namespace: str,
                                      selector: dict[str, str]) -> list[Backend]:
        listed = await self.kube.get(
            f"/api/v1/namespaces/{namespace}/pods",
            labelSelector=",".join(f"{k}={v}" for k, v in sorted(selector.items())))
        found = []
        for pod in listed.get("items") or []:
            status = pod.get("status") or {}
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in status.get("conditions") or [])
            if (ready and status.get("podIP") and pod["spec"].get("nodeName") != self.node
                    and not pod["metadata"].get("deletionTimestamp")):
                found.append((status["podIP"], pod, True))
        return found

    async def forward(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        target = await self.target(info["namespace"], info["service"], int(info["port"]))
        if isinstance(target, str):
            return web.json_response({"error": {"message": target, "type": "unavailable"}},
                                     status=503)
        ip, port = target
        url = f"http://{ip}:{port}/{info['tail']}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        body = await request.read()
        response: web.StreamResponse | None = None
        try:
            async with self._client().request(
                    request.method, url, params=request.query, headers=headers,
                    data=body or None, allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _NOT_FORWARDED:
                        response.headers.add(key, value)
                if upstream.headers.get("Content-Length") and not upstream.headers.get(
                        "Transfer-Encoding"):
                    response.content_length = int(upstream.headers["Content-Length"])
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectionError as error:
            if response is not None and response.prepared:
                return response  # the pod went away mid-answer; the client sees it cut
            return web.json_response({"error": {"message": f"{url}: {error}",
                                                "type": "unavailable"}}, status=502)


def _addresses(backends: Iterable[Backend], selector: dict[str, str],
               target: int | str, not_ready_too: bool) -> list[tuple[str, int]]:
    """Address and port of each pod that ``selector`` selects, that is Ready (or
    only running, with ``not_ready_too``) and that declares ``target`` (a port
    number or a named container port)."""
    found = []
    for ip, pod, ready in backends:
        labels = pod["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.items()) or not (
                ready or not_ready_too):
            continue
        number = next((container_port(c, target) for c in pod["spec"]["containers"]
                       if container_port(c, target) is not None), None)
        if number is not None:
            found.append((ip, number))
    return found
