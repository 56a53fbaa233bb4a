"""The seed's cost math: what a month of agent traffic costs all in the cloud,
all on a cheap cloud model, hybrid, and hybrid with caching and batch discounts;
from stated assumptions (the seed's by default) or from measured usage.

Money is shown as whole-dollar line items, and every total is the sum of the
line items it shows, as on a bill: the seed's $172 is $54 + $43 + $75.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

MILLION = 1_000_000
HOURS_PER_DAY = 24

Share = Annotated[float, Field(ge=0, le=1)]
Price = Annotated[float, Field(ge=0)]


class CostAssumptions(BaseModel):
    """Every number the cost table rests on; the defaults are the seed's."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tokens_per_day: Annotated[float, Field(gt=0)] = 2_000_000
    """Tokens a day, input and output together."""
    days_per_month: Annotated[float, Field(gt=0)] = 30
    """Days in a billing month."""
    simple_share: Share = 0.6
    """Share of tokens in simple tasks (served locally by the fast model)."""
    medium_share: Share = 0.3
    """Share of tokens in medium tasks (served locally by the 32B model)."""
    complex_share: Share = 0.1
    """Share of tokens in complex tasks (sent to the cloud frontier model)."""
    input_share: Share = 0.5
    """Share of tokens that are input (prompt) tokens; the seed's averages are 50/50."""
    frontier_model: str = "Sonnet 4.5"
    """Name of the cloud frontier model, for the table."""
    frontier_input_price: Price = 3.0
    """Frontier model, dollars per million input tokens."""
    frontier_output_price: Price = 15.0
    """Frontier model, dollars per million output tokens."""
    cheap_model: str = "Gemini Flash"
    """Name of the cheap cloud model, for the table."""
    cheap_input_price: Price = 0.30
    """Cheap model, dollars per million input tokens."""
    cheap_output_price: Price = 2.50
    """Cheap model, dollars per million output tokens."""
    electricity_watts: Annotated[float, Field(ge=0)] = 200
    """Average power draw of the GPU box, around the clock."""
    electricity_price: Price = 0.30
    """Dollars per kWh."""
    hardware_price: Annotated[float, Field(ge=0)] = 1810
    """What the GPU box cost, in dollars."""
    amortisation_months: Annotated[float, Field(gt=0)] = 24
    """Months over which the hardware is paid off."""
    cached_input_savings: Share = 0.9
    """Optimised: share of the frontier input bill prompt caching saves (seed: 90%)."""
    batch_share: Share = 0.7
    """Optimised: share of frontier spend sent through the batch API (non-urgent work).
    The seed gives only the result, ~$30; 70% at 50% off gives it."""
    batch_discount: Share = 0.5
    """Optimised: the batch API's discount (seed: 50% off)."""
    swap_share: Share = 0.0
    """Optimised: share of simple tokens served by a fast cloud model (Groq) while the
    GPU swaps models. The seed names the practice but no figure."""
    swap_input_price: Price = 0.05
    """Fast cloud model during swaps, dollars per million input tokens."""
    swap_output_price: Price = 0.08
    """Fast cloud model during swaps, dollars per million output tokens."""

    @model_validator(mode="after")
    def _mix_adds_up(self) -> CostAssumptions:
        total = self.simple_share + self.medium_share + self.complex_share
        if abs(total - 1) > 1e-6:
            raise ValueError(f"simple, medium and complex shares add up to {total:g}, not 1")
        return self

    def blended(self, input_price: float, output_price: float,
                input_share: float | None = None) -> float:
        """Dollars per million tokens at this input/output mix."""
        share = self.input_share if input_share is None else input_share
        return share * input_price + (1 - share) * output_price

    @property
    def frontier_price(self) -> float:
        return self.blended(self.frontier_input_price, self.frontier_output_price)

    @property
    def cheap_price(self) -> float:
        return self.blended(self.cheap_input_price, self.cheap_output_price)

    def optimised_frontier_factor(self, input_share: float | None = None) -> float:
        """What caching and batch leave of a frontier bill at this input share."""
        share = self.input_share if input_share is None else input_share
        plain = self.blended(self.frontier_input_price, self.frontier_output_price, share)
        if plain == 0:
            return 1.0
        cached = (share * self.frontier_input_price * (1 - self.cached_input_savings)
                  + (1 - share) * self.frontier_output_price)
        return cached * (1 - self.batch_share * self.batch_discount) / plain

    @property
    def electricity_kwh_per_month(self) -> float:
        return self.electricity_watts * HOURS_PER_DAY * self.days_per_month / 1000


