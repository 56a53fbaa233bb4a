"""``hybrid-compute plan -f DIR`` on the samples, without a cluster."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPOSITORY_ROOT

SAMPLES = str(REPOSITORY_ROOT / "manifests" / "samples")


def plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybrid_compute", "plan", *args],
                          capture_output=True, text=True, timeout=60)


def rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines()
            if line.startswith("default/")}


def test_samples_put_fast_on_the_gpu_and_embed_on_cpu() -> None:
    result = plan_cli("-f", SAMPLES)
    assert result.returncode == 0, result.stderr
    assert "GPU dreamteam/0: 23.0 GiB usable, 7.0 GiB planned, 16.0 GiB free - local/fast" \
        in result.stdout
    table = rows(result.stdout)
    assert table["default/fast"][5:8] == ["load", "on", "dreamteam/0"]
    assert table["default/embed"][3:6] == ["-", "run", "on"]
    assert table["default/quality"][5] == "standby"


def test_a_demand_swaps_quality_in_and_fast_out() -> None:
    result = plan_cli("-f", SAMPLES, "--demand", "local/quality")
    table = rows(result.stdout)
    assert table["default/quality"][5:8] == ["load", "on", "dreamteam/0"]
    assert "standby: the GPU is taken by local/quality" in result.stdout


def test_two_gpu_node_holds_both_large_models() -> None:
    result = plan_cli("-f", SAMPLES, "--node", "big=dual-rtx3090", "--demand",
                      "local/quality", "--demand", "local/quality-alt")
    assert "GPU big/0" in result.stdout and "GPU big/1" in result.stdout
    table = rows(result.stdout)
    assert {table["default/quality"][7], table["default/quality-alt"][7]} == {"big/0", "big/1"}


def test_invalid_objects_fail_with_the_field_named() -> None:
    result = plan_cli("-f", str(REPOSITORY_ROOT / "tests/data/invalid/"
                                "modelslot-self-fallback.yaml"))
    assert result.returncode == 1
    assert "failed" in result.stdout and "fallback" in result.stdout


def test_unreadable_input_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unterminated")
    result = plan_cli("-f", str(broken))
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr
