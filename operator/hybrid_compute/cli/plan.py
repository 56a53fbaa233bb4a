"""``hybrid-compute plan``: what the operator would decide for a folder of objects,
now or at a chosen moment (:mod:`hybrid_compute.cli.offline` reads the folder)."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid_compute.dev.nodes import DEFAULT_NODE_NAME, PROFILES

if TYPE_CHECKING:
    from hybrid_compute.plan.view import ForeignProcess


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
    plan.add_argument("--at", metavar="TIME",
                      help="plan for this moment instead of now: ISO 8601, e.g. "
                           "2026-12-02T03:00+13:00 (UTC when it names no offset)")
    plan.add_argument("--foreign", action="append", default=[], metavar="NAME=SIZE",
                      help="pretend a process outside the cluster holds SIZE of the first "
                           "GPU, e.g. steam=18Gi (repeatable)")
    plan.set_defaults(handler=_plan)


def parse_moment(text: str) -> datetime.datetime:
    """``--at``: an ISO 8601 moment; one without an offset is UTC."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--at takes an ISO 8601 time such as 2026-12-02T03:00+13:00, "
                         f"not {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def parse_foreign(text: str) -> ForeignProcess:
    """``--foreign NAME=SIZE``."""
    from hybrid_compute.api.common import parse_bytes
    from hybrid_compute.plan.view import ForeignProcess

    name, _, size = text.partition("=")
    try:
        used = parse_bytes(size)
    except ValueError:
        used = 0
    if not name or used <= 0:
        raise ValueError(f"--foreign takes NAME=SIZE such as steam=18Gi, not {text!r}")
    return ForeignProcess(used, name=name)


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
        moment = parse_moment(args.at) if args.at else None
        foreign = [parse_foreign(text) for text in args.foreign]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result, view = plan_folder([Path(p) for p in args.filename],
                                   [(n, p) for n, p in nodes], args.demand, now=moment,
                                   foreign=foreign)
    except (ManifestError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not view.slots:
        print("no ModelSlot found", file=sys.stderr)
        return 1
    print(report(result, view))
    invalid = [d for d in result.slots if d.phase == "Failed"] + [
        w for w in result.workloads if w.workload.spec is None]
    return 1 if invalid else 0