def dollars(amount: float) -> int:
    """Whole dollars, half up (as people round a bill)."""
    return int(Decimal(repr(amount)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd(whole_dollars: int) -> str:
    return f"${whole_dollars:,}"


def money(amount: float) -> str:
    return f"${amount:,.2f}"


def tokens(count: float) -> str:
    return f"{count / MILLION:g}M"


@dataclass(frozen=True)
class StrategyCost:
    """One strategy's month: whole-dollar line items and how each was worked out."""

    title: str
    summary_name: str
    cloud: int
    electricity: int = 0
    hardware: int = 0
    workings: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.cloud + self.electricity + self.hardware

    @property
    def after_hardware(self) -> int | None:
        """The monthly cost once the hardware is paid off; None without hardware."""
        return self.cloud + self.electricity if self.hardware else None


@dataclass(frozen=True)
class CostTable:
    heading: tuple[str, ...]
    strategies: tuple[StrategyCost, ...]
    """The first is the baseline the savings are measured against."""
    notes: tuple[str, ...] = field(default=())


def _local_running_costs(a: CostAssumptions) -> tuple[int, int, list[str]]:
    electricity = a.electricity_kwh_per_month * a.electricity_price
    hardware = a.hardware_price / a.amortisation_months
    workings = [
        f"Electricity: ~{a.electricity_watts:g}W avg x 24/7 = "
        f"{a.electricity_kwh_per_month:g} kWh/mo x {money(a.electricity_price)} = "
        f"{usd(dollars(electricity))}/month",
        f"Hardware amortization: ${a.hardware_price:,.0f} / {a.amortisation_months:g} months "
        f"= {usd(dollars(hardware))}/month",
    ]
    return dollars(electricity), dollars(hardware), workings


def _price_lines(a: CostAssumptions) -> tuple[str, ...]:
    return (
        f"Prices per MTok in/out: {a.frontier_model} {money(a.frontier_input_price)}/"
        f"{money(a.frontier_output_price)}, {a.cheap_model} {money(a.cheap_input_price)}/"
        f"{money(a.cheap_output_price)}",
        f"Local box: {a.electricity_watts:g} W at {money(a.electricity_price)}/kWh, hardware "
        f"${a.hardware_price:,.0f} over {a.amortisation_months:g} months",
    )


def seed_table(a: CostAssumptions) -> CostTable:
    """The four strategies of the seed's cost section, from assumptions."""
    month = a.days_per_month
    all_frontier = a.tokens_per_day * a.frontier_price * month / MILLION
    all_cheap = a.tokens_per_day * a.cheap_price * month / MILLION
    simple = a.tokens_per_day * a.simple_share
    medium = a.tokens_per_day * a.medium_share
    complex_tokens = a.tokens_per_day * a.complex_share
    complex_cost = complex_tokens * a.frontier_price * month / MILLION
    electricity, hardware, running = _local_running_costs(a)

    optimised_complex = complex_cost * a.optimised_frontier_factor()
    swap_cost = (simple * a.swap_share * month / MILLION
                 * a.blended(a.swap_input_price, a.swap_output_price))
    optimised_cloud = dollars(optimised_complex + swap_cost)
    hybrid = StrategyCost(
        title="Strategy C: Hybrid (recommended)",
        summary_name="Hybrid (basic)",
        cloud=dollars(complex_cost), electricity=electricity, hardware=hardware,
        workings=(
            f"Simple ({a.simple_share:.0%} = {tokens(simple)} tok/day):  Local     "
            f"-> $0 (electricity only)",
            f"Medium ({a.medium_share:.0%} = {tokens(medium)} tok/day):  Local 32B -> $0 "
            f"(electricity only)",
            f"Complex ({a.complex_share:.0%} = {tokens(complex_tokens)} tok/day): Cloud "
            f"frontier -> {tokens(complex_tokens)} x {money(a.frontier_price)} x {month:g} = "
            f"{usd(dollars(complex_cost))}/month",
            *running,
        ),
    )
    optimised = StrategyCost(
        title="Strategy D: Hybrid + aggressive cost optimization",
        summary_name="Hybrid (optimized)",
        cloud=optimised_cloud, electricity=electricity, hardware=hardware,
        workings=(
            f"Prompt caching saves {a.cached_input_savings:.0%} of the input bill; "
            f"{a.batch_share:.0%} of frontier spend goes through the batch API at "
            f"{a.batch_discount:.0%} off"
            + (f"; {a.swap_share:.0%} of simple tokens on a fast cloud model during swaps"
               if a.swap_share else ""),
            f"Cloud cost: ~{usd(optimised_cloud)}/month (with caching + batch)",
            f"Electricity: {usd(electricity)}/month",
            f"Hardware: {usd(hardware)}/month (amortized)",
        ),
    )
    return CostTable(
        heading=(
            f"Assumptions: {tokens(a.tokens_per_day)} tokens/day (input + output, "
            f"{a.input_share:.0%} input), {a.days_per_month:g} days/month; mix "
            f"{a.simple_share:.0%} simple, {a.medium_share:.0%} medium, "
            f"{a.complex_share:.0%} complex",
            *_price_lines(a),
        ),
        strategies=(
            StrategyCost(
                title=f"Strategy A: All cloud frontier ({a.frontier_model})",
                summary_name=f"All {a.frontier_model}", cloud=dollars(all_frontier),
                workings=(f"{tokens(a.tokens_per_day)} tok/day x {money(a.frontier_price)}/MTok "
                          f"avg x {month:g} days = {usd(dollars(all_frontier))}/month",)),
            StrategyCost(
                title=f"Strategy B: All cloud cheap ({a.cheap_model})",
                summary_name=f"All {a.cheap_model}", cloud=dollars(all_cheap),
                workings=(f"{tokens(a.tokens_per_day)} tok/day x {money(a.cheap_price)}/MTok "
                          f"avg x {month:g} days = {usd(dollars(all_cheap))}/month",)),
            hybrid,
            optimised,
        ),
    )


# -- measured usage -------------------------------------------------------------------


@dataclass(frozen=True)
class AliasUsage:
    spend: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0


@dataclass(frozen=True)
class MeasuredUsage:
    """Traffic over a window, as Prometheus counted it."""

    window_days: float
    local_input_tokens: float
    local_output_tokens: float
    cloud: dict[str, AliasUsage]
    """Per LiteLLM alias that is not a local slot."""
    source: str = ""

    @property
    def cloud_input_tokens(self) -> float:
        return sum(usage.input_tokens for usage in self.cloud.values())

    @property
    def cloud_output_tokens(self) -> float:
        return sum(usage.output_tokens for usage in self.cloud.values())

    @property
    def cloud_spend(self) -> float:
        return sum(usage.spend for usage in self.cloud.values())


def measured_table(a: CostAssumptions, usage: MeasuredUsage) -> CostTable:
    """The same four strategies for the traffic that was measured: what it would have
    cost all on the frontier or the cheap model, what the hybrid setup spent (scaled
    to a month), and that spend with caching and batch as assumed."""
    if usage.window_days <= 0:
        raise ValueError("the measurement window must be longer than zero")
    scale = a.days_per_month / usage.window_days
    input_tokens = usage.local_input_tokens + usage.cloud_input_tokens
    output_tokens = usage.local_output_tokens + usage.cloud_output_tokens
    total_tokens = input_tokens + output_tokens
    input_share = input_tokens / total_tokens if total_tokens else a.input_share
    per_day = total_tokens / usage.window_days

    def priced(input_price: float, output_price: float) -> float:
        return (input_tokens * input_price + output_tokens * output_price) / MILLION * scale

    all_frontier = priced(a.frontier_input_price, a.frontier_output_price)
    all_cheap = priced(a.cheap_input_price, a.cheap_output_price)
    cloud_tokens = usage.cloud_input_tokens + usage.cloud_output_tokens
    cloud_input_share = (usage.cloud_input_tokens / cloud_tokens if cloud_tokens
                         else a.input_share)
    factor = a.optimised_frontier_factor(cloud_input_share)
    spend = usage.cloud_spend * scale
    electricity, hardware, running = _local_running_costs(a)
    local_share = 1 - cloud_tokens / total_tokens if total_tokens else 0.0
    per_alias = tuple(
        f"  {alias}: {usd(dollars(alias_usage.spend * scale))}/month "
        f"({tokens((alias_usage.input_tokens + alias_usage.output_tokens) / usage.window_days)}"
        f" tok/day)"
        for alias, alias_usage in sorted(usage.cloud.items()))
    return CostTable(
        heading=(
            f"Measured{' at ' + usage.source if usage.source else ''} over "
            f"{usage.window_days:g} days, scaled to {a.days_per_month:g}-day months: "
            f"{tokens(per_day)} tokens/day ({input_share:.0%} input), "
            f"{local_share:.0%} served locally",
            *_price_lines(a),
        ),
        strategies=(
            StrategyCost(
                title=f"Strategy A: All cloud frontier ({a.frontier_model})",
                summary_name=f"All {a.frontier_model}", cloud=dollars(all_frontier),
                workings=(f"{tokens(per_day)} tok/day at {money(a.frontier_input_price)}/"
                          f"{money(a.frontier_output_price)} per MTok in/out = "
                          f"{usd(dollars(all_frontier))}/month",)),
            StrategyCost(
                title=f"Strategy B: All cloud cheap ({a.cheap_model})",
                summary_name=f"All {a.cheap_model}", cloud=dollars(all_cheap),
                workings=(f"{tokens(per_day)} tok/day at {money(a.cheap_input_price)}/"
                          f"{money(a.cheap_output_price)} per MTok in/out = "
                          f"{usd(dollars(all_cheap))}/month",)),
            StrategyCost(
                title="Strategy C: Hybrid (as measured)",
                summary_name="Hybrid (measured)",
                cloud=dollars(spend), electricity=electricity, hardware=hardware,
                workings=(f"Cloud spend by alias: {usd(dollars(spend))}/month", *per_alias,
                          f"Local: {tokens(usage.local_input_tokens / usage.window_days)} "
                          f"input + {tokens(usage.local_output_tokens / usage.window_days)} "
                          f"output tok/day -> $0 (electricity only)",
                          *running)),
            StrategyCost(
                title="Strategy D: Hybrid + caching and batch (as assumed)",
                summary_name="Hybrid (optimized)",
                cloud=dollars(spend * factor), electricity=electricity, hardware=hardware,
                workings=(f"Measured cloud spend x {factor:.2f} (caching saves "
                          f"{a.cached_input_savings:.0%} of input, {a.batch_share:.0%} "
                          f"batched at {a.batch_discount:.0%} off) = "
                          f"{usd(dollars(spend * factor))}/month",)),
        ),
    )


# -- rendering --------------------------------------------------------------------------


def _span(first: int, after: int | None) -> str:
    return f"{usd(first)}" if after is None else f"{usd(first)}→{usd(after)}"


def _saving(baseline: int, cost: int) -> str:
    if baseline == 0:
        return "n/a"
    return f"{-round((1 - cost / baseline) * 100)}%"


def summary_rows(table: CostTable) -> list[tuple[str, str, str]]:
    """(strategy, monthly cost, against the baseline) as the seed's savings summary."""
    baseline = table.strategies[0].total
    rows = []
    for index, strategy in enumerate(table.strategies):
        after = strategy.after_hardware
        if index == 0:
            versus = "baseline"
        elif after is None:
            versus = _saving(baseline, strategy.total)
        else:
            versus = f"{_saving(baseline, strategy.total)}→{_saving(baseline, after)}"
        rows.append((strategy.summary_name, _span(strategy.total, after), versus))
    return rows


def render(table: CostTable, amortisation_months: float) -> str:
    lines = [*table.heading, ""]
    for strategy in table.strategies:
        lines.append(strategy.title)
        lines.extend(f"  {line}" for line in strategy.workings)
        if strategy.hardware:
            parts = " + ".join(usd(part) for part in
                               (strategy.cloud, strategy.electricity, strategy.hardware))
            lines.append(f"  Total: {parts} = {usd(strategy.total)}/month "
                         f"(first {amortisation_months:g} months)")
            lines.append(f"  Total after hardware paid off: {usd(strategy.cloud)} + "
                         f"{usd(strategy.electricity)} = "
                         f"{usd(strategy.cloud + strategy.electricity)}/month")
        lines.append("")
    lines.append("Savings summary")
    rows = [("Strategy", "Monthly Cost", "vs All-Frontier"), *summary_rows(table)]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip())
    lines.extend(table.notes)
    return "\n".join(lines)
