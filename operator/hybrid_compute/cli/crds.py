"""``hybrid-compute crds``: generate (or check) crds/ and the chart's copies from the models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    crds = commands.add_parser("crds", help="generate crds/ and the chart's copies")
    crds.add_argument("--check", action="store_true",
                      help="only compare; exit 1 when the files differ")
    crds.add_argument("--root", help="repository root (default: this checkout)")
    crds.set_defaults(handler=_crds)


def _crds(args: argparse.Namespace) -> int:
    from hybrid_compute.api.crdgen import write_crds
    from hybrid_compute.dev.bootstrap import repository_root

    root = Path(args.root) if args.root else repository_root()
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
