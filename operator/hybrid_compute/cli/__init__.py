"""The ``hybrid-compute`` command: the operator, a local cluster, the CRD generator."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import socket
import sys
from pathlib import Path

from hybrid_compute.dev import llmtools
from hybrid_compute.dev.cluster import ClusterError, DevCluster
from hybrid_compute.dev.local_serving import endpoint_command as local_serving_endpoint
from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME, PROFILES
from hybrid_compute.dev.toolchain import (
    KUBERNETES_VERSION,
    ToolchainError,
    default_toolchain,
    ensure_toolchain,
)
from hybrid_compute.plan.settings import DEFAULT_ENDPOINT_TEMPLATE, OPERATOR_IMAGE

API_TOKEN_ENV = "HYBRID_COMPUTE_API_TOKEN"


def _repository_root() -> Path | None:
    """The source checkout this package runs from, when it runs from one."""
    candidate = Path(__file__).resolve().parents[3]
    return candidate if (candidate / "manifests").is_dir() else None


def _dev_up(args: argparse.Namespace) -> int:
    from hybrid_compute.dev import local_serving

    cluster = DevCluster(args.name)
    extra = [tuple(spec.split("=", 1)) for spec in args.node]
    for node_name, profile in extra:
        if profile not in PROFILES:
            print(f"unknown node profile {profile!r} for {node_name}; known: "
                  f"{', '.join(sorted(PROFILES))}", file=sys.stderr)
            return 2
    seconds = local_serving.up(cluster, _repository_root(),
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
    from hybrid_compute.dev.helm import ensure_helm

    tools = ensure_toolchain()
    print(f"control plane binaries: {tools.bin_dir}")
    print(f"helm (for the chart's tests): {ensure_helm()}")
    if args.serving:
        serving = llmtools.ensure_serving_tools()
        print(f"litellm: {serving.litellm}")
        print(f"llama-server: {serving.llama_server}")
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
                                fetch_image=args.fetch_image)
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


def _plan(args: argparse.Namespace) -> int:
    from hybrid_compute.cli.offline import ManifestError, plan_folder, report

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
    from hybrid_compute.cli.offline import ManifestError, load_objects
    from hybrid_compute.control.observe import slot_from_object
    from hybrid_compute.render.litellm_config import CONFIG_KEY, RULES_KEY, config_files

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


def _vram(args: argparse.Namespace) -> int:
    from hybrid_compute.plan import vram

    if args.seed_table:
        print(vram.seed_table(vram.seed_rows()))
        return 0
    if args.model is None:
        print("error: name a GGUF file, or pass --seed-table", file=sys.stderr)
        return 2
    settings = vram.ServerSettings(
        ctx_size=args.ctx, parallel=args.parallel, flash_attn=args.flash_attn,
        cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v,
        gpu_layers=args.n_gpu_layers, ubatch_size=args.ubatch_size)
    try:
        shape = vram.read_shape(Path(args.model))
        result = vram.estimate(shape, settings)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(vram.describe(shape, settings, result))
    return 0


def _cost(args: argparse.Namespace) -> int:
    import pydantic
    import yaml

    from hybrid_compute.cost.estimate import CostAssumptions, measured_table, render, seed_table
    from hybrid_compute.cost.usage import MetricsError, measure, prometheus_query

    values: dict[str, object] = {}
    if args.assumptions:
        try:
            loaded = yaml.safe_load(Path(args.assumptions).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            print(f"error: cannot read --assumptions: {error}", file=sys.stderr)
            return 2
        if not isinstance(loaded, dict):
            print("error: --assumptions must hold a mapping of assumption: value",
                  file=sys.stderr)
            return 2
        values.update(loaded)
    values.update({name: getattr(args, name) for name in CostAssumptions.model_fields
                   if getattr(args, name) is not None})
    try:
        assumptions = CostAssumptions.model_validate(values)
    except pydantic.ValidationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.from_metrics:
        try:
            usage = measure(prometheus_query(args.from_metrics, timeout=args.timeout),
                            args.window, local_prefix=args.local_prefix,
                            source=args.from_metrics)
            table = measured_table(assumptions, usage)
        except (MetricsError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    else:
        table = seed_table(assumptions)
    print(render(table, assumptions.amortisation_months))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from hybrid_compute.fetch.download import (
        TOKEN_ENV,
        ExitCode,
        FetchRequest,
        hugging_face_url,
        run_fetch,
    )

    if bool(args.url) == bool(args.hf_repo):
        print("error: give either --url or --hf-repo with --hf-file", file=sys.stderr)
        return int(ExitCode.USAGE)
    if args.hf_repo and not args.hf_file:
        print("error: --hf-repo needs --hf-file", file=sys.stderr)
        return int(ExitCode.USAGE)
    if args.attempts < 1:
        print("error: --attempts must be at least 1", file=sys.stderr)
        return int(ExitCode.USAGE)
    if args.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", args.sha256):
        print("error: --sha256 takes 64 hexadecimal digits", file=sys.stderr)
        return int(ExitCode.USAGE)
    url = args.url or hugging_face_url(args.hf_repo, args.hf_file, args.hf_revision)
    request = FetchRequest(url=url, dest=Path(args.dest), sha256=args.sha256 or None,
                           token=os.environ.get(TOKEN_ENV) or None, attempts=args.attempts)
    return run_fetch(request, progress_file=Path(args.progress_file)
                     if args.progress_file else None)


def _crds(args: argparse.Namespace) -> int:
    from hybrid_compute.api.crdgen import write_crds

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


def _eval(args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from hybrid_compute.api.common import GROUP, VERSION
    from hybrid_compute.control import clock, kube
    from hybrid_compute.control.observe import slot_from_object
    from hybrid_compute.plan import evaluation
    from hybrid_compute.render.children import served_name

    try:
        api = kube.load_client(args.kubeconfig)
        body = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, args.namespace, "modelslots", args.slot)
    except ApiException as error:
        print(f"error: cannot read ModelSlot {args.namespace}/{args.slot}: {error.status} "
              f"{error.reason}", file=sys.stderr)
        return 2
    except Exception as error:  # no kubeconfig, no cluster
        print(f"error: cannot reach the cluster: {error}", file=sys.stderr)
        return 2
    slot = slot_from_object(body)
    if slot.spec is None:
        print(f"error: the spec is invalid: {slot.invalid_reason}", file=sys.stderr)
        return 2
    if slot.spec.evaluation is None:
        print(f"error: {args.namespace}/{args.slot} has no spec.evaluation", file=sys.stderr)
        return 2
    endpoint = args.endpoint or slot.status.endpoint
    if not endpoint:
        print("error: the slot's status names no endpoint yet; pass --endpoint "
              "(e.g. after kubectl port-forward svc/SLOT PORT: "
              "--endpoint http://127.0.0.1:PORT/v1)", file=sys.stderr)
        return 2
    name = served_name(slot.spec)
    model = evaluation.model_fingerprint(slot.spec.model)
    print(f"evaluating {name} (model {model}) of {slot.spec.alias} at {endpoint}")
    result = evaluation.run(slot.spec.evaluation, endpoint, name, model, clock.now)
    print(evaluation.report(result))
    return 0 if result.passed else 1


def _add_cost_assumption_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per cost assumption, documented by the model, so none is fixed."""
    from hybrid_compute.cost.estimate import CostAssumptions

    for name, info in CostAssumptions.model_fields.items():
        kind = str if info.annotation is str else float
        description = (info.description or "").replace("%", "%%")  # argparse formats help
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            metavar="TEXT" if kind is str else "N",
                            help=f"{description} (default {_plain_number(info.default)})"
                            if kind is float else f"{description} (default {info.default})")


