"""``hybrid-compute cost``: the monthly cost of all-cloud and hybrid strategies, from
assumptions or measured usage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
