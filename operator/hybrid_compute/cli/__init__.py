"""The ``hybrid-compute`` command: the operator, a local cluster, the CRD generator."""

from __future__ import annotations

import argparse
import sys

from hybrid_compute.cli import agent, cost, crds, dev, models, plan, render, reserve, run
from hybrid_compute.dev.cluster import ClusterError
from hybrid_compute.dev.toolchain import ToolchainError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-compute", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    # Each module owns a subcommand (or a group of them): its parser and its handler.
    for command in (run, agent, dev, plan, reserve, render, models, cost, crds):
        command.register(commands)
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
