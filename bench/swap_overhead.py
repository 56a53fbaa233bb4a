"""Control-plane overhead of a swap on the local cluster (kwok delays at zero).

Twenty times: ask for ``local/quality`` while ``local/fast`` holds the GPU, and
measure, from watch events received here,
  * demand -> incoming pod created (the outgoing pod must be gone first), and
  * incoming pod Ready -> slot Ready (what the router waits for).
Between rounds ``quality`` idles out (1 s) and ``fast`` comes back; one swap before
them is not measured (a freshly started operator's first drain waits for routers
that may have fetched from its predecessor). Then the same
again with ``--crowd`` (1,000) other slots in Standby in another namespace; the last
line is the ratio of the crowded figures to the lone ones.
Targets: p50 <= 0.25 s and p99 <= 1 s for each; with the crowd, at most 1.5 times
the lone figures (demand -> incoming pod created).

    .venv/bin/python bench/swap_overhead.py [--rounds 20] [--crowd 1000]
It also prints each phase of the swaps as the operator recorded them in
``status.lastSwapPhases`` (no llama-server runs here, so the drain is the
operator asking an absent /slots; kwok marks pods running and Ready at once, so
container start is the readiness delay and model load is zero).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import crowd
from kubernetes import client, watch
from process_stats import cpu_seconds

from hybrid_compute.control import kube
from hybrid_compute.dev.bootstrap import bootstrap_manifests
from hybrid_compute.dev.cluster import DevCluster

ROUNDS = 20
CROWD = 1000
TARGET_P50 = 0.25
TARGET_P99 = 1.0
TARGET_CROWD = 1.5
SETTLE_SECONDS = 10.0
NAMESPACE = "bench"


def slots() -> list[dict[str, Any]]:
    def slot(name: str, alias: str, vram: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "hybridcompute.io/v1alpha1", "kind": "ModelSlot",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"alias": alias, "model": {"path": f"{name}.gguf", "vram": vram},
                         "minResidency": "0s", **spec}}
    return [slot("fast", "local/fast", "7Gi", default=True),
            slot("quality", "local/quality", "20Gi", activation="OnDemand",
                 idleTimeout="1s", priority=200)]


class Recorder:
    """Receipt times of pod and slot watch events."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.pod_created: dict[str, float] = {}
        self.pod_ready: dict[str, float] = {}
        self.slot_ready: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        for target in (self._pods, self._slots):
            threading.Thread(target=self._quietly, args=(target,), daemon=True).start()

    @staticmethod
    def _quietly(target: Any) -> None:
        """The watches end with an error when the cluster goes down at the end."""
        with contextlib.suppress(Exception):
            target()

    def _pods(self) -> None:
        for event in watch.Watch().stream(self.core.list_namespaced_pod, NAMESPACE):
            now = time.monotonic()
            pod = event["object"]
            name = pod.metadata.name
            ready = any(c.type == "Ready" and c.status == "True"
                        for c in pod.status.conditions or [])
            with self.lock:
                self.pod_created.setdefault(name, now)
                if ready:
                    self.pod_ready.setdefault(name, now)

    def _slots(self) -> None:
        previous: dict[str, str | None] = {}
        for event in watch.Watch().stream(self.custom.list_namespaced_custom_object,
                                          "hybridcompute.io", "v1alpha1", NAMESPACE,
                                          "modelslots"):
            now = time.monotonic()
            body = event["object"]
            name = body["metadata"]["name"]
            phase = (body.get("status") or {}).get("phase")
            with self.lock:
                if phase == "Ready" and previous.get(name) != "Ready":
                    self.slot_ready.append((name, now))
                previous[name] = phase


def phase(custom: client.CustomObjectsApi, name: str) -> str | None:
    body = custom.get_namespaced_custom_object("hybridcompute.io", "v1alpha1", NAMESPACE,
                                               "modelslots", name)
    return (body.get("status") or {}).get("phase")


