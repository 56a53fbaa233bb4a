"""What the router hook costs inside the real LiteLLM proxy.

Two proxies run side by side on the same backend (the stand-in cloud, which
answers at once, so the proxy's own work dominates): one with the hybrid router
hook resolving ``hybrid/auto`` (complex → cloud/frontier), one without it asked
for ``cloud/frontier`` directly, with the same metadata. Short rounds alternate
between them, at 1 and at 50 concurrent requests, and the report compares the
rounds pairwise, so drifting load on a shared machine cancels out.
Targets: the hook adds at most 1 ms to the median and at most 5% of the proxy's
own median latency.

The same hook file is also loaded in this process and its two per-request methods
(the pre-call decision and the response headers) are timed alone, without the
proxy around them: on a shared 2-core machine the proxy's own latency moves by
several percent from round to round, and the in-process figure says how much of
the difference the hook's own work can explain.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hybrid_compute.api.routepolicy import RoutePolicySpec  # noqa: E402
from hybrid_compute.dev import llmtools  # noqa: E402
from hybrid_compute.dev.cloud_stand_in import CloudStandIn  # noqa: E402
from hybrid_compute.dev.cluster import free_port  # noqa: E402
from hybrid_compute.render import litellm_config  # noqa: E402

PLAN = {1: (40, 10), 50: (12, 200)}
"""concurrency -> (rounds, requests per proxy per round)"""
WARMUP = 40
TARGET_ADDED_MS = 1.0
TARGET_RATIO = 0.05
MASTER_KEY = "sk-bench"
FRONTIER_INPUT_PER_M = 3.0
FRONTIER_OUTPUT_PER_M = 15.0
"""The sample policy's cloud/frontier prices. A priced model, as every cloud model
is in use: LiteLLM skips its key budget checks (and their Prometheus budget
metrics) for a model priced at zero, and ``hybrid/auto`` is never that, so a free
cloud model would charge the hooked proxy for budget work the plain one skips."""


def _configs(cloud_url: str, folder: Path) -> tuple[Path, Path]:
    policy = RoutePolicySpec.model_validate({"cloudModels": [
        {"alias": "cloud/frontier", "model": "openai/cloud-frontier", "apiBase": cloud_url,
         "inputCostPerMillion": FRONTIER_INPUT_PER_M,
         "outputCostPerMillion": FRONTIER_OUTPUT_PER_M}]})
    files = litellm_config.config_files(policy, [])
    hooked = folder / "hooked"
    hooked.mkdir()
    for key, text in files.items():
        (hooked / key).write_text(text)
    (hooked / "state.json").write_text(json.dumps({"slots": []}))
    plain = folder / "plain"
    plain.mkdir()
    config = yaml.safe_load(files[litellm_config.CONFIG_KEY])
    config["litellm_settings"]["callbacks"] = [
        c for c in config["litellm_settings"]["callbacks"] if c != litellm_config.CALLBACK]
    config["model_list"] = [m for m in config["model_list"] if m["model_name"] != "hybrid/auto"]
    (plain / "config.yaml").write_text(yaml.safe_dump(config))
    return hooked, plain


def _start(litellm: Path, folder: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_MASTER_KEY": MASTER_KEY,
           "HYBRID_ROUTER_STATE_FILE": str(folder / "state.json")}
    log = (folder / "litellm.log").open("ab")
    process = subprocess.Popen([str(litellm), "--config", str(folder / "config.yaml"),
                                "--port", str(port), "--num_workers", "1"],
                               cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"litellm exited; see {folder / 'litellm.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness",
                                        timeout=2):
                return process
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise RuntimeError("litellm did not start")


async def _load(port: int, body: dict[str, Any], count: int, concurrency: int
                ) -> list[float]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    latencies: list[float] = []
    queue = iter(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{response.status}: {await response.text()}")
                latencies.append(time.perf_counter() - started)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _measure(ports: dict[str, int], bodies: dict[str, dict[str, Any]], cloud: CloudStandIn,
             concurrency: int, rounds: int, batch: int) -> dict[str, list[float]]:
    """Per-round medians for each proxy. Rounds alternate which proxy goes first, and
    each pair of batches runs back to back, so load from elsewhere on the machine
    falls on both alike."""
    medians: dict[str, list[float]] = {"hook": [], "plain": []}
    for round_ in range(rounds):
        order = ("hook", "plain") if round_ % 2 == 0 else ("plain", "hook")
        for name in order:
            cloud.clear()
            latencies = asyncio.run(_load(ports[name], bodies[name], batch, concurrency))
            assert cloud.models_called() == ["cloud-frontier"] * batch
            medians[name].append(statistics.median(latencies))
    return medians


def hook_own_cost(folder: Path, body: dict[str, Any], count: int = 20000) -> float:
    """Seconds per request of the hook's own work: its pre-call decision on the hooked
    proxy's request and its response headers, in this process."""
    os.environ["HYBRID_ROUTER_STATE_FILE"] = str(folder / "state.json")
    spec = importlib.util.spec_from_file_location("bench_hybrid_router",
                                                  folder / "hybrid_router.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hook = module.HybridRouter()

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(count):
            data = json.loads(json.dumps(body))
            await hook.async_pre_call_hook(None, None, data, "acompletion")
            await hook.async_post_call_response_headers_hook(data, None, None)
        assert data["model"] == "cloud/frontier", data["model"]
        return (time.perf_counter() - started) / count

    copy = time.perf_counter()
    for _ in range(count):
        json.loads(json.dumps(body))
    copying = (time.perf_counter() - copy) / count
    return asyncio.run(run()) - copying


def main() -> int:
    litellm = llmtools.installed_litellm()
    if litellm is None:
        print("run `make serving` first: the LiteLLM proxy is not installed", file=sys.stderr)
        return 2
    message = [{"role": "user", "content": "Design a new architecture."}]
    # The same request but for the model: the hook resolves hybrid/auto to what the
    # plain proxy is asked for by name.
    metadata = {"complexity": "complex"}
    bodies = {
        "hook": {"model": "hybrid/auto", "messages": message, "max_tokens": 8,
                 "metadata": metadata},
        "plain": {"model": "cloud/frontier", "messages": message, "max_tokens": 8,
                  "metadata": metadata},
    }
    with CloudStandIn() as cloud, tempfile.TemporaryDirectory() as scratch:
        hooked, plain = _configs(cloud.url, Path(scratch))
        ports = {"hook": free_port(), "plain": free_port()}
        processes = [_start(litellm, hooked, ports["hook"]),
                     _start(litellm, plain, ports["plain"])]
        try:
            for name in ("hook", "plain"):
                asyncio.run(_load(ports[name], bodies[name], WARMUP, 4))
            results = {concurrency: _measure(ports, bodies, cloud, concurrency, rounds, batch)
                       for concurrency, (rounds, batch) in PLAN.items()}
            own = hook_own_cost(hooked, bodies["hook"])
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
    print("router hook cost through the real LiteLLM proxy "
          "(medians of per-round medians; rounds alternate which proxy goes first)")
    for concurrency, (rounds, batch) in PLAN.items():
        medians = results[concurrency]
        hook = statistics.median(medians["hook"]) * 1000
        base = statistics.median(medians["plain"]) * 1000
        paired = statistics.median(h - p for h, p in zip(medians["hook"], medians["plain"],
                                                         strict=True)) * 1000
        ratio = paired / base
        met = paired <= TARGET_ADDED_MS and ratio <= TARGET_RATIO
        print(f"  concurrency {concurrency:>2} ({rounds} rounds of {batch}): median "
              f"{base:7.2f} ms without hook, {hook:7.2f} ms with; added {paired:+.2f} ms "
              f"(median of paired rounds) = {ratio:+.1%} of the proxy's latency "
              f"[{paired / TARGET_ADDED_MS:.2f} of the 1 ms target, "
              f"{ratio / TARGET_RATIO:.2f} of the 5% target]"
              f"{'' if met else '  (a target missed)'}")
    base_c1 = statistics.median(results[1]["plain"])
    print(f"  the hook's own work, in process: {own * 1e6:.1f} us per request (pre-call "
          f"decision and response headers) = {own / base_c1:.2%} of the proxy's median at "
          f"concurrency 1 [{own * 1000 / TARGET_ADDED_MS:.3f} of the 1 ms target]; what "
          f"the proxy adds beyond it is LiteLLM's callback plumbing and round-to-round "
          f"noise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
