"""``hybrid-compute reserve`` and ``hybrid-compute release``: hold GPU memory, or a
whole GPU, for something that is not a pod (a game, a desktop, a transcode), and
give it back. They create and delete a GpuWorkload of kind Reservation through the
current kubeconfig; the operator does the rest (:mod:`hybrid_compute.plan.reservations`)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

DEFAULT_NAME_PREFIX = "reservation-"
WAIT_POLL_SECONDS = 1.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reserve = commands.add_parser(
        "reserve", help="hold GPU memory or a whole GPU for something that is not a pod "
                        "(creates a GpuWorkload of kind Reservation)")
    size = reserve.add_mutually_exclusive_group(required=True)
    size.add_argument("--vram", metavar="SIZE",
                      help="GPU memory to hold, e.g. 12Gi (as much as the card: all of it)")
    size.add_argument("--whole-gpu", action="store_true", help="hold a whole GPU")
    reserve.add_argument("--for", dest="duration", metavar="DURATION",
                         help="how long it holds once it holds, e.g. 2h (default: until "
                              "released)")
    reserve.add_argument("--node", help="the GPU node (default: any)")
    reserve.add_argument("--name", help=f"its name (default: {DEFAULT_NAME_PREFIX}<random>)")
    reserve.add_argument("--priority-class", choices=("Household", "Workload"),
                         help="Household (default): LLM slots and workloads give way; "
                              "Workload: waits for the slots that serve requests")
    reserve.add_argument("--wait", action="store_true",
                         help="wait until it holds and print what gave way")
    reserve.add_argument("--timeout", type=float, default=300.0,
                         help="seconds --wait waits (default 300)")
    _cluster_arguments(reserve)
    reserve.set_defaults(handler=_reserve)

    release = commands.add_parser("release", help="end a reservation (deletes it)")
    release.add_argument("name", help="the reservation's name")
    _cluster_arguments(release)
    release.set_defaults(handler=_release)


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default="default",
                        help="its namespace (default: default)")
    parser.add_argument("--kubeconfig",
                        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")


def reservation_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """The GpuWorkload the arguments ask for, checked as the API server checks it."""
    from hybrid_compute.api.common import API_VERSION
    from hybrid_compute.api.gpuworkload import GpuWorkloadSpec

    spec: dict[str, Any] = {"kind": "Reservation"}
    if args.whole_gpu:
        spec["wholeGpu"] = True
    else:
        spec["vram"] = args.vram
    for field, value in (("duration", args.duration), ("node", args.node),
                         ("priorityClass", args.priority_class)):
        if value is not None:
            spec[field] = value
    GpuWorkloadSpec.model_validate(spec)
    metadata: dict[str, Any] = ({"name": args.name} if args.name
                                else {"generateName": DEFAULT_NAME_PREFIX})
    metadata["namespace"] = args.namespace
    return {"apiVersion": API_VERSION, "kind": "GpuWorkload", "metadata": metadata,
            "spec": spec}


def _reserve(args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from pydantic import ValidationError

    from hybrid_compute.api.common import GROUP, VERSION
    from hybrid_compute.api.validation import describe_validation_error
    from hybrid_compute.control import kube

    try:
        manifest = reservation_manifest(args)
    except ValidationError as error:
        print(f"error: {describe_validation_error(error)}", file=sys.stderr)
        return 2
    try:
        objects = client.CustomObjectsApi(kube.load_client(args.kubeconfig))
        created = objects.create_namespaced_custom_object(
            GROUP, VERSION, args.namespace, "gpuworkloads", manifest)
    except ApiException as error:
        print(f"error: the API server refused the reservation: {error.status} "
              f"{_api_message(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # no kubeconfig, no cluster
        print(f"error: cannot reach the cluster: {error}", file=sys.stderr)
        return 1
    name = created["metadata"]["name"]
    size = "a whole GPU" if args.whole_gpu else args.vram
    print(f"reservation {args.namespace}/{name}: {size}"
          + (f" for {args.duration}" if args.duration else " until released")
          + f"; end it with: hybrid-compute release {name} -n {args.namespace}")
    if not args.wait:
        return 0
    return _wait_until_held(objects, args.namespace, name, args.timeout)


def _wait_until_held(objects: Any, namespace: str, name: str, timeout: float) -> int:
    from hybrid_compute.api.common import GROUP, VERSION

    deadline = time.monotonic() + timeout
    said = ""
    while time.monotonic() < deadline:
        status = objects.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "gpuworkloads", name).get("status") or {}
        line = (f"{status.get('phase', 'Pending')}: "
                f"{status.get('reason', 'waiting for the operator')}")
        if line != said:
            print(line)
            said = line
        if status.get("phase") == "Running":
            if status.get("evicted"):
                print(f"gave way: {', '.join(status['evicted'])}")
            return 0
        time.sleep(WAIT_POLL_SECONDS)
    print(f"error: not holding after {timeout:.0f}s", file=sys.stderr)
    return 1


def _release(args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from hybrid_compute.api.common import GROUP, VERSION
    from hybrid_compute.control import kube

    try:
        objects = client.CustomObjectsApi(kube.load_client(args.kubeconfig))
        body = objects.get_namespaced_custom_object(GROUP, VERSION, args.namespace,
                                                    "gpuworkloads", args.name)
        if (body.get("spec") or {}).get("kind") != "Reservation":
            print(f"error: {args.namespace}/{args.name} is a GpuWorkload but not a "
                  f"Reservation; delete it with kubectl", file=sys.stderr)
            return 1
        objects.delete_namespaced_custom_object(GROUP, VERSION, args.namespace,
                                                "gpuworkloads", args.name)
    except ApiException as error:
        print(f"error: cannot release {args.namespace}/{args.name}: {error.status} "
              f"{_api_message(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # no kubeconfig, no cluster
        print(f"error: cannot reach the cluster: {error}", file=sys.stderr)
        return 1
    print(f"reservation {args.namespace}/{args.name} released")
    return 0


def _api_message(error: Any) -> str:
    import json

    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)