def wait(predicate: Any, custom: client.CustomObjectsApi, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    slots = custom.list_namespaced_custom_object("hybridcompute.io", "v1alpha1", NAMESPACE,
                                                 "modelslots")["items"]
    seen = "; ".join(f"{s['metadata']['name']}: {(s.get('status') or {}).get('phase')} "
                     f"({(s.get('status') or {}).get('reason')})" for s in slots)
    raise TimeoutError(f"the cluster did not settle in {timeout:.0f} s: {seen}")


def post_demand(request: urllib.request.Request) -> float:
    """Sends the demand and returns when it was sent. A restarted operator answers 503
    until it holds the leader Lease and has observed the cluster."""
    deadline = time.monotonic() + 60
    while True:
        asked = time.monotonic()
        try:
            urllib.request.urlopen(request, timeout=5).close()
            return asked
        except urllib.error.HTTPError as error:
            if error.code != 503 or asked > deadline:
                raise
            time.sleep(0.2)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass
class Swaps:
    """The figures of a run of swaps."""

    to_created: list[float] = field(default_factory=list)
    to_routed: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    """The operator's passes during the swaps: stage -> (seconds in all, passes)."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each of the cluster's processes used during the swaps."""
    seconds: float = 0.0
    """How long the swaps took, in all."""


def cluster_cpu_seconds(cluster: DevCluster) -> dict[str, float]:
    """CPU seconds (user and system) each process of the cluster has used so far."""
    state = cluster.state()
    assert state is not None
    used = {}
    for name, pid in state.pids.items():
        with contextlib.suppress(OSError):
            used[name] = cpu_seconds(pid)
    return used


def pass_stages(cluster: DevCluster) -> dict[str, tuple[float, float]]:
    """The operator's hybrid_compute_pass_stage_duration_seconds so far: stage ->
    (sum, count)."""
    state = cluster.state()
    assert state is not None
    url = f"http://127.0.0.1:{state.ports['operator-metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = re.match(r'hybrid_compute_pass_stage_duration_seconds_(sum|count)'
                         r'\{stage="(\w+)"\} (\S+)', line)
        if match:
            totals = found.setdefault(match[2], [0.0, 0.0])
            totals[0 if match[1] == "sum" else 1] = float(match[3])
    return {stage: (totals[0], totals[1]) for stage, totals in found.items()}


def swap(cluster: DevCluster, custom: client.CustomObjectsApi, recorder: Recorder,
         rounds: int) -> Swaps:
    """``rounds`` swaps from fast to quality and back; quality idles out between them."""
    state = cluster.state()
    assert state is not None
    token = cluster.api_token_file.read_text().strip()
    demand_url = f"http://127.0.0.1:{state.ports['operator-api']}/v1/demand"
    swaps = Swaps()
    stages_before = pass_stages(cluster)
    cpu_before, began = cluster_cpu_seconds(cluster), time.monotonic()
    for _ in range(rounds):
        wait(lambda: phase(custom, "fast") == "Ready"
             and phase(custom, "quality") == "Standby", custom)
        with recorder.lock:
            known = set(recorder.pod_created)
            ready_count = len(recorder.slot_ready)
        request = urllib.request.Request(
            demand_url, data=json.dumps({"alias": "local/quality"}).encode(),
            headers={"Authorization": f"Bearer {token}"}, method="POST")
        asked = post_demand(request)
        wait(lambda seen=ready_count: any(  # type: ignore[misc]
            n == "quality" for n, _ in recorder.slot_ready[seen:]), custom)
        with recorder.lock:
            pod = next(n for n in recorder.pod_created
                       if n.startswith("quality-") and n not in known)
            created = recorder.pod_created[pod]
            pod_ready = recorder.pod_ready[pod]
            slot_ready = next(t for n, t in recorder.slot_ready[ready_count:]
                              if n == "quality")
        swaps.to_created.append(created - asked)
        swaps.to_routed.append(slot_ready - pod_ready)
        status = custom.get_namespaced_custom_object(
            "hybridcompute.io", "v1alpha1", NAMESPACE, "modelslots", "quality")["status"]
        for name, seconds in (status.get("lastSwapPhases") or {}).items():
            swaps.phases.setdefault(name, []).append(seconds)
    swaps.stages = {stage: (total - stages_before.get(stage, (0.0, 0.0))[0],
                            count - stages_before.get(stage, (0.0, 0.0))[1])
                    for stage, (total, count) in pass_stages(cluster).items()}
    swaps.seconds = time.monotonic() - began
    swaps.cpu = {name: used - cpu_before.get(name, 0.0)
                 for name, used in cluster_cpu_seconds(cluster).items()}
    return swaps