def _plain_number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


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
    endpoint.set_defaults(handler=local_serving_endpoint)
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
    build = dev_commands.add_parser("build", help="build the control plane binaries and helm "
                                                 "(cached)")
    build.add_argument("--serving", action="store_true",
                       help="also install the LiteLLM proxy and build llama-server, which "
                            "the serving tests and benchmarks run")
    build.set_defaults(handler=_dev_build)
    kubectl = dev_commands.add_parser("kubectl", help="run the matching kubectl against it")
    kubectl.add_argument("kubectl_args", nargs=argparse.REMAINDER, metavar="ARGS")
    kubectl.set_defaults(handler=_dev_kubectl)
    for sub in (up, down, status, kubeconfig, add_node, kubectl, endpoint):
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

    from hybrid_compute.plan.vram import CACHE_TYPES

    vram_command = commands.add_parser(
        "vram", help="estimate the GPU memory a llama-server needs for a GGUF model")
    vram_command.add_argument("model", nargs="?", metavar="MODEL.gguf",
                              help="the model file (only its header is read)")
    vram_command.add_argument("--ctx", type=int, default=8192,
                              help="--ctx-size: KV cells shared by all sequences (default 8192)")
    vram_command.add_argument("--parallel", type=int, default=1,
                              help="--parallel: sequences decoded at once (default 1)")
    vram_command.add_argument("--flash-attn", action="store_true",
                              help="flash attention on (needed for a quantised KV cache)")
    vram_command.add_argument("--cache-type-k", default="f16", choices=CACHE_TYPES,
                              help="K cache type (default f16)")
    vram_command.add_argument("--cache-type-v", default="f16", choices=CACHE_TYPES,
                              help="V cache type (default f16)")
    vram_command.add_argument("--n-gpu-layers", type=int, default=None,
                              help="layers offloaded to the GPU (default: all)")
    vram_command.add_argument("--ubatch-size", type=int, default=512,
                              help="--ubatch-size: tokens per micro-batch (default 512)")
    vram_command.add_argument("--seed-table", action="store_true",
                              help="the seed's models, estimated beside the seed's VRAM column")
    vram_command.set_defaults(handler=_vram)

    cost = commands.add_parser(
        "cost", help="monthly cost of all-cloud and hybrid strategies (the seed's cost math)")
    cost.add_argument("--assumptions", metavar="FILE",
                      help="YAML or JSON file of assumptions (keys as the flags, with _); "
                           "flags override it")
    _add_cost_assumption_flags(cost)
    cost.add_argument("--from-metrics", metavar="URL",
                      help="compute the table from Prometheus at URL (LiteLLM spend and "
                           "tokens by alias, llama-server token counters)")
    cost.add_argument("--window", default="30d",
                      help="with --from-metrics: the range measured (default 30d; keep it "
                           "within Prometheus' retention)")
    cost.add_argument("--local-prefix", default="local/",
                      help="with --from-metrics: aliases of local slots (default local/)")
    cost.add_argument("--timeout", type=float, default=10.0,
                      help="with --from-metrics: seconds per query (default 10)")
    cost.set_defaults(handler=_cost)

    fetch = commands.add_parser(
        "fetch", help="download a model file onto the node (a slot's init container): "
                      "resumes, verifies SHA-256, skips a file already there")
    fetch.add_argument("--url", help="plain URL of the file")
    fetch.add_argument("--hf-repo", metavar="OWNER/NAME", help="Hugging Face repository")
    fetch.add_argument("--hf-file", metavar="PATH", help="file in the repository")
    fetch.add_argument("--hf-revision", default="main",
                       help="branch, tag or commit (default main); the endpoint comes from "
                            "$HF_ENDPOINT (default https://huggingface.co)")
    fetch.add_argument("--dest", required=True, help="where the file goes")
    fetch.add_argument("--sha256", help="expected SHA-256 (64 hex digits)")
    fetch.add_argument("--attempts", type=int, default=5,
                       help="connections tried, each resuming the partial file (default 5)")
    fetch.add_argument("--progress-file",
                       help="JSON progress file (default: DEST.fetch.json); the token, if "
                            "any, comes from $HF_TOKEN")
    fetch.set_defaults(handler=_fetch)

    eval_command = commands.add_parser(
        "eval", help="run a ModelSlot's spec.evaluation against its endpoint now and print "
                     "each prompt's checks (exit 1 when it fails)")
    eval_command.add_argument("slot", metavar="SLOT", help="the ModelSlot's name")
    eval_command.add_argument("-n", "--namespace", default="default",
                              help="its namespace (default: default)")
    eval_command.add_argument("--endpoint", metavar="URL",
                              help="OpenAI base URL to send the prompts to, e.g. "
                                   "http://127.0.0.1:8080/v1 after kubectl port-forward "
                                   "(default: the slot's status.endpoint)")
    eval_command.add_argument("--kubeconfig",
                              help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    eval_command.set_defaults(handler=_eval)

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
