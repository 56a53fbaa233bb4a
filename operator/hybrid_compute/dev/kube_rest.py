"""A small asynchronous JSON client for the local cluster's API server.

The process node agent speaks to the API server the way a kubelet does, as plain
REST with the kubeconfig's client certificate; plain dicts keep the pod and node
objects exactly as the server sent them (the generated client's models would
drop unknown fields and cost a conversion on every poll).
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class KubeError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


def ssl_context_from_kubeconfig(kubeconfig: Path, scratch: Path) -> tuple[str, ssl.SSLContext]:
    """The server URL and a TLS context with the kubeconfig's CA and client
    certificate (written to ``scratch``, as ``ssl`` only loads keys from files)."""
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    scratch.mkdir(parents=True, exist_ok=True)
    cert, key = scratch / "client.crt", scratch / "client.key"
    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
    key.write_bytes(base64.b64decode(user["client-key-data"]))
    key.chmod(0o600)
    tls = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    tls.load_cert_chain(str(cert), str(key))
    return str(cluster["server"]), tls


class KubeRest:
    """GET, POST, PATCH and DELETE of API paths, returning decoded JSON."""

    def __init__(self, server: str, tls: ssl.SSLContext) -> None:
        self.server = server.rstrip("/")
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, scratch: Path) -> KubeRest:
        return cls(*ssl_context_from_kubeconfig(kubeconfig, scratch))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls),
                timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      params: dict[str, str] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        async with self._client().request(method, self.server + path, data=data,
                                          headers=headers, params=params) as response:
            text = await response.text()
            if response.status >= 400:
                raise KubeError(response.status, text)
            decoded: dict[str, Any] = json.loads(text) if text else {}
            return decoded

    async def watch(self, path: str, resource_version: str, timeout_seconds: int = 300,
                    **params: str) -> AsyncIterator[dict[str, Any]]:
        """The watch events of a list path from ``resource_version`` on, until the
        server ends the watch (after about ``timeout_seconds``)."""
        query = {**params, "watch": "1", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        async with self._client().get(
                self.server + path, params=query, headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        ) as response:
            if response.status >= 400:
                raise KubeError(response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    yield event

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        return await self.request("GET", path, params=params or None)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body)

    async def patch(self, path: str, body: dict[str, Any],
                    content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return await self.request("PATCH", path, body, content_type)

    async def delete(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.request("DELETE", path, body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
