"""``hybrid-compute render litellm``: LiteLLM's config.yaml or the router's rules for a
folder of objects."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _render_litellm(args: argparse.Namespace) -> int:
    from hybrid_compute.api.routepolicy import RoutePolicySpec
    from hybrid_compute.cli.offline import ManifestError, load_objects
    from hybrid_compute.plan.objects import slot_from_object
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
