"""The cost command: the seed's cost section from its assumptions, and the same table
from Prometheus data served by a small local HTTP server."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from hybrid_compute import cli
from hybrid_compute.cost.estimate import (
    AliasUsage,
    CostAssumptions,
    MeasuredUsage,
    dollars,
    measured_table,
    seed_table,
    summary_rows,
)
from hybrid_compute.cost.usage import measure, prometheus_query, window_days
from tests.http_stub import StubHandler, StubServer

SEED_SUMMARY = [
    ("All Sonnet 4.5", "$540", "baseline"),
    ("All Gemini Flash", "$84", "-84%"),
    ("Hybrid (basic)", "$172→$97", "-68%→-82%"),
    ("Hybrid (optimized)", "$148→$73", "-73%→-86%"),
]


def run_cost(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["cost", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_defaults_reproduce_the_seed_savings_summary() -> None:
    assert summary_rows(seed_table(CostAssumptions())) == SEED_SUMMARY


def test_the_seed_line_items_add_up_as_the_seed_shows_them() -> None:
    a, b, hybrid, optimised = seed_table(CostAssumptions()).strategies
    assert (a.total, b.total) == (540, 84)
    assert (hybrid.cloud, hybrid.electricity, hybrid.hardware) == (54, 43, 75)
    assert (hybrid.total, hybrid.after_hardware) == (172, 97)
    assert (optimised.cloud, optimised.total, optimised.after_hardware) == (30, 148, 73)


def test_cost_with_no_flags_prints_the_seed_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cost(capsys)
    assert code == 0
    for expected in ("2M tok/day x $9.00/MTok avg x 30 days = $540/month",
                     "2M tok/day x $1.40/MTok avg x 30 days = $84/month",
                     "0.2M x $9.00 x 30 = $54/month",
                     "144 kWh/mo x $0.30 = $43/month",
                     "$1,810 / 24 months = $75/month",
                     "Total: $54 + $43 + $75 = $172/month",
                     "Total after hardware paid off: $54 + $43 = $97/month",
                     "Cloud cost: ~$30/month",
                     "Total: $30 + $43 + $75 = $148/month",
                     "$30 + $43 = $73/month"):
        assert expected in out, f"missing {expected!r} in:\n{out}"
    summary = out[out.index("Savings summary"):].splitlines()[2:]
    assert [line.split() for line in summary] == [
        ["All", "Sonnet", "4.5", "$540", "baseline"],
        ["All", "Gemini", "Flash", "$84", "-84%"],
        ["Hybrid", "(basic)", "$172→$97", "-68%→-82%"],
        ["Hybrid", "(optimized)", "$148→$73", "-73%→-86%"],
    ]


def test_more_tokens_scale_the_cloud_lines_but_not_the_box(
        capsys: pytest.CaptureFixture[str]) -> None:
    base = seed_table(CostAssumptions()).strategies
    doubled = seed_table(CostAssumptions(tokens_per_day=4_000_000)).strategies
    assert [s.cloud for s in doubled[:3]] == [2 * s.cloud for s in base[:3]]
    assert (doubled[2].electricity, doubled[2].hardware) == (base[2].electricity,
                                                              base[2].hardware)
    code, out, _ = run_cost(capsys, "--tokens-per-day", "4000000")
    assert code == 0 and "= $1,080/month" in out


def test_every_assumption_is_a_flag() -> None:
    defaults = vars(cli.build_parser().parse_args(["cost"]))
    missing = set(CostAssumptions.model_fields) - set(defaults)
    assert not missing, f"assumptions without a flag: {missing}"
    flags = ["cost"]
    for name in CostAssumptions.model_fields:
        flags += [f"--{name.replace('_', '-')}", "7"]
    parsed = vars(cli.build_parser().parse_args(flags))
    assert all(str(parsed[name]) in ("7", "7.0") for name in CostAssumptions.model_fields)


def test_an_assumptions_file_is_read_and_flags_override_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "assumptions.yaml"
    path.write_text("electricity_price: 0.15\nhardware_price: 2400\n")
    code, out, _ = run_cost(capsys, "--assumptions", str(path), "--amortisation-months", "12")
    assert code == 0
    assert "144 kWh/mo x $0.15 = $22/month" in out
    assert "$2,400 / 12 months = $200/month" in out
    assert "Total: $54 + $22 + $200 = $276/month (first 12 months)" in out


def test_a_json_assumptions_file_works_too(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "assumptions.json"
    path.write_text(json.dumps({"frontier_input_price": 5, "frontier_output_price": 25,
                                "frontier_model": "Opus 4.6"}))
    code, out, _ = run_cost(capsys, "--assumptions", str(path))
    assert code == 0
    assert "Strategy A: All cloud frontier (Opus 4.6)" in out
    assert "x $15.00/MTok avg x 30 days = $900/month" in out


def test_a_mix_that_does_not_add_up_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cost(capsys, "--simple-share", "0.7")
    assert code == 2
    assert "add up to 1.1, not 1" in err


def test_an_unknown_key_in_the_file_is_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("tokens_a_day: 5\n")
    code, _, err = run_cost(capsys, "--assumptions", str(path))
    assert code == 2 and "tokens_a_day" in err


def test_the_batch_and_caching_factor_follows_its_assumptions() -> None:
    a = CostAssumptions(cached_input_savings=0, batch_share=0)
    assert a.optimised_frontier_factor() == pytest.approx(1.0)
    everything_batched = CostAssumptions(cached_input_savings=0, batch_share=1)
    assert everything_batched.optimised_frontier_factor() == pytest.approx(0.5)
    seed = CostAssumptions()
    # Input is 3 of the $9 blend; caching leaves a tenth of it, batch 65% of the rest.
    assert seed.optimised_frontier_factor() == pytest.approx((0.3 * 0.5 + 7.5) / 9 * 0.65)


# -- from Prometheus ----------------------------------------------------------------------

WINDOW = "10d"
SERIES = {
    "litellm_spend_metric_total": {"cloud/frontier": 18.0, "cloud/mid": 1.5, "local/fast": 0.0},
    "litellm_input_tokens_metric_total": {"cloud/frontier": 1_000_000, "cloud/mid": 400_000,
                                          "local/fast": 9_000_000},
    "litellm_output_tokens_metric_total": {"cloud/frontier": 500_000, "cloud/mid": 100_000,
                                           "local/fast": 2_000_000},
    "llamacpp:prompt_tokens_total": 30_000_000.0,
    "llamacpp:tokens_predicted_total": 5_000_000.0,
}


class PrometheusStandIn(StubHandler):
    """Answers /api/v1/query the way Prometheus does, from SERIES."""

    queries: ClassVar[list[str]] = []
    fail_with: ClassVar[str | None] = None

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.read_body().decode())
        self._answer(self.path, form.get("query", [""])[0])

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        self._answer(url.path, urllib.parse.parse_qs(url.query).get("query", [""])[0])

    def _answer(self, path: str, query: str) -> None:
        type(self).queries.append(query)
        if path != "/api/v1/query":
            self.send_json(404, {"status": "error", "error": "not found"})
            return
        if self.fail_with:
            self.send_json(400, {"status": "error", "errorType": "bad_data",
                                 "error": self.fail_with})
            return
        result = []
        for metric, values in SERIES.items():
            if f"increase({metric}[{WINDOW}])" not in query:
                continue
            if isinstance(values, dict):
                assert query.startswith("sum by (requested_model)"), query
                result = [{"metric": {"requested_model": alias}, "value": [1.0, str(value)]}
                          for alias, value in values.items()]
            else:
                result = [{"metric": {}, "value": [1.0, str(values)]}]
        self.send_json(200, {"status": "success",
                             "data": {"resultType": "vector", "result": result}})


@pytest.fixture
def prometheus() -> Iterator[str]:
    PrometheusStandIn.queries = []
    PrometheusStandIn.fail_with = None
    with StubServer(PrometheusStandIn) as server:
        yield server.url


def test_usage_is_read_per_cloud_alias_and_from_llama_server(prometheus: str) -> None:
    usage = measure(prometheus_query(prometheus), WINDOW)
    assert usage.window_days == 10
    assert usage.cloud == {
        "cloud/frontier": AliasUsage(spend=18.0, input_tokens=1_000_000, output_tokens=500_000),
        "cloud/mid": AliasUsage(spend=1.5, input_tokens=400_000, output_tokens=100_000),
    }, "local aliases are counted from llama-server, not LiteLLM"
    assert (usage.local_input_tokens, usage.local_output_tokens) == (30_000_000, 5_000_000)
    assert any("litellm_spend_metric_total" in q for q in PrometheusStandIn.queries)


def test_the_measured_table_prices_the_measured_tokens(prometheus: str) -> None:
    a = CostAssumptions()
    table = measured_table(a, measure(prometheus_query(prometheus), WINDOW))
    scale = 30 / 10
    input_tokens = 30_000_000 + 1_000_000 + 400_000
    output_tokens = 5_000_000 + 500_000 + 100_000
    frontier, cheap, hybrid, optimised = table.strategies
    assert frontier.cloud == dollars((input_tokens * 3 + output_tokens * 15) / 1e6 * scale)
    assert cheap.cloud == dollars((input_tokens * 0.3 + output_tokens * 2.5) / 1e6 * scale)
    assert hybrid.cloud == dollars((18.0 + 1.5) * scale)
    assert (hybrid.electricity, hybrid.hardware) == (43, 75)
    cloud_input_share = 1_400_000 / 2_000_000
    assert optimised.cloud == dollars(
        (18.0 + 1.5) * scale * a.optimised_frontier_factor(cloud_input_share))
    assert optimised.cloud < hybrid.cloud


def test_cost_from_metrics_prints_the_measured_table(
        prometheus: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cost(capsys, "--from-metrics", prometheus, "--window", WINDOW)
    assert code == 0, err
    assert f"Measured at {prometheus} over 10 days" in out
    assert "cloud/frontier: $54/month" in out
    cloud = dollars((18.0 + 1.5) * 30 / 10)
    hybrid_row = next(line for line in out.splitlines() if line.startswith("Hybrid (measured)"))
    assert f"${cloud + 43 + 75}→${cloud + 43}" in hybrid_row


def test_a_prometheus_error_is_reported(prometheus: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    PrometheusStandIn.fail_with = "parse error at char 5"
    code, _, err = run_cost(capsys, "--from-metrics", prometheus)
    assert code == 1
    assert "parse error at char 5" in err


def test_an_unreachable_prometheus_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cost(capsys, "--from-metrics", "http://127.0.0.1:9", "--timeout", "2")
    assert code == 1 and "error:" in err


def test_window_days() -> None:
    assert window_days("30d") == 30
    assert window_days("12h") == 0.5
    assert window_days("2w") == 14
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        window_days("30 days")


def test_no_traffic_gives_zero_cloud_costs() -> None:
    usage = MeasuredUsage(window_days=7, local_input_tokens=0, local_output_tokens=0, cloud={})
    frontier, _, hybrid, _ = measured_table(CostAssumptions(), usage).strategies
    assert (frontier.total, hybrid.cloud) == (0, 0)
