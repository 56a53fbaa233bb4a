"""``hybrid-compute run``: the operator, with the plan's settings from its flags."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hybrid_compute.plan.settings import OPERATOR_IMAGE
from hybrid_compute.render.children import DEFAULT_ENDPOINT_TEMPLATE
from hybrid_compute.upstream import LLAMA_CPP

API_TOKEN_ENV = "HYBRID_COMPUTE_API_TOKEN"

def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    run.add_argument("--namespace", action="append", default=[],
                     help="watch only this namespace (repeatable; default: all)")
    run.add_argument("--health-port", type=int, default=8080,
                     help="port of the /healthz liveness endpoint (0 disables it)")
    run.add_argument("--standalone", action="store_true",
                     help="skip peering with other operator replicas")
    run.add_argument("--api-port", type=int, default=8081,
                     help="port of the demand/state API for the router (default 8081)")
    run.add_argument("--api-token-file",
                     help=f"file with the API's bearer token (default: ${API_TOKEN_ENV})")
    run.add_argument("--min-residency", default="30s",
                     help="default shortest stay of a loaded slot (default 30s)")
    run.add_argument("--headroom", default="1Gi",
                     help="VRAM kept free on every GPU (default 1Gi)")
    run.add_argument("--webhook-port", type=int, default=0,
                     help="serve the admission webhook that refuses slots and workloads "
                          "that can never fit a GPU on this port (HTTPS, self-signed; "
                          "default 0: off)")
    run.add_argument("--webhook-host", default="127.0.0.1",
                     help="name or address the API server reaches the webhook at "
                          "(default 127.0.0.1)")
    run.add_argument("--metrics-port", type=int, default=9090,
                     help="port of the Prometheus /metrics endpoint (default 9090, 0 disables)")
    run.add_argument("--gpu-agent", action="append", default=[], metavar="URL|local",
                     help="GPU agent to read foreign VRAM and utilisation from (repeatable): "
                          "a URL, where {node} stands for each GPU node's name, or 'local' "
                          "to read NVML in this process (single-node installs)")
    run.add_argument("--gpu-runtime-class", default="",
                     help="runtimeClassName for GPU pods (k3s: nvidia, unless NVIDIA's "
                          "runtime is the node's default)")
    run.add_argument("--fetch-image", default=OPERATOR_IMAGE,
                     help="image of the init container that downloads a slot's model "
                          f"(spec.model.source); default {OPERATOR_IMAGE}")
    run.add_argument("--gpu-image", default=LLAMA_CPP.gpu_image,
                     help="llama-server image of GPU slots that name none (default "
                          f"{LLAMA_CPP.gpu_image}, the llama.cpp build the operator's "
                          "flags are tested with)")
    run.add_argument("--cpu-image", default=LLAMA_CPP.cpu_image,
                     help="llama-server image of CPU slots that name none (default "
                          f"{LLAMA_CPP.cpu_image})")
    run.add_argument("--endpoint-template", default=DEFAULT_ENDPOINT_TEMPLATE,
                     help="how LiteLLM reaches a slot's llama-server (default "
                          f"{DEFAULT_ENDPOINT_TEMPLATE}"
                          "; change it only when LiteLLM runs outside the cluster)")
    run.add_argument("--leader-election", action="store_true",
                     help="act only while holding the Lease hybrid-compute-leader, so a "
                          "second replica waits as a standby (its /readyz answers 503)")
    run.add_argument("--leader-election-namespace",
                     help="namespace of that Lease (default: $POD_NAMESPACE, else default)")
    run.add_argument("--dev-cluster", help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from hybrid_compute.api.common import parse_bytes, parse_duration
    from hybrid_compute.control.handlers import run_operator
    from hybrid_compute.plan.settings import PlanSettings

    token = os.environ.get(API_TOKEN_ENV)
    if args.api_token_file:
        try:
            token = Path(args.api_token_file).read_text().strip()
        except OSError as error:
            print(f"error: cannot read --api-token-file: {error}", file=sys.stderr)
            return 2
    try:
        settings = PlanSettings(min_residency=parse_duration(args.min_residency),
                                headroom_bytes=parse_bytes(args.headroom),
                                endpoint_template=_endpoint_template(args.endpoint_template),
                                gpu_runtime_class=args.gpu_runtime_class or None,
                                fetch_image=args.fetch_image,
                                gpu_image=args.gpu_image, cpu_image=args.cpu_image)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_operator(kubeconfig=args.kubeconfig, namespace=args.namespace,
                        health_port=args.health_port, standalone=args.standalone,
                        api_port=args.api_port, api_token=token or None, settings=settings,
                        metrics_port=args.metrics_port, gpu_agents=tuple(args.gpu_agent),
                        webhook_port=args.webhook_port, webhook_host=args.webhook_host,
                        leader_election=args.leader_election,
                        leader_election_namespace=args.leader_election_namespace)


def _endpoint_template(template: str) -> str:
    """Checks the placeholders now, not when the first slot is rendered."""
    try:
        template.format(service="s", namespace="n", port=1, slot="s")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"--endpoint-template {template!r}: unknown placeholder {error}; "
                         "use {service}, {namespace}, {port} or {slot}") from None
    return template
