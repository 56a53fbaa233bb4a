"""The ``hybrid-compute`` command: the operator, a local cluster, the CRD generator."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hybrid_compute.dev.cluster import ClusterError, DevCluster
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME, PROFILES
from hybrid_compute.dev.toolchain import (
    KUBERNETES_VERSION,
    ToolchainError,
    default_toolchain,
    ensure_toolchain,
)

API_TOKEN_ENV = "HYBRID_COMPUTE_API_TOKEN"


def _repository_root() -> Path | None:
    """The source checkout this package runs from, when it runs from one."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "manifests").is_dir() else None


def _dev_up(args: argparse.Namespace) -> int:
    from hybrid_compute.dev.bootstrap import bootstrap_manifests

    cluster = DevCluster(args.name)
    extra = [tuple(spec.split("=", 1)) for spec in args.node]
    for node_name, profile in extra:
        if profile not in PROFILES:
            print(f"unknown node profile {profile!r} for {node_name}; known: "
                  f"{', '.join(sorted(PROFILES))}", file=sys.stderr)
            return 2
    manifests = bootstrap_manifests(_repository_root(), samples=not args.no_samples)
    seconds = cluster.up(
        extra_nodes=[(n, p) for n, p in extra],
        manifests=manifests,
        operator=not args.no_operator,
    )
    print(f"cluster {cluster.name!r} ready in {seconds:.1f}s at {cluster.server}")
    print(f"  GPU node: {DEFAULT_NODE_NAME} ({PROFILES['rtx3090'].description})")
    print(f"  kubeconfig: {cluster.kubeconfig}")
    print(f"  use it:     export KUBECONFIG={cluster.kubeconfig}; kubectl get nodes,hybrid -A")
    print(f"  or:         hybrid-compute dev kubectl get nodes   "
          f"(kubectl {KUBERNETES_VERSION} at {default_toolchain().binary('kubectl')})")
    print(f"  logs:       {cluster.folder / 'logs'}")
    print(f"  stop it:    hybrid-compute dev down{_name_flag(args.name)}")
    return 0


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


def _dev_kubeconfig(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.name)
    if cluster.state() is None:
        print(f"cluster {args.name!r} is not up; start it with `hybrid-compute dev up`",
              file=sys.stderr)
        return 1
    print(cluster.kubeconfig)
    return 0


def _dev_add_node(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.name)
    if not cluster.is_running():
        print(f"cluster {args.name!r} is not running", file=sys.stderr)
        return 1
    cluster.add_node(args.node_name, args.profile)
    cluster.wait_nodes_ready(timeout=60)
    print(f"node {args.node_name} ({PROFILES[args.profile].description}) is Ready")
    return 0


def _dev_build(args: argparse.Namespace) -> int:
    tools = ensure_toolchain()
    print(f"control plane binaries: {tools.bin_dir}")
    return 0


