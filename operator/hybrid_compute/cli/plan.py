"""``hybrid-compute plan``: what the operator would decide for a folder of objects
(:mod:`hybrid_compute.cli.offline` reads the folder)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME, PROFILES


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