def report(title: str, swaps: Swaps) -> None:
    print(title)
    for label, values in (("demand -> incoming pod created", swaps.to_created),
                          ("pod Ready -> slot Ready", swaps.to_routed)):
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        print(f"  {label}: p50 {p50:.3f} s, p99 {p99:.3f} s over {len(values)} swaps; "
              f"p50/target = {p50 / TARGET_P50:.2f}, p99/target = {p99 / TARGET_P99:.2f}")
    print("  phases of the swaps, from status.lastSwapPhases:")
    for name, values in swaps.phases.items():
        print(f"  {name:>17}: p50 {statistics.median(values):.2f} s, "
              f"max {max(values):.2f} s over {len(values)} swaps")
    if swaps.cpu:
        cores = os.cpu_count() or 1
        print(f"  CPU used during the swaps ({swaps.seconds:.0f} s; {cores} cores give "
              f"{cores * swaps.seconds:.0f} s): " + ", ".join(
                  f"{name} {used:.1f} s" for name, used in
                  sorted(swaps.cpu.items(), key=lambda item: -item[1]) if used >= 0.05))
    passes = max((count for _, count in swaps.stages.values()), default=0)
    if passes:
        print(f"  the operator's passes meanwhile ({passes:.0f}), mean ms per stage: " + ", ".join(
            f"{stage} {total / count * 1000:.1f}"
            for stage, (total, count) in swaps.stages.items() if count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--crowd", type=int, default=CROWD,
                        help="Standby slots present in the second run (0: no second run)")
    args = parser.parse_args()
    cluster = DevCluster("bench")
    cluster.up(manifests=bootstrap_manifests(None, samples=False), log=True)
    try:
        for namespace in (NAMESPACE, crowd.NAMESPACE):
            cluster.kubectl("create", "namespace", namespace, check=False)
        cluster.stop_operator()
        cluster.start_operator(extra_args=["--min-residency=0s"])
        api = kube.load_client(str(cluster.kubeconfig))
        custom = client.CustomObjectsApi(api)
        recorder = Recorder(api)
        cluster.apply(slots())
        # One swap unmeasured: a freshly started operator lets routers that may have
        # fetched from its predecessor refresh before its first drain ends.
        swap(cluster, custom, recorder, 1)
        alone = swap(cluster, custom, recorder, args.rounds)
        crowded = None
        if args.crowd:
            cluster.apply(crowd.crowd(args.crowd))
            crowd.wait_all_phased(api, args.crowd)
            time.sleep(SETTLE_SECONDS)
            crowded = swap(cluster, custom, recorder, args.rounds)
    finally:
        cluster.down(quiet=True)
    report("alone:", alone)
    if crowded is None:
        return
    report(f"with {args.crowd} other slots present:", crowded)
    ratios = [percentile(crowded.to_created, q) / percentile(alone.to_created, q)
              for q in (0.5, 0.99)]
    print(f"crowd/alone p50={ratios[0]:.2f} p99={ratios[1]:.2f} (target <= {TARGET_CROWD})")


if __name__ == "__main__":
    main()