def _dev_kubectl(args: argparse.Namespace) -> int:
    cluster = DevCluster(args.name)
    if cluster.state() is None:
        print(f"cluster {args.name!r} is not up; start it with `hybrid-compute dev up`",
              file=sys.stderr)
        return 1
    result = cluster.kubectl(*args.kubectl_args, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


def _run(args: argparse.Namespace) -> int:
    from hybrid_compute.api.common import parse_bytes, parse_duration
    from hybrid_compute.main import run_operator
    from hybrid_compute.view import PlanSettings

    token = os.environ.get(API_TOKEN_ENV)
    if args.api_token_file:
        try:
            token = Path(args.api_token_file).read_text().strip()
        except OSError as error:
            print(f"error: cannot read --api-token-file: {error}", file=sys.stderr)
            return 2
    try:
        settings = PlanSettings(min_residency=parse_duration(args.min_residency),
                                headroom_bytes=parse_bytes(args.headroom))
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_operator(kubeconfig=args.kubeconfig, namespace=args.namespace,
                        health_port=args.health_port, standalone=args.standalone,
                        api_port=args.api_port, api_token=token or None, settings=settings)


def _plan(args: argparse.Namespace) -> int:
    from hybrid_compute.offline import ManifestError, plan_folder, report

    nodes = [tuple(spec.split("=", 1)) for spec in args.node] or [
        (DEFAULT_NODE_NAME, "rtx3090")]
    for spec in nodes:
        if len(spec) != 2 or spec[1] not in PROFILES:
            print(f"--node takes NAME=PROFILE with PROFILE one of "
                  f"{', '.join(sorted(PROFILES))}", file=sys.stderr)
            return 2
    try:
        result, view = plan_folder([Path(p) for p in args.filename],
                                   [(n, p) for n, p in nodes], args.demand)
    except (ManifestError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not view.slots:
        print("no ModelSlot found", file=sys.stderr)
        return 1
    print(report(result, view))
    invalid = [d for d in result.slots if d.phase == "Failed"]
    return 1 if invalid else 0


def _render_litellm(args: argparse.Namespace) -> int:
    from hybrid_compute.api.routepolicy import RoutePolicySpec
    from hybrid_compute.litellm_config import CONFIG_KEY, RULES_KEY, config_files
    from hybrid_compute.observe import slot_from_object
    from hybrid_compute.offline import ManifestError, load_objects

    try:
        objects = load_objects([Path(p) for p in args.filename])
    except (ManifestError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    policies = [o for o in objects if o.get("kind") == "RoutePolicy"]
    if len(policies) != 1:
        print(f"error: expected one RoutePolicy, found {len(policies)}", file=sys.stderr)
        return 2
    try:
        policy = RoutePolicySpec.model_validate(policies[0].get("spec") or {})
    except ValueError as error:
        print(f"error: invalid RoutePolicy: {error}", file=sys.stderr)
        return 1
    slots = [slot_from_object({**o, "metadata": {"namespace": args.namespace,
                                                 **o.get("metadata", {})}})
             for o in objects if o.get("kind") == "ModelSlot"]
    files = config_files(policy, [s for s in slots if s.spec])
    print(files[RULES_KEY] if args.rules else files[CONFIG_KEY], end="")
    return 0


def _crds(args: argparse.Namespace) -> int:
    from hybrid_compute.crdgen import write_crds

    root = Path(args.root) if args.root else _repository_root()
    if root is None:
        print("run this from a source checkout, or pass --root", file=sys.stderr)
        return 2
    changed = write_crds(root, check=args.check)
    if args.check and changed:
        print("generated CRDs differ from the committed files (run `make crds`):",
              file=sys.stderr)
        for path in changed:
            print(f"  {path}", file=sys.stderr)
        return 1
    verb = "would change" if args.check else "wrote"
    print(f"{verb} {len(changed)} files" if changed else "CRDs are up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-compute", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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
    run.add_argument("--dev-cluster", help=argparse.SUPPRESS)
    run.set_defaults(handler=_run)

    dev = commands.add_parser("dev", help="a local control plane with a simulated GPU node")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_commands.add_parser("up", help="start (or reuse) the local cluster")
    up.add_argument("--node", action="append", default=[], metavar="NAME=PROFILE",
                    help=f"add a GPU node besides {DEFAULT_NODE_NAME}; profiles: "
                         f"{', '.join(sorted(PROFILES))}")
    up.add_argument("--no-operator", action="store_true", help="do not start the operator")
    up.add_argument("--no-samples", action="store_true", help="do not apply the samples")
    up.set_defaults(handler=_dev_up)
    down = dev_commands.add_parser("down", help="stop the local cluster and delete its data")
    down.set_defaults(handler=_dev_down)
    status = dev_commands.add_parser("status", help="show processes, ports and nodes")
    status.set_defaults(handler=_dev_status)
    kubeconfig = dev_commands.add_parser("kubeconfig", help="print the kubeconfig path")
    kubeconfig.set_defaults(handler=_dev_kubeconfig)
    add_node = dev_commands.add_parser("add-node", help="add a simulated GPU node")
    add_node.add_argument("node_name")
    add_node.add_argument("--profile", choices=sorted(PROFILES), default="dual-rtx3090")
    add_node.set_defaults(handler=_dev_add_node)
    build = dev_commands.add_parser("build", help="build the control plane binaries (cached)")
    build.set_defaults(handler=_dev_build)
    kubectl = dev_commands.add_parser("kubectl", help="run the matching kubectl against it")
    kubectl.add_argument("kubectl_args", nargs=argparse.REMAINDER, metavar="ARGS")
    kubectl.set_defaults(handler=_dev_kubectl)
    for sub in (up, down, status, kubeconfig, add_node, kubectl):
        sub.add_argument("--name", default="dev", help="cluster name (default: dev)")

    plan = commands.add_parser("plan", help="show what the operator would decide for a "
                                            "folder of objects (no cluster needed)")
    plan.add_argument("-f", "--filename", action="append", required=True,
                      help="file or folder of YAML objects (repeatable)")
    plan.add_argument("--node", action="append", default=[], metavar="NAME=PROFILE",
                      help=f"GPU nodes when the folder has no Node objects (default "
                           f"{DEFAULT_NODE_NAME}=rtx3090); profiles: "
                           f"{', '.join(sorted(PROFILES))}")
    plan.add_argument("--demand", action="append", default=[], metavar="ALIAS",
                      help="pretend a request for ALIAS just arrived (repeatable)")
    plan.set_defaults(handler=_plan)

    render = commands.add_parser("render", help="print generated configuration")
    render_commands = render.add_subparsers(dest="render_command", required=True)
    litellm = render_commands.add_parser(
        "litellm", help="LiteLLM's config.yaml for a folder of objects (no cluster needed)")
    litellm.add_argument("-f", "--filename", action="append", required=True,
                         help="file or folder of YAML objects (repeatable)")
    litellm.add_argument("-n", "--namespace", default="default",
                         help="namespace of objects that name none (for Service addresses)")
    litellm.add_argument("--rules", action="store_true",
                         help="print the router's rules instead of config.yaml")
    litellm.set_defaults(handler=_render_litellm)

    crds = commands.add_parser("crds", help="generate crds/ and the chart's copies")
    crds.add_argument("--check", action="store_true",
                      help="only compare; exit 1 when the files differ")
    crds.add_argument("--root", help="repository root (default: this checkout)")
    crds.set_defaults(handler=_crds)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (ToolchainError, ClusterError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
