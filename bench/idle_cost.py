"""What the operator costs while nothing changes, with many slots in the cluster.

On the local cluster (kwok GPU node), the operator reconciles one default slot
and ``--slots`` OnDemand slots in Standby (no pods). Once every slot has a
phase and a settle time has passed, the operator process's own CPU time
(``/proc/PID/stat``: user + system) is read over ``--seconds`` and its resident
memory (``VmRSS``) at the end. The same is measured first with the default slot
alone, in the same run, so the printed ratio is the cost of the crowd.
Targets: idle CPU <= 2% of a core and RSS <= 150 MB with 1,000 slots. CPU time is
the process's own, so other load on the machine slows it but is not counted.

    .venv/bin/python bench/idle_cost.py [--slots 1000] [--seconds 60]
        [--cluster bench-idle]
"""

from __future__ import annotations

import argparse
import time

from crowd import NAMESPACE, crowd, slot, wait_all_phased
from kubernetes import client
from process_stats import cpu_seconds, rss_mb

from hybrid_compute.control import kube
from hybrid_compute.dev.bootstrap import bootstrap_manifests
from hybrid_compute.dev.cluster import DevCluster

TARGET_CPU_PERCENT = 2.0
TARGET_RSS_MB = 150.0
SETTLE_SECONDS = 15.0


def measure(cluster: DevCluster, custom: client.CustomObjectsApi, expected: int,
            seconds: float) -> tuple[float, float]:
    """Idle CPU (% of one core) and RSS (MB) of the operator once ``expected``
    slots all have a phase."""
    wait_all_phased(custom.api_client, expected)
    time.sleep(SETTLE_SECONDS)
    state = cluster.state()
    assert state is not None
    pid = state.pids["operator"]
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu_seconds(pid) - before, time.monotonic() - started
    return 100 * used / elapsed, rss_mb(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cluster", default="bench-idle",
                        help="local cluster name, so runs beside others do not collide")
    args = parser.parse_args()
    cluster = DevCluster(args.cluster)
    cluster.up(manifests=bootstrap_manifests(None, samples=False), log=True)
    try:
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        cluster.stop_operator()
        cluster.start_operator()
        custom = client.CustomObjectsApi(kube.load_client(str(cluster.kubeconfig)))
        cluster.apply([slot("fast", default=True)])
        alone = measure(cluster, custom, 1, args.seconds)
        cluster.apply(crowd(args.slots))
        crowded = measure(cluster, custom, 1 + args.slots, args.seconds)
    finally:
        cluster.down(quiet=True)
    for label, (cpu, rss) in (("default slot alone", alone),
                              (f"with {args.slots} Standby slots", crowded)):
        print(f"{label}: idle CPU {cpu:.1f}% of a core, RSS {rss:.0f} MB")
    cpu, rss = crowded
    print(f"idle cpu/target={cpu / TARGET_CPU_PERCENT:.2f} rss/target={rss / TARGET_RSS_MB:.2f} "
          f"crowd/alone cpu={cpu / max(alone[0], 0.01):.1f} rss={rss / alone[1]:.2f}")


if __name__ == "__main__":
    main()
