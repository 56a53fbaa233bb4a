"""``hybrid-compute agent``: a node's GPU agent (NVML telemetry, GGUF headers, the
page-cache warmer)."""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    agent = commands.add_parser("agent", help="serve this node's GPU telemetry (NVML) as "
                                              "Prometheus metrics and a JSON snapshot")
    agent.add_argument("--port", type=int, default=9400,
                       help="port of /metrics, /snapshot and /healthz (default 9400)")
    agent.add_argument("--host", default="0.0.0.0", help="address to listen on")
    agent.add_argument("--node-name",
                       help="node the GPUs belong to (default: $NODE_NAME, else the host name)")
    agent.add_argument("--interval", type=float, default=5.0,
                       help="seconds between two readings (default 5)")
    agent.add_argument("--proc-root", default="/proc",
                       help="where to read processes' cgroups to find their pods; needs "
                            "the host's PID namespace (default /proc)")
    agent.add_argument("--model-root", metavar="FOLDER",
                       help="the node's model folder as mounted in the agent: /gguf serves "
                            "the header of a GGUF file under it, for the operator's VRAM "
                            "estimate (default: none, /gguf answers 404)")
    agent.add_argument("--model-host-path", default="/models", metavar="FOLDER",
                       help="what --model-root is on the node, the hostPath ModelSlots name "
                            "(default /models)")
    agent.add_argument("--page-cache-budget", metavar="QUANTITY",
                       help="RAM to keep Standby slots' model files warm in the page cache "
                            "(PUT /warm names them), e.g. 32Gi; needs --model-root "
                            "(default: none)")
    agent.add_argument("--lock", action="store_true",
                       help="also lock the warm files in memory (mlock); needs CAP_IPC_LOCK "
                            "or a large enough RLIMIT_MEMLOCK, else they are only read")
    agent.add_argument("--memory-pressure-threshold", type=float, default=10.0,
                       metavar="PERCENT",
                       help="release warm files while tasks stall on memory this share of "
                            "the time (/proc/pressure/memory some avg10; default 10)")
    agent.add_argument("--memory-floor", default="1Gi", metavar="QUANTITY",
                       help="release warm files while MemAvailable is below this (default 1Gi)")
    agent.set_defaults(handler=_agent)


def _agent(args: argparse.Namespace) -> int:
    from hybrid_compute.agent.models import ModelHeaders
    from hybrid_compute.agent.server import run_agent

    node = args.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
    models = (ModelHeaders(Path(args.model_root), args.model_host_path)
              if args.model_root else None)
    make_warmer = None
    if args.page_cache_budget:
        from hybrid_compute.agent.warmer import node_warmer
        from hybrid_compute.api.common import parse_bytes

        if models is None:
            print("error: --page-cache-budget needs --model-root: the files it keeps warm "
                  "are under the model folder", file=sys.stderr)
            return 2
        try:
            budget, floor = parse_bytes(args.page_cache_budget), parse_bytes(args.memory_floor)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        make_warmer = functools.partial(node_warmer, models, budget, args.lock,
                                        args.memory_pressure_threshold, floor,
                                        Path(args.proc_root))
    return run_agent(node, args.host, args.port, args.interval, Path(args.proc_root), models,
                     make_warmer)
