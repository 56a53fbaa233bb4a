"""Container probes as the kubelet evaluates them: a probe runs every
``periodSeconds`` after ``initialDelaySeconds``; ``successThreshold`` passes in a
row make it succeed, ``failureThreshold`` failures in a row make it fail; an HTTP
probe passes on a status from 200 to 399 within ``timeoutSeconds``.

Only ``httpGet`` and ``tcpSocket`` are carried out; an ``exec`` or ``grpc`` probe
counts as passing (no container filesystem exists to run it in), which the agent
notes in the pod's status.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from hybrid_compute.dev.containers import container_port


@dataclass(frozen=True)
class ProbeSpec:
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int
    path: str | None
    port: int | None
    scheme: str
    tcp: bool

    @classmethod
    def from_spec(cls, spec: dict[str, Any], container: dict[str, Any]) -> ProbeSpec:
        http = spec.get("httpGet")
        tcp = spec.get("tcpSocket")
        target = http or tcp or {}
        port = container_port(container, target["port"]) if "port" in target else None
        return cls(
            initial_delay=float(spec.get("initialDelaySeconds", 0)),
            period=float(spec.get("periodSeconds", 10)),
            timeout=float(spec.get("timeoutSeconds", 1)),
            success_threshold=int(spec.get("successThreshold", 1)),
            failure_threshold=int(spec.get("failureThreshold", 3)),
            path=(http.get("path") or "/") if http else None,
            port=port,
            scheme=(http.get("scheme") or "HTTP").lower() if http else "http",
            tcp=tcp is not None,
        )

    @property
    def carried_out(self) -> bool:
        return self.port is not None and (self.path is not None or self.tcp)


class ProbeTracker:
    """One probe of one container run: when it is due and what it concluded."""

    def __init__(self, spec: ProbeSpec, started_at: float) -> None:
        self.spec = spec
        self.next_at = started_at + spec.initial_delay
        self.successes = 0
        self.failures = 0
        self.passing: bool | None = None
        """None until a threshold is reached."""

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, passed: bool, now: float) -> None:
        self.next_at = now + self.spec.period
        if passed:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.spec.success_threshold:
                self.passing = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= self.spec.failure_threshold:
                self.passing = False


async def run_probe(spec: ProbeSpec, host: str, session: aiohttp.ClientSession) -> bool:
    if not spec.carried_out:
        return True
    if spec.tcp:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, spec.port),
                                               spec.timeout)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True
    url = f"{spec.scheme}://{host}:{spec.port}{spec.path}"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=spec.timeout),
                               allow_redirects=False) as answer:
            return 200 <= answer.status < 400
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
