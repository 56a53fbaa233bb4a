"""``hybrid-compute dev``: the local cluster (up, down, status, kubeconfig, kubectl,
add-node) and the build of its binaries."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybrid_compute.dev import llmtools
from hybrid_compute.dev.cluster import NODE_BACKENDS, DevCluster
from hybrid_compute.dev.local_serving import endpoint_command
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME, PROFILES
from hybrid_compute.dev.toolchain import KUBERNETES_VERSION, default_toolchain, ensure_toolchain


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = commands.add_parser("dev", help="a local control plane with a simulated GPU node")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_commands.add_parser("up", help="start (or reuse) the local cluster")
    up.add_argument("--node", action="append", default=[], metavar="NAME=PROFILE",
                    help=f"add a GPU node besides {DEFAULT_NODE_NAME}; profiles: "
                         f"{', '.join(sorted(PROFILES))}")
    up.add_argument("--no-operator", action="store_true", help="do not start the operator")
    up.add_argument("--no-samples", action="store_true", help="do not apply the samples")
    up.add_argument("--models", type=Path, metavar="DIR",
                    help="the GPU node's model folder (default: small random-weight models "
                         "for the samples, written once into the cache)")
    up.set_defaults(handler=_dev_up)
    endpoint = dev_commands.add_parser(
        "endpoint", help="print OPENAI_BASE_URL and OPENAI_API_KEY of its LiteLLM (for eval)")
    endpoint.set_defaults(handler=endpoint_command)
    tour = dev_commands.add_parser(
        "tour", help="walk through the seed's story on it (about a minute): real requests, "
                     "their route headers and timings, the swaps they cause")
    tour.set_defaults(handler=_dev_tour)
    down = dev_commands.add_parser("down", help="stop the local cluster and delete its data")
    down.set_defaults(handler=_dev_down)
    status = dev_commands.add_parser("status", help="show processes, ports and nodes")
    status.set_defaults(handler=_dev_status)
    kubeconfig = dev_commands.add_parser("kubeconfig", help="print the kubeconfig path")
    kubeconfig.set_defaults(handler=_dev_kubeconfig)
    add_node = dev_commands.add_parser("add-node", help="add a GPU node")
    add_node.add_argument("node_name")
    add_node.add_argument("--profile", choices=sorted(PROFILES), default="dual-rtx3090")
    add_node.add_argument("--backend", choices=NODE_BACKENDS,
                          help="process: its pods run for real (llama-server, LiteLLM), "
                               "sharing the first node's model folder; kwok: scheduling "
                               f"only (default: as {DEFAULT_NODE_NAME})")
    add_node.set_defaults(handler=_dev_add_node)
    build = dev_commands.add_parser("build", help="build the control plane binaries and helm "
                                                 "(cached)")
    build.add_argument("--serving", action="store_true",
                       help="also install the LiteLLM proxy and build llama-server, which "
                            "the serving tests and benchmarks run")
    build.add_argument("--argocd", action="store_true",
                       help="also build Argo CD's application controller and repo server "
                            "(with kustomize) and install redis-server (apt-get, as root) "
                            "for them, which the Argo CD tests run")
    build.set_defaults(handler=_dev_build)
    image = dev_commands.add_parser(
        "image", help="build the operator's container image from this checkout (with a "
                      "Docker engine, else podman; cached by content)")
    image.add_argument("--install-missing", action="store_true",
                       help="without a Docker engine, install podman and debootstrap with "
                            "apt-get when they are missing (needs root)")
    image.add_argument("--base-image", metavar="REF",
                       help="the base to build on (default: the Dockerfile's with Docker; "
                            "with podman a local Debian bookworm base made by debootstrap)")
    image.set_defaults(handler=_dev_image)
    kubectl = dev_commands.add_parser("kubectl", help="run the matching kubectl against it")
    kubectl.add_argument("kubectl_args", nargs=argparse.REMAINDER, metavar="ARGS")
    kubectl.set_defaults(handler=_dev_kubectl)
    for sub in (up, down, status, kubeconfig, add_node, kubectl, endpoint, tour):
        sub.add_argument("--name", default="dev", help="cluster name (default: dev)")


def _dev_up(args: argparse.Namespace) -> int:
    from hybrid_compute.dev import local_serving
    from hybrid_compute.dev.bootstrap import repository_root

    cluster = DevCluster(args.name)
    extra = [tuple(spec.split("=", 1)) for spec in args.node]
    for node_name, profile in extra:
        if profile not in PROFILES:
            print(f"unknown node profile {profile!r} for {node_name}; known: "
                  f"{', '.join(sorted(PROFILES))}", file=sys.stderr)
            return 2
    seconds = local_serving.up(cluster, repository_root(),
                               extra_nodes=[(n, p) for n, p in extra],
                               samples=not args.no_samples, operator=not args.no_operator,
                               models=args.models)
    print(f"cluster {cluster.name!r} ready in {seconds:.1f}s at {cluster.server}")
    print(f"  GPU node: {DEFAULT_NODE_NAME} ({PROFILES['rtx3090'].description}), "
          "played by local processes")
    local_serving.print_usage(cluster, _name_flag(args.name))
    print(f"  kubeconfig: {cluster.kubeconfig}")
    print(f"  use it:     export KUBECONFIG={cluster.kubeconfig}; kubectl get nodes,hybrid -A")
    print(f"  or:         hybrid-compute dev kubectl get nodes   "
          f"(kubectl {KUBERNETES_VERSION} at {default_toolchain().binary('kubectl')})")
    print(f"  logs:       {cluster.folder / 'logs'}")
    print(f"  stop it:    hybrid-compute dev down{_name_flag(args.name)}")
    return 0


def _dev_tour(args: argparse.Namespace) -> int:
    from hybrid_compute.dev.tour import tour_command

    return tour_command(args)


def _name_flag(name: str) -> str:
    return "" if name == "dev" else f" --name {name}"


def _dev_down(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.name)
    stopped = cluster.down()
    print(f"cluster {args.name!r} is down ({len(stopped)} processes stopped)")
    return 0


def _dev_status(args: argparse.Namespace) -> int:
    description = DevCluster(args.name).describe()
    print(json.dumps(description, indent=2))
    return 0 if description["running"] else 1


def _cluster_that_is_up(name: str) -> DevCluster | None:
    """The named cluster when it has been started, else None (and says so)."""
    cluster = DevCluster(name)
    if cluster.state() is None:
        print(f"cluster {name!r} is not up; start it with `hybrid-compute dev up`",
              file=sys.stderr)
        return None
    return cluster


def _dev_kubeconfig(args: argparse.Namespace) -> int:
    cluster = _cluster_that_is_up(args.name)
    if cluster is None:
        return 1
    print(cluster.kubeconfig)
    return 0


def _dev_add_node(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.name)
    if not cluster.is_running():
        print(f"cluster {args.name!r} is not running", file=sys.stderr)
        return 1
    state = cluster.state()
    assert state is not None
    backend = args.backend or state.node_backends.get(DEFAULT_NODE_NAME, "kwok")
    models = None
    if backend == "process" and state.node_backends.get(DEFAULT_NODE_NAME) == "process":
        models = (cluster.process_node_folder() / "models").resolve()
    cluster.add_node(args.node_name, args.profile, backend, models)
    cluster.wait_nodes_ready(timeout=60)
    print(f"node {args.node_name} ({PROFILES[args.profile].description}, {backend}) "
          "is Ready")
    return 0


def _dev_build(args: argparse.Namespace) -> int:
    from hybrid_compute.dev.helm import ensure_helm

    tools = ensure_toolchain()
    print(f"control plane binaries: {tools.bin_dir}")
    print(f"helm (for the chart's tests): {ensure_helm()}")
    if args.serving:
        serving = llmtools.ensure_serving_tools()
        print(f"litellm: {serving.litellm}")
        print(f"llama-server: {serving.llama_server}")
    if args.argocd:
        from hybrid_compute.dev.argocd import ensure_argocd, redis_server

        print(f"Argo CD: {ensure_argocd().bin_dir}")
        print(f"redis-server: {redis_server(install_missing=True)}")
    return 0


def _dev_image(args: argparse.Namespace) -> int:
    from hybrid_compute.dev.bootstrap import repository_root
    from hybrid_compute.dev.image import ensure_image
    from hybrid_compute.plan.settings import OPERATOR_IMAGE

    checkout = repository_root()
    if checkout is None:
        print("the image is built from a source checkout; run this from one", file=sys.stderr)
        return 1
    image = ensure_image(checkout, install_missing=args.install_missing,
                         base_image=args.base_image)
    print(f"image {image.reference} in {image.builder}'s images, also tagged "
          f"{OPERATOR_IMAGE}")
    return 0


def _dev_kubectl(args: argparse.Namespace) -> int:
    cluster = _cluster_that_is_up(args.name)
    if cluster is None:
        return 1
    result = cluster.kubectl(*args.kubectl_args, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode
